"""Shard digests: hashed once, recorded at write time, and a changed file is always caught."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bids_hub_dagster.publish.digests import (
    check_recorded,
    file_digest,
    mark_uploaded,
    record_digest,
    sidecar_path,
    was_uploaded,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_recorded_file_is_trusted_without_reading_it_again(tmp_path, monkeypatch):
    path = write(tmp_path / "s.parquet", b"shard bytes")
    digest = record_digest(path)
    assert digest == hashlib.sha256(b"shard bytes").hexdigest()
    import bids_hub_dagster.publish.digests as digests

    monkeypatch.setattr(digests, "sha256_file", lambda p: (_ for _ in ()).throw(AssertionError("read")))
    check = check_recorded(path)
    assert check.ok and check.recorded == digest and check.found is None
    assert file_digest(path) == digest


def test_a_file_overwritten_in_place_with_the_same_size_and_mtime_is_caught(tmp_path):
    path = write(tmp_path / "s.parquet", b"A" * 1000)
    recorded = record_digest(path)
    st = path.stat()
    with open(path, "r+b") as fh:  # what `cp other s.parquet` does to a hard link: same inode
        fh.seek(500)
        fh.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    check = check_recorded(path)
    assert not check.ok and check.recorded == recorded
    assert check.found == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "changed since it was written" in check.describe(path)
    # hashing the changed file never replaces the digest recorded at write time
    file_digest(path)
    assert not check_recorded(path).ok


def test_a_new_link_rehashes_once_and_keeps_the_record(tmp_path):
    path = write(tmp_path / "s.parquet", b"same bytes")
    recorded = record_digest(path)
    os.link(path, tmp_path / "published.parquet")  # changes the inode's ctime, not its bytes
    check = check_recorded(path)
    assert check.ok and check.found == recorded
    assert json.loads(sidecar_path(path).read_text())["stamp"]["ctime_ns"] == path.stat().st_ctime_ns


def test_a_file_without_a_record_is_recorded_when_first_checked(tmp_path):
    path = write(tmp_path / "old.parquet", b"built by an older version")
    check = check_recorded(path)
    assert check.ok and check.recorded is None
    assert check_recorded(path).recorded == check.found


def test_uploads_are_remembered_per_repo_and_forgotten_when_the_bytes_change(tmp_path):
    path = write(tmp_path / "s.parquet", b"v1")
    record_digest(path)
    mark_uploaded(path, "https://hub/datasets/a")
    assert was_uploaded(path, "https://hub/datasets/a") and not was_uploaded(path, "https://hub/datasets/b")
    write(tmp_path / "s.parquet.new", b"v2").replace(path)  # a rebuild: a new file under the same name
    assert not was_uploaded(path, "https://hub/datasets/a")


def test_an_unreadable_sidecar_costs_only_a_rehash(tmp_path):
    path = write(tmp_path / "s.parquet", b"bytes")
    sidecar_path(path).write_text("{not json")
    assert file_digest(path) == hashlib.sha256(b"bytes").hexdigest()
    assert check_recorded(path).ok
