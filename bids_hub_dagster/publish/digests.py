"""sha256 of shard files, computed once per file version and kept in a sidecar.

A 273 GB dataset takes minutes to hash, and the Hub publisher needs each shard's
sha256 twice (to compare with the remote LFS oid, and as the LFS oid it uploads under).
The digest is recorded when the shard is written (:func:`record_digest`) and stored
beside it as ``<shard>.sha256.json`` together with the file's size, mtime, ctime and
inode. Any write to the file changes its ctime, which no user tool can set back, so a
shard overwritten in place (``cp`` onto a published hard link, even keeping size and
mtime) no longer matches its stamp: :func:`check_recorded` then hashes it again and
compares with the digest recorded at write time. The sidecar also
remembers which Hub repos already received the file's bytes by a per-shard pre-upload,
so the final upload can report the bytes it really sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..dataset.parquet import atomic_path

_CHUNK = 8 * 2**20


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_any(path: Path) -> dict:
    """The sidecar's record, whether or not the file changed since."""
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else {}


def _read(path: Path) -> dict:
    record = _read_any(path)
    return record if record.get("stamp") == _stamp(path) else {}


def _write(path: Path, record: dict) -> None:
    try:
        with atomic_path(sidecar_path(path)) as tmp:
            tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
    except OSError:
        pass  # a read-only shard folder only costs a re-hash next time


def file_digest(path: Path) -> str:
    """The sha256 of ``path``, from its sidecar when the file has not changed since."""
    path = Path(path)
    record = _read(path)
    if isinstance(record.get("sha256"), str):
        return record["sha256"]
    stamp = _stamp(path)
    digest = sha256_file(path)
    earlier = _read_any(path)
    # not rewritten while hashing; and a changed file never replaces the digest recorded
    # before (check_recorded compares with it)
    if _stamp(path) == stamp and earlier.get("sha256") in (None, digest):
        _write(
            path, earlier | {"stamp": stamp, "sha256": digest, "uploaded_to": earlier.get("uploaded_to", [])}
        )
    return digest


def record_digest(path: Path) -> str:
    """Hash a file the tool just wrote and record its digest: what :func:`check_recorded` compares with."""
    path = Path(path)
    stamp = _stamp(path)
    digest = sha256_file(path)
    _write(path, {"stamp": stamp, "sha256": digest, "uploaded_to": []})
    return digest


@dataclass(frozen=True)
class DigestCheck:
    """Whether a stored file still holds the bytes the tool wrote."""

    ok: bool
    recorded: str | None  # the digest recorded when the file was written, if any
    found: str | None  # the digest now, when the file had to be hashed again

    def describe(self, path: Path) -> str:
        return (
            f"{path} changed since it was written (sha256 {self.recorded[:12]}… recorded, "
            f"{(self.found or '?')[:12]}… now)"
        )


def check_recorded(path: Path) -> DigestCheck:
    """Compare a stored file with the digest recorded when it was written.

    Unchanged stamp (size, mtime, ctime, inode): trusted without reading. Otherwise the
    file is hashed again: equal bytes refresh the stamp, different bytes fail the check.
    A file with no recorded digest (written before digests were recorded) is hashed and
    recorded now, and passes.
    """
    path = Path(path)
    record = _read_any(path)
    if record and record.get("stamp") == _stamp(path):
        return DigestCheck(True, record["sha256"], None)
    stamp = _stamp(path)
    found = sha256_file(path)
    if not record:  # written before digests were recorded: nothing to compare with; record it now
        if _stamp(path) == stamp:
            _write(path, {"stamp": stamp, "sha256": found, "uploaded_to": []})
        return DigestCheck(True, None, found)
    if record["sha256"] != found:
        return DigestCheck(False, record["sha256"], found)
    if _stamp(path) == stamp:
        _write(path, record | {"stamp": stamp})
    return DigestCheck(True, record["sha256"], found)


def mark_uploaded(path: Path, target: str) -> None:
    """Remember that ``target`` (a repo URL) already holds the bytes of ``path``."""
    path = Path(path)
    digest = file_digest(path)
    record = _read(path) or {"stamp": _stamp(path), "sha256": digest, "uploaded_to": []}
    if target not in record["uploaded_to"]:
        record["uploaded_to"].append(target)
        _write(path, record)


def was_uploaded(path: Path, target: str) -> bool:
    """Whether ``target`` received the current bytes of ``path`` by an earlier pre-upload."""
    return target in _read(Path(path)).get("uploaded_to", [])
