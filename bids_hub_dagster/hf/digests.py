"""sha256 of shard files, computed once per file version and kept in a sidecar.

A 273 GB dataset takes minutes to hash, and the Hub publisher needs each shard's
sha256 twice (to compare with the remote LFS oid, and as the LFS oid it uploads under).
The digest is stored beside the shard as ``<shard>.sha256.json`` together with the
file's size, mtime and inode: any rewrite of the shard invalidates it. The sidecar also
remembers which Hub repos already received the file's bytes by a per-shard pre-upload,
so the final upload can report the bytes it really sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .parquet import atomic_path

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
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read(path: Path) -> dict:
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("stamp") != _stamp(path):
        return {}
    return record


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
    if _stamp(path) == stamp:  # not rewritten while hashing
        _write(path, {"stamp": stamp, "sha256": digest, "uploaded_to": []})
    return digest


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
