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
from collections.abc import Iterable
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


def link_recorded(src: Path, dest: Path) -> bool:
    """Hard-link ``src`` at ``dest`` (``os.link``; its errors are raised) and keep its recorded digest trusted.

    A hard link moves the file's ctime, so its stamp no longer matches and the next
    :func:`check_recorded` would read the whole file again. When the record held just before
    the link and nothing but the ctime moved across it (same size, mtime and inode: the stats
    are microseconds apart, the span of one link), the record takes the new stamp. Anything
    else leaves the record alone, to be checked by a hash. Returns whether the record was kept.
    """
    src = Path(src)
    record = _read_any(src)
    before = _stamp(src)
    os.link(src, dest)
    if not record or record.get("stamp") != before:
        return False
    after = _stamp(src)
    if {k: v for k, v in after.items() if k != "ctime_ns"} != {
        k: v for k, v in before.items() if k != "ctime_ns"
    }:
        return False
    _write(src, record | {"stamp": after})
    return True


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


# ------------------------------------------------------------------------ source files' digests
#
# A full read-back compares every embedded file with its source file by sha256. Hashing the
# sources again reads the whole BIDS tree a second time; the shard build already has each
# source file's bytes in memory once (the embedder's ``on_file`` hook), so it can hash them
# there and keep the digest beside the stored shard (``<shard>.sources.json``). A recorded
# digest is used only for a source file whose stamp (size, mtime, ctime, inode) is still the
# one taken when it was hashed, and only if that file had not changed since before the build
# began reading: anything else is hashed again by the verification.

SOURCES_SUFFIX = ".sources.json"
#: A source file whose ctime or mtime is this close to the start of the build (or later) may have
#: been written while it was read: its digest is not recorded (the verification hashes it).
CHANGE_MARGIN_NS = 2 * 10**9


def sources_path(shard: Path) -> Path:
    """Where the digests of the source files embedded in ``shard`` are kept."""
    return shard.with_name(shard.name + SOURCES_SUFFIX)


def source_key(path: str | os.PathLike[str]) -> str:
    """How a source file is named in a record: its absolute, normalized path."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


@dataclass(frozen=True)
class SourceDigest:
    sha256: str
    stamp: dict[str, int]  # the file's stamp when it was hashed (see :func:`_stamp`)


class SourceDigests:
    """The sha256 of each source file a shard embeds, hashed from the bytes the build read.

    Use an instance as (or inside) the embedder's ``on_file`` hook: it is called with each
    file's path and bytes while they are in memory, and hashes them; the file itself is not
    read again. Create it before the build starts reading: a file changed after that moment
    (or just before it) is left out, since its bytes may have changed while being read.
    """

    def __init__(self, started_ns: int | None = None) -> None:
        import time

        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.digests: dict[str, SourceDigest] = {}

    def __call__(self, path: str, data: memoryview | bytes) -> None:
        self.add(path, data)
        return None

    def add(self, path: str | os.PathLike[str], data: memoryview | bytes) -> bool:
        """Record the digest of ``data``, the bytes just read from ``path``; False when it cannot be trusted."""
        try:
            stamp = _stamp(Path(path))
        except OSError:
            return False
        settled = self.started_ns - CHANGE_MARGIN_NS
        if stamp["size"] != len(data) or stamp["ctime_ns"] >= settled or stamp["mtime_ns"] >= settled:
            return False
        self.digests[source_key(path)] = SourceDigest(hashlib.sha256(data).hexdigest(), stamp)
        return True

    def write(self, shard: Path) -> None:
        """Keep the digests beside ``shard`` (after :func:`record_digest`: the record names its sha256)."""
        shard = Path(shard)
        record = {
            "shard_sha256": _read_any(shard).get("sha256"),
            "sources": {k: {"sha256": d.sha256, "stamp": d.stamp} for k, d in sorted(self.digests.items())},
        }
        try:
            with atomic_path(sources_path(shard)) as tmp:
                tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
        except OSError:
            pass  # a read-only shard folder only costs a hash of the sources at verification


def load_source_digests(shards: Iterable[Path]) -> dict[str, SourceDigest]:
    """The source digests recorded beside ``shards`` (those whose record is readable); key: :func:`source_key`.

    Each digest is trusted later only while its source file keeps the stamp it had when hashed
    (:func:`trusted_source_digest`); the shard's own bytes are checked by its own digest.
    """
    out: dict[str, SourceDigest] = {}
    for shard in shards:
        shard = Path(shard)
        try:
            record = json.loads(sources_path(shard).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        sources = record.get("sources") if isinstance(record, dict) else None
        for key, entry in (sources if isinstance(sources, dict) else {}).items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("stamp"), dict)
            ):
                out[key] = SourceDigest(entry["sha256"], entry["stamp"])
    return out


def trusted_source_digest(path: str | os.PathLike[str], recorded: SourceDigest | None) -> str | None:
    """``recorded``'s digest when ``path`` has not changed since it was hashed (same stamp), else None."""
    if recorded is None:
        return None
    try:
        return recorded.sha256 if _stamp(Path(path)) == recorded.stamp else None
    except OSError:
        return None
