"""Walk a BIDS folder: find its NIfTI files and JSON sidecars, honouring ``.bidsignore``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec

from .entities import NIFTI_EXTENSIONS, BidsName, load_schema, parse_filename, split_extension
from .errors import BidsError, shown
from .validation import NameValidator, Verdict, folder_label_problem, list_paths

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


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def _external_target(path: str, real_root: str) -> str | None:
    """Where a symlink at ``path`` leads when that is an existing place outside ``real_root``, else None.

    A broken link (annexed content not fetched) reads nothing: it is flagged as broken, not refused.
    """
    target = os.path.realpath(path)
    if _inside(target, real_root) or not os.path.exists(target):
        return None
    return target


def _refuse_external(external: list[str], root: Path) -> None:
    if external:
        raise BidsError(
            f"{len(external)} symlink(s) lead outside the BIDS folder {shown(root)}: {list_paths(external)}. "
            "Indexing them would read data that is not part of this dataset. Copy the data into the dataset "
            "(or remove the links, or list them in .bidsignore), or set `follow_external_symlinks: true` in "
            "the spec if reading them is intended."
        )


#: What a folder of a scope is, by its depth: the scope, sub-*, ses-*, or a datatype folder.
_SCOPE, _SUBJECT, _SESSION, _DATATYPE = range(4)


def walk(
    root: Path, scopes: Iterable[str] = ("",), *, follow_external_symlinks: bool = False
) -> Iterator[tuple[str, str, os.DirEntry[str]]]:
    """Yield ``(scope, relpath, entry)`` for every file below ``sub-*`` in each scope.

    Scope ``""`` is the raw tree; any other scope is a folder (e.g. a derivatives
    pipeline) laid out like one. Hidden entries are skipped, and so is whatever the
    scope's own ``.bidsignore`` names (patterns relative to the scope's folder).
    ``relpath`` is relative to ``root``.

    Only BIDS folders are entered: ``sub-*``, then ``ses-*`` and datatype folders. Any other
    folder below ``sub-*`` (a folder named ``sub-02_T1w.nii``, ``anat/extra/``, a ``.ome.zarr/``
    pseudo-file) is yielded as an entry, never entered: the caller tells a BIDS pseudo-file from
    a stray folder. A ``sub-*``/``ses-*`` folder whose label is not a BIDS label
    (``sub-03 copy``) is a :class:`BidsError`, and so, after the walk, is any symlink (file or
    folder) leading outside the BIDS folder, unless ``follow_external_symlinks``.
    """
    external: list[str] = []
    yield from _walk(Path(root), scopes, follow_external_symlinks, external)
    _refuse_external(external, Path(root))


def _walk(
    root: Path, scopes: Iterable[str], follow_external: bool, external: list[str]
) -> Iterator[tuple[str, str, os.DirEntry[str]]]:
    real_root = os.path.realpath(root)
    datatypes = load_schema().datatypes
    for scope in scopes:
        base = root / scope if scope else root
        if not base.is_dir():
            raise BidsError(f"scope {scope!r} does not exist under {shown(root)} (looked for {shown(base)}).")
        prefix = f"{scope}/" if scope else ""
        if scope and not follow_external and not _inside(os.path.realpath(base), real_root):
            external.append(f"{scope}/ -> {os.path.realpath(base)}")
            continue
        ignore = load_bidsignore(base)
        stack: list[tuple[str, str, int]] = [(str(base), "", _SCOPE)]
        seen = {_inode(base)}  # folders already walked: a symlink loop is walked once
        while stack:
            folder, rel, kind = stack.pop()
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
                if kind == _SCOPE and not (is_dir and name.startswith("sub-")):
                    # At the top of a scope only sub-* folders hold per-subject data;
                    # top-level files are read separately (sidecars, participants).
                    continue
                if ignore is not None and ignore.match_file(local + ("/" if is_dir else "")):
                    continue
                if not follow_external and entry.is_symlink():
                    target = _external_target(entry.path, real_root)
                    if target is not None:
                        external.append(f"{prefix}{local}{'/' if is_dir else ''} -> {target}")
                        continue
                if not is_dir:
                    yield scope, prefix + local, entry
                    continue
                if kind == _SCOPE:
                    child = _SUBJECT
                elif kind == _SUBJECT and name.startswith("ses-"):
                    child = _SESSION
                elif kind in (_SUBJECT, _SESSION) and name in datatypes:
                    child = _DATATYPE
                else:
                    yield scope, prefix + local, entry  # not entered: the caller names it
                    continue
                problem = folder_label_problem(name)
                if problem:
                    raise BidsError(
                        f"folder {shown(prefix + local)}: {problem}. Rename the folder "
                        "(or list it in .bidsignore to leave it out)."
                    )
                inode = _inode(entry)
                if inode not in seen:
                    seen.add(inode)
                    stack.append((entry.path, local + "/", child))


#: Extensions of the tables and gradients collected in :attr:`ScanResult.other`.
OTHER_EXTENSIONS = (".tsv", ".bval", ".bvec")


@dataclass
class ScanResult:
    """What :func:`scan` found.

    ``files``: the NIfTI files (broken symlinks included and flagged). ``jsons``: the relpaths
    of every valid ``.json`` sidecar, top-level ones of each scope included. ``skipped``:
    ``(relpath, reason)`` of each file or folder left out because its name is not BIDS (a
    folder's relpath ends with ``/``). ``other``: relpaths of the valid ``.tsv``, ``.bval`` and
    ``.bvec`` files below ``sub-*`` and at each scope's top level (``participants.tsv`` too).

    Unpacks as ``files, jsons = scan(...)``, as the tuple it replaces did.
    """

    files: list[BidsFile]
    jsons: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.files, self.jsons))

    def warnings(self) -> list[str]:
        """One warning listing the skipped files with their reasons (none if nothing was skipped)."""
        if not self.skipped:
            return []
        return [
            f"{len(self.skipped)} file(s) skipped, their names are not BIDS (list them in .bidsignore to "
            "silence this): " + list_paths([f"{path} ({reason})" for path, reason in self.skipped])
        ]


def _dataset_type(folder: Path) -> str:
    """``DatasetType`` of ``folder``'s dataset_description.json (``raw`` when absent or unreadable)."""
    try:
        value = json.loads((folder / "dataset_description.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return "raw"
    kind = value.get("DatasetType") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else "raw"


def scan(root: Path, scopes: Iterable[str] = ("",), *, follow_external_symlinks: bool = False) -> ScanResult:
    """Find the NIfTI files, the JSON sidecars and the tables of the given scopes.

    Only names the BIDS schema allows are kept (:mod:`.validation`): the raw tree is checked
    against the raw rules (the derivative ones too when the dataset is a derivative one), any
    other scope against the derivative rules, tolerantly. The rest is skipped, with a reason,
    in :attr:`ScanResult.skipped`. Errors (:class:`BidsError`): a label that is not a BIDS label
    (``acq-fast scan``), a file named for another subject or session than its folders, and
    symlinks leading outside the BIDS folder (unless ``follow_external_symlinks``).
    """
    root = Path(root)
    scopes = list(scopes)
    result = ScanResult([], [])
    external: list[str] = []
    real_root = os.path.realpath(root)
    raw_is_derivative = _dataset_type(root) == "derivative"
    validators = {scope: NameValidator(derivative=bool(scope) or raw_is_derivative) for scope in scopes}
    for scope in scopes:
        base = root / scope if scope else root
        prefix = f"{scope}/" if scope else ""
        if not base.is_dir() or not (follow_external_symlinks or _inside(os.path.realpath(base), real_root)):
            continue  # walk() below names it
        ignore = load_bidsignore(base)
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            name = entry.name
            _, ext = split_extension(name)
            if name == "dataset_description.json" or not (ext == ".json" or ext in OTHER_EXTENSIONS):
                continue
            if (
                name.startswith(".")
                or not entry.is_file()
                or (ignore is not None and ignore.match_file(name))
            ):
                continue
            if not follow_external_symlinks and entry.is_symlink():
                target = _external_target(entry.path, real_root)
                if target is not None:
                    external.append(f"{prefix}{name} -> {target}")
                    continue
            verdict = validators[scope].check(name)
            if verdict.label_problem:
                raise BidsError(
                    f"{shown(prefix + name)}: {verdict.label_problem}. Rename the file (or list it in .bidsignore)."
                )
            _keep(result, validators[scope], verdict, name, prefix + name, ext)
    for scope, relpath, entry in _walk(root, scopes, follow_external_symlinks, external):
        prefix = f"{scope}/" if scope else ""
        local = relpath[len(prefix) :]
        validator = validators[scope]
        if entry.is_dir():
            if not validator.is_valid(local + "/"):  # a BIDS pseudo-file folder (.ome.zarr/, .ds/) is fine
                result.skipped.append((relpath + "/", validator.problem(local + "/") or ""))
            continue
        verdict = validator.check_in(local.rpartition("/")[0], entry.name)
        if verdict.label_problem:
            raise BidsError(
                f"{shown(relpath)}: {verdict.label_problem}. Rename the file (or list it in .bidsignore)."
            )
        lower = entry.name.lower()
        if not lower.endswith(NIFTI_EXTENSIONS):
            _, ext = split_extension(entry.name)
            _keep(result, validator, verdict, local, relpath, ext)
            continue
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
        if not verdict.valid:
            result.skipped.append((relpath, validator.problem(local) or ""))
            continue
        missing = {k: v for k, v in folders.items() if k not in name.entities}
        if missing:
            # A derivative file under sub-XX[/ses-YY] whose name lacks sub-/ses-: its folders say which row.
            name = BidsName({**missing, **name.entities}, name.suffix, name.extension, name.unknown)
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
        result.files.append(
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
    _refuse_external(external, root)
    result.skipped.sort()
    return result


def _keep(
    result: ScanResult, validator: NameValidator, verdict: Verdict, local: str, relpath: str, ext: str
) -> None:
    """File a valid sidecar or table of ``result``, skip an invalid one (other files: valid, not kept)."""
    if not verdict.valid:
        result.skipped.append((relpath, validator.problem(local) or ""))
    elif ext == ".json":
        result.jsons.append(relpath)
    elif ext in OTHER_EXTENSIONS:
        result.other.append(relpath)
