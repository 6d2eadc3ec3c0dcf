"""The read-back after a local publish reads each published byte once and no source byte again: the
source files' digests come from the shard build, which hashed the bytes it embedded. A source file
changed since (even keeping its size and mtime) is hashed again and its difference reported."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from bids_hub_dagster.dataset import embed as embed_module
from bids_hub_dagster.dataset.parquet import write_row_groups
from bids_hub_dagster.dataset.shards import build_shard
from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table
from bids_hub_dagster.publish.destinations import LocalFolder
from bids_hub_dagster.publish.digests import (
    CHANGE_MARGIN_NS,
    SourceDigests,
    check_recorded,
    link_recorded,
    load_source_digests,
    record_digest,
    source_key,
    sources_path,
)
from bids_hub_dagster.publish.publication import publish_shards
from bids_hub_dagster.publish.verify import verify_published
from bids_hub_dagster.spec import spec_for_folder

SESSIONS = 4
MB = 10**6

# ------------------------------------------------------------------ what the process opens and reads

_OPENED: list[str] | None = None  # paths opened while a count runs (audit hook: Python-level opens)


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _rchar() -> int:
    """Bytes this process has read with read() calls so far (page cache included): /proc/self/io."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def counted(fn):
    """``fn()``'s result, the bytes read while it ran, and the paths it opened."""
    global _OPENED
    _OPENED = []
    before = _rchar()
    try:
        result = fn()
    finally:
        read, opened, _OPENED = _rchar() - before, _OPENED, None
    return result, read, opened


# ----------------------------------------------------------------------------- the publication


def _image(path: Path, shape: tuple[int, ...], seed: int) -> None:
    """A real NIfTI-1 image of random int16 voxels (incompressible: a .nii.gz is about as large)."""
    data = np.random.default_rng(seed).integers(-3000, 3000, size=shape, dtype=np.int16)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.name.endswith(".gz") else raw)


