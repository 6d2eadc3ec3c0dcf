"""What a publication wrote: the manifest that decides which files the tool may replace or delete.

A destination (a local folder or a Hub repo) holds ``.bids_hub_manifest.json`` beside
``README.md``, listing every file the last publication wrote there (paths relative to
the destination root). A later publication replaces or deletes only the files that the
manifest lists; any other file under ``data/`` (and, in a local folder, a README.md that
the tool did not write) makes the destination refused before anything is built.

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
#: At most this many paths are named in an error; the rest are counted.
SHOWN = 10


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
            or not all(isinstance(f, str) and (f == README or DATA_FILE.match(f)) for f in files)
        ):
            raise ManifestError(
                f"{where} was not written by bids_hub_dagster (no tool mark, a malformed file list, or "
                "files the tool never writes: it writes only README.md and data/train-*.parquet); "
                "move it away, or publish to a new destination."
            )
        readmes = raw.get("readme_blobs")
        if not isinstance(readmes, list) or not all(isinstance(b, str) for b in readmes):
            readmes = []
        return cls(frozenset(files), frozenset(readmes))


def adopted(paths: Iterable[str]) -> Manifest:
    """The files a pre-manifest publication wrote: its README.md and its data files by their names."""
    return Manifest.of(p for p in paths if p == README or DATA_FILE.match(p))


def describe(paths: Iterable[str]) -> str:
    """``a, b, c … and N more``, each path shown with control characters escaped."""
    paths = sorted(paths)
    shown = ", ".join(_printable(p) for p in paths[:SHOWN])
    return shown + (f" … and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _printable(path: str) -> str:
    return path if path.isprintable() else repr(path)
