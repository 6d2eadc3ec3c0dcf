"""What a publication wrote: the manifest that decides which files the tool may replace or delete.

A destination (a local folder or a Hub repo) holds ``.bids_hub_manifest.json`` beside
``README.md``, listing every file the last publication wrote there (paths relative to
the destination root): ``README.md``, ``data/train-XXXXX-of-NNNNN.parquet`` and, with a
preview config, ``preview/train-XXXXX-of-NNNNN.parquet`` and ``preview.png``. A later
publication replaces or deletes only the files that the manifest lists; any other file
under ``data/`` or ``preview/``, a ``preview.png`` or a README.md that the tool did not
write makes the destination refused before anything is built.

The name starts with a dot: ``datasets`` skips hidden files when it resolves data files,
so the manifest is never loaded as data. A destination published before manifests
existed is adopted when its README.md carries the tool's mark: its ``README.md`` and its
``data/train-XXXXX-of-NNNNN.parquet`` files count as the tool's own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UserError

MANIFEST_NAME = ".bids_hub_manifest.json"
TOOL = "bids_hub_dagster"
FORMAT = 1
README = "README.md"
DATA_FILE = re.compile(r"^data/train-(\d{5})-of-(\d{5})\.parquet$")
#: the files of the ``preview`` config, one per data file (same count and order)
PREVIEW_FILE = re.compile(r"^preview/train-(\d{5})-of-(\d{5})\.parquet$")
#: a small picture beside the card, which its body shows
PREVIEW_PNG = "preview.png"
#: the folders whose every file must be the tool's: ``datasets`` loads what they hold
TOOL_FOLDERS = ("data", "preview")
#: At most this many paths are named in an error; the rest are counted.
SHOWN = 10


def is_tool_name(path: str) -> bool:
    """Whether the tool ever writes a file of this name (what a manifest may list)."""
    return path in (README, PREVIEW_PNG) or bool(DATA_FILE.match(path) or PREVIEW_FILE.match(path))


def is_guarded(path: str) -> bool:
    """Whether a file at ``path`` (relative to the destination) must be the tool's before publishing:
    README.md and preview.png would be replaced, files under data/ and preview/ loaded as data."""
    return path in (README, PREVIEW_PNG) or ("/" in path and path.split("/", 1)[0] in TOOL_FOLDERS)


class ManifestError(UserError):
    """A manifest that cannot be read; the message names it and says what to do."""


def git_blob_id(data: bytes) -> str:
    """The git object id of ``data`` (what the Hub lists for a regular, non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The files (relative paths) one publication wrote to its destination.

    ``readmes`` are the git blob ids of the cards it wrote (two while a publication is swapped
    in, the old card's and the new one's; empty in manifests written before they were
    recorded): a README.md edited since is the user's, not the tool's, and is never replaced.
    """

    files: frozenset[str]
    readmes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, files: Iterable[str], readmes: Iterable[str] = ()) -> Manifest:
        return cls(frozenset(files), frozenset(readmes))

    def to_bytes(self) -> bytes:
        record: dict = {"tool": TOOL, "format": FORMAT, "files": sorted(self.files)}
        if self.readmes:
            record["readme_blobs"] = sorted(self.readmes)
        return (json.dumps(record, indent=1) + "\n").encode("utf-8")

    def union(self, other: Manifest) -> Manifest:
        """What both wrote: the manifest while one publication replaces the other."""
        return Manifest(self.files | other.files, self.readmes | other.readmes)

    def without_readme(self) -> Manifest:
        """The same, but README.md is no longer the tool's (it was edited since)."""
        return Manifest(self.files - {README})

    def owns_readme_blob(self, blob: str) -> bool:
        """Whether a README.md whose git blob id is ``blob`` is a card this publication wrote."""
        return README in self.files and (not self.readmes or blob in self.readmes)

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """Read a manifest's bytes; ``where`` names it in errors.

        Raises:
            ManifestError: when the file is not a manifest this tool wrote.
        """
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(
                f"{where} is not a readable manifest ({exc}); it records which files bids_hub_dagster wrote. "
                "Restore it, or publish to a new destination."
            ) from None
        files = raw.get("files") if isinstance(raw, dict) else None
        if (
            not isinstance(raw, dict)
            or raw.get("tool") != TOOL
            or not isinstance(files, list)
            or not all(isinstance(f, str) and is_tool_name(f) for f in files)
        ):
            raise ManifestError(
                f"{where} was not written by bids_hub_dagster (no tool mark, a malformed file list, or "
                "files the tool never writes: it writes only README.md, data/train-*.parquet, "
                "preview/train-*.parquet and preview.png); "
                "move it away, or publish to a new destination."
            )
        readmes = raw.get("readme_blobs")
        if not isinstance(readmes, list) or not all(isinstance(b, str) for b in readmes):
            readmes = []
        return cls(frozenset(files), frozenset(readmes))


def adopted(paths: Iterable[str], card: str = "") -> Manifest:
    """The files a publication without a manifest wrote: its README.md and its data files by their names.

    Versions before manifests never wrote a preview. A card that lists the ``preview``
    config (a publication whose manifest was lost) also makes the preview files its
    own, and preview.png when the card shows it.
    """
    header = card.partition("\n---\n")[0]
    preview = "path: preview/train-*" in header
    picture = preview and f"]({PREVIEW_PNG})" in card

    def ours(path: str) -> bool:
        if path == README or DATA_FILE.match(path):
            return True
        return bool(preview and PREVIEW_FILE.match(path)) or (picture and path == PREVIEW_PNG)

    return Manifest.of(p for p in paths if ours(p))


def describe(paths: Iterable[str]) -> str:
    """``a, b, c … and N more``, each path shown with control characters escaped."""
    paths = sorted(paths)
    shown = ", ".join(_printable(p) for p in paths[:SHOWN])
    return shown + (f" … and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _printable(path: str) -> str:
    return path if path.isprintable() else repr(path)
