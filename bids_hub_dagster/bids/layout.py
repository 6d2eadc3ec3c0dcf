"""Walk a BIDS folder: find its NIfTI files and JSON sidecars, honouring ``.bidsignore``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from .entities import NIFTI_EXTENSIONS, BidsName, load_schema, parse_filename
from .errors import BidsError, shown

log = logging.getLogger(__name__)

#: Top-level folders that are not part of the raw tree (BIDS spec, "Common principles").
NON_RAW_TOP_LEVEL = frozenset({"sourcedata", "code", "derivatives", "stimuli", "phenotype"})


@dataclass(frozen=True)
class BidsFile:
    """One file of a BIDS tree, with what its name and folders say about it."""

    root: Path  # the BIDS dataset root
    relpath: str  # posix path relative to root, e.g. "sub-01/anat/sub-01_T1w.nii.gz"
    scope: str  # "" for the raw tree, else e.g. "derivatives/lesion_masks"
    name: BidsName
    datatype: str | None
    size: int  # bytes (0 for a broken symlink)
    mtime_ns: int
    broken_link: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.relpath

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def subject(self) -> str | None:
        return self.name.entities.get("sub")

    @property
    def session(self) -> str | None:
        return self.name.entities.get("ses")

    @property
    def suffix(self) -> str | None:
        return self.name.suffix

    @property
    def is_nifti(self) -> bool:
        return self.name.extension.lower() in NIFTI_EXTENSIONS


def read_dataset_description(root: Path) -> dict[str, Any]:
    """Read ``dataset_description.json``; its absence means ``root`` is not a BIDS folder."""
    path = root / "dataset_description.json"
    if not root.is_dir():
        raise BidsError(f"{shown(root)} is not a folder.")
    if not path.is_file():
        raise BidsError(
            f"{shown(root)} is not a BIDS dataset: it has no dataset_description.json at its top level. "
            "Point bids_root at the folder that holds dataset_description.json and the sub-* folders."
        )
    return read_json_object(path, "the dataset's name, BIDSVersion and license")


def read_json_object(path: Path, holds: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object; any problem is a BidsError naming ``path``.

    ``holds`` says what the file is for, in the advice of the message.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise BidsError(
            f"{shown(path)} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            f"Fix the file: it must be a JSON object holding {holds}."
        ) from None
    except UnicodeDecodeError as exc:
        raise BidsError(
            f"{shown(path)} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 JSON."
        ) from None
    except OSError as exc:
        raise BidsError(f"{shown(path)} cannot be read: {exc.strerror or exc}.") from None
    if not isinstance(data, dict):
        raise BidsError(
            f"{shown(path)} must hold a JSON object, not {type(data).__name__}: write it as {{...}} with {holds}."
        )
    return data


def load_bidsignore(root: Path) -> pathspec.PathSpec | None:
    """The ``.bidsignore`` patterns of a dataset (gitignore semantics), or None."""
    path = root / ".bidsignore"
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BidsError(f"{shown(path)} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise BidsError(f"{shown(path)} cannot be read: {exc.strerror or exc}.") from None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _datatype_of(parts: list[str]) -> str | None:
    """The datatype folder a file sits in: the folder after ``sub-*`` (and ``ses-*``)."""
    datatypes = load_schema().datatypes
    if len(parts) >= 2 and parts[-2] in datatypes:
        return parts[-2]
    return None


def _inode(entry: os.DirEntry[str] | Path) -> tuple[int, int]:
    st = entry.stat()
    return st.st_dev, st.st_ino


def walk(root: Path, scopes: Iterable[str] = ("",)) -> Iterator[tuple[str, str, os.DirEntry[str]]]:
    """Yield ``(scope, relpath, entry)`` for every file below ``sub-*`` in each scope.

    Scope ``""`` is the raw tree; any other scope is a folder (e.g. a derivatives
    pipeline) laid out like one. Hidden entries are skipped, and so is whatever the
    scope's own ``.bidsignore`` names (patterns relative to the scope's folder).
    ``relpath`` is relative to ``root``.
    """
    for scope in scopes:
        base = root / scope if scope else root
        if not base.is_dir():
            raise BidsError(f"scope {scope!r} does not exist under {shown(root)} (looked for {shown(base)}).")
        ignore = load_bidsignore(base)
        prefix = f"{scope}/" if scope else ""
        stack: list[tuple[str, str]] = [(str(base), "")]
        seen = {_inode(base)}  # folders already walked: a symlink loop is walked once
        top = True
        while stack:
            folder, rel = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                raise BidsError(f"cannot list {shown(folder)}: {exc}") from None
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                local = rel + name
                try:
                    is_dir = entry.is_dir()
                except OSError as exc:  # a symlink loop: name the file, never a traceback
                    raise BidsError(
                        f"{shown(prefix + local)} cannot be read: {exc.strerror or exc}; fix or remove it"
                    ) from None
                if top and not (is_dir and name.startswith("sub-")):
                    # At the top of a scope only sub-* folders hold per-subject data;
                    # top-level files are read separately (sidecars, participants).
                    continue
                if ignore is not None and ignore.match_file(local + ("/" if is_dir else "")):
                    continue
                if is_dir:
                    inode = _inode(entry)
                    if inode not in seen:
                        seen.add(inode)
                        stack.append((entry.path, local + "/"))
                else:
                    yield scope, prefix + local, entry
            top = False


def scan(root: Path, scopes: Iterable[str] = ("",)) -> tuple[list[BidsFile], list[str]]:
    """Find the NIfTI files and the JSON sidecar paths of the given scopes.

    Returns the NIfTI files (broken symlinks included and flagged, so that later steps
    can name them) and the relative paths of every ``.json`` file found, top-level
    sidecars of each scope included (for the inheritance principle).
    """
    scopes = list(scopes)
    files: list[BidsFile] = []
    jsons: list[str] = []
    for scope in scopes:
        base = root / scope if scope else root
        prefix = f"{scope}/" if scope else ""
        if base.is_dir():
            jsons.extend(
                prefix + p.name
                for p in sorted(base.iterdir())
                if p.suffix == ".json" and p.name != "dataset_description.json" and p.is_file()
            )
    for scope, relpath, entry in walk(root, scopes):
        lower = entry.name.lower()
        if lower.endswith(".json"):
            jsons.append(relpath)
            continue
        if not lower.endswith(NIFTI_EXTENSIONS):
            continue
        broken = False
        try:
            st = entry.stat()  # follows symlinks
            size, mtime = st.st_size, st.st_mtime_ns
        except FileNotFoundError:
            broken = True
            size, mtime = 0, entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError as exc:  # a symlink loop, no permission: name the file, never a traceback
            raise BidsError(
                f"{shown(relpath)} cannot be read: {exc.strerror or exc}; fix or remove it"
            ) from None
        parts = relpath.split("/")
        name = parse_filename(entry.name)
        # walk() yields only files below a sub-* folder at the top of the scope.
        depth = len(scope.split("/")) if scope else 0
        folders = {"sub": parts[depth][4:]}
        if len(parts) > depth + 2 and parts[depth + 1].startswith("ses-"):
            folders["ses"] = parts[depth + 1][4:]
        for key, label in folders.items():
            if name.entities.get(key, label) != label:
                # The row comes from the name: a mismatch would file the data under another subject.
                raise BidsError(
                    f"{shown(relpath)}: its name says {shown(f'{key}-{name.entities[key]}')} but it sits in the "
                    f"{shown(f'{key}-{label}')} folder; rename or move the file."
                )
        missing = {k: v for k, v in folders.items() if k not in name.entities}
        if missing:
            # A file under sub-XX[/ses-YY] whose name lacks sub-/ses-: its folders say which row it is.
            name = BidsName({**missing, **name.entities}, name.suffix, name.extension, name.unknown)
        files.append(
            BidsFile(
                root=root,
                relpath=relpath,
                scope=scope,
                name=name,
                datatype=_datatype_of(parts),
                size=size,
                mtime_ns=mtime,
                broken_link=broken,
            )
        )
    return files, jsons