def write_tree(root: Path) -> None:
    """SESSIONS sessions, each a T1w (.nii, 1.8 MB) and a bold run (.nii.gz, 2.2 MB)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "reuse", "BIDSVersion": "1.10.0"}))
    for s in range(SESSIONS):
        sub, ses = f"sub-{s // 2 + 1:02d}", f"ses-{s % 2 + 1}"
        _image(root / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii", (96, 96, 96), s)
        _image(root / sub / ses / "func" / f"{sub}_{ses}_task-rest_bold.nii.gz", (48, 48, 24, 20), 100 + s)


def build_with_digests(root: Path, store: Path, monkeypatch):
    """The index and every shard, built with the source digests hashed from the embedded bytes."""
    spec = spec_for_folder(root, max_shard_size=8 * MB)
    table = index_to_table(spec.build_index(gate=False))
    ds, plan = dataset_from_index(table), spec.shard_plan(table)
    plain = embed_module.STRATEGIES["pandas"]
    files = {}
    for key in plan.keys():
        digests = SourceDigests()  # before the build reads anything

        def embed(part, features, on_file=None, digests=digests):
            def hook(path, data):  # the shard build's on_file hook, with the digests beside it
                digests(path, data)
                return on_file(path, data) if on_file is not None else None

            return plain(part, features, hook)

        monkeypatch.setitem(embed_module.STRATEGIES, "pandas", embed)
        shard = build_shard(ds, table, plan, key)
        written = write_row_groups(
            store / f"{key}.parquet", shard.schema, shard.groups, **shard.write_options
        )
        monkeypatch.setitem(embed_module.STRATEGIES, "pandas", plain)
        record_digest(written.path)
        digests.write(written.path)
        files[key] = written.path
    return spec, table, plan, files


@pytest.fixture
def published(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_tree(root)
    time.sleep(CHANGE_MARGIN_NS / 1e9 + 0.2)  # the sources settle before the build reads them
    store = tmp_path / "store"
    store.mkdir()
    spec, table, plan, files = build_with_digests(root, store, monkeypatch)
    dest = LocalFolder(tmp_path / "published", sources=[root], tool_folders=[store])
    result = publish_shards(spec.name, table, plan, files, dest)
    sources = sorted(p for p in root.rglob("*.nii*"))
    return root, table, result, dest, sources


def test_the_build_records_a_digest_per_source_file_it_embedded(published):
    root, _, result, _, sources = published
    assert len(result.shard_files) >= 2
    assert all(sources_path(p).is_file() for p in result.shard_files)
    recorded = load_source_digests(result.shard_files)
    assert set(recorded) == {source_key(p) for p in sources}
    for path in sources:
        assert recorded[source_key(path)].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_after_publish_reads_each_published_byte_once_and_no_source(published, tmp_path):
    root, table, result, dest, sources = published
    data_files = sorted((dest.folder / "data").glob("*.parquet"))
    published_bytes = sum(p.stat().st_size for p in data_files)
    source_bytes = sum(p.stat().st_size for p in sources)
    assert published_bytes > 0.9 * source_bytes > 10 * MB
    verify_published(dest.load_id, table)  # once first: what datasets imports and caches is not counted

    recorded = load_source_digests(result.shard_files)
    report, read, opened = counted(lambda: verify_published(dest.load_id, table, source_digests=recorded))
    assert report.ok, report.summary()
    assert (report.digests_reused, report.sources_hashed) == (len(sources), 0)
    assert report.files_checked == len(sources) and report.bytes_checked == source_bytes
    assert not {os.path.realpath(p) for p in opened} & {str(p) for p in sources}
    assert {str(p) for p in data_files} <= {os.path.realpath(p) for p in opened}
    # every published byte read once (footers and the card are small beside 16 MB of images)
    assert published_bytes <= read < published_bytes + 0.1 * source_bytes, (read, published_bytes)

    # without the recorded digests, the same read-back hashes every source file: twice the bytes
    old, read_old, opened_old = counted(lambda: verify_published(dest.load_id, table))
    assert old.ok and (old.digests_reused, old.sources_hashed) == (0, len(sources))
    assert {str(p) for p in sources} <= {os.path.realpath(p) for p in opened_old}
    assert read_old >= published_bytes + source_bytes


def test_a_source_changed_in_place_keeping_size_and_mtime_is_hashed_and_caught(published):
    root, table, result, dest, sources = published
    changed = sources[0]
    st = changed.stat()
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before; ctime moved
    assert (changed.stat().st_size, changed.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    report = verify_published(dest.load_id, table, source_digests=load_source_digests(result.shard_files))
    assert not report.ok
    assert (report.digests_reused, report.sources_hashed) == (len(sources) - 1, 1)
    rel = changed.relative_to(root).as_posix()
    assert len(report.problems) == 1 and f"bytes differ from {rel}" in report.problems[0]


def test_a_changed_published_cell_is_caught_with_the_recorded_digests(published):
    root, table, result, dest, sources = published
    shard = sorted((dest.folder / "data").glob("*.parquet"))[0]
    t = pq.read_table(shard)
    column = "t1w"
    cells = t.column(column).to_pylist()
    flipped = bytearray(cells[0]["bytes"])
    flipped[100] ^= 0x01
    cells[0] = {**cells[0], "bytes": bytes(flipped)}
    i = t.schema.get_field_index(column)
    pq.write_table(t.set_column(i, t.schema.field(column), [cells]), shard)

    report = verify_published(dest.load_id, table, source_digests=load_source_digests(result.shard_files))
    assert not report.ok and report.sources_hashed == 0
    assert len(report.problems) == 1 and "t1w: bytes differ from" in report.problems[0]


def test_a_file_changed_just_before_the_build_gets_no_digest(tmp_path):
    settled = tmp_path / "old.nii"
    _image(settled, (8, 8, 8), 1)
    time.sleep(CHANGE_MARGIN_NS / 1e9 + 0.2)
    digests = SourceDigests()  # the build starts
    fresh = tmp_path / "new.nii"
    _image(fresh, (8, 8, 8), 2)  # written while the build runs: its bytes may be half old, half new
    assert digests.add(settled, settled.read_bytes())
    assert not digests.add(fresh, fresh.read_bytes())
    assert not digests.add(settled, settled.read_bytes()[:-1])  # not the whole file: not its digest
    assert set(digests.digests) == {source_key(settled)}


def test_a_link_made_by_the_tool_keeps_the_shard_digest_trusted_and_a_write_does_not(tmp_path):
    shard = tmp_path / "shard.parquet"
    shard.write_bytes(os.urandom(4096))
    record_digest(shard)
    plain = tmp_path / "plain.parquet"  # linked the way a publish did before: the record goes stale
    plain.write_bytes(os.urandom(4096))
    record_digest(plain)
    os.link(plain, tmp_path / "plain-link.parquet")
    assert check_recorded(plain).found is not None  # read again: its ctime moved

    assert link_recorded(shard, tmp_path / "published.parquet")
    check = check_recorded(shard)
    assert check.ok and check.found is None  # trusted by its stamp: not read
    assert (tmp_path / "published.parquet").read_bytes() == shard.read_bytes()

    st = shard.stat()
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    (tmp_path / "published.parquet").write_bytes(bytes(data))  # written through the link: same size
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert not link_recorded(shard, tmp_path / "again.parquet")  # the record no longer held: not kept
    check = check_recorded(shard)
    assert not check.ok and check.found is not None
