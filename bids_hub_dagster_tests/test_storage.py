"""Intermediates on object storage: a real S3 server (moto's, on loopback) and the real s3fs/boto3 clients.

The endpoint and the (fake) credentials reach the clients through the standard environment
only (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…), as they would for MinIO or R2.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from fsspec.callbacks import Callback

from bids_hub_dagster.cli import main
from bids_hub_dagster.dataset.parquet import write_table
from bids_hub_dagster.dataset.shards import build_shard, plan_for_index, read_shard_record
from bids_hub_dagster.dataset.tables import dataset_from_index
from bids_hub_dagster.defs.io_managers import BidsHubParquetIOManager, StoredFiles
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.pipeline.refresh import StoredShard
from bids_hub_dagster.publish.digests import file_digest, record_digest
from bids_hub_dagster.storage import FsspecStore, LocalStore, StoreError, open_store, scratch_root
from bids_hub_dagster_tests.test_io_manager import DATASET, INDEX, SHARDS, load
from bids_hub_dagster_tests.test_io_manager import store as store_output

CHUNK = 5 * 2**20  # S3's smallest multipart part


def _random_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _object_exists(bucket: str, key: str) -> bool:
    try:
        boto3.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey"), exc
        return False
    return True


def _scratch_leftovers() -> list[Path]:
    root = scratch_root()
    return sorted(root.iterdir()) if root.is_dir() else []


def test_store_fetch_and_digest_round_trip(bucket, tmp_path):
    store = open_store(f"s3://{bucket}/intermediates", chunksize=CHUNK)
    assert isinstance(store, FsspecStore) and store.remote
    local = tmp_path / "made" / "shard-00000.parquet"
    table = pa.table(
        {"subject": [f"sub-{i:03d}" for i in range(2000)], "blob": [os.urandom(6000) for _ in range(2000)]}
    )
    written = write_table(local, table)  # ~12 MB: uploaded in three 5 MiB parts
    digest = record_digest(local)
    key = "demo/hub_shards/shard-00000.parquet"
    assert not store.exists(key) and not store.stored(key)

    store.put(local, key, digest)

    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=bucket, Key=f"intermediates/{key}")
    assert head["ContentLength"] == written.size
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    sidecar = s3.get_object(Bucket=bucket, Key=f"intermediates/{key}.sha256")["Body"].read()
    assert digest.encode() in sidecar
    assert store.stored(key) and store.record(key).sha256 == digest and store.changed(key) is None
    assert store.list("demo/hub_shards") == [key]  # the sidecar is not listed as a file

    with store.fetched([key, "demo/hub_shards/shard-00001.parquet"], missing_ok=True) as copies:
        assert list(copies) == [key]
        copy = copies[key]
        assert copy.read_bytes() == local.read_bytes()
        assert file_digest(copy) == digest  # recorded as copied: the publishers never hash it again
    assert not copy.exists() and _scratch_leftovers() == []

    # an object overwritten behind the tool's back: seen from its size and ETag, refused when fetched
    s3.put_object(Bucket=bucket, Key=f"intermediates/{key}", Body=b"not the shard")
    assert "changed since it was stored" in store.changed(key) and not store.stored(key)
    with pytest.raises(StoreError, match="changed since it was stored"), store.fetched([key]):
        pass
    # same size, other bytes (no ETag to compare): the sha256 checked while copying refuses it
    s3.put_object(Bucket=bucket, Key=f"intermediates/{key}", Body=os.urandom(written.size))
    s3.put_object(
        Bucket=bucket,
        Key=f"intermediates/{key}.sha256",
        Body=f'{{"sha256": "{digest}", "size": {written.size}}}',
    )
    assert store.stored(key)  # size and record agree: only the bytes can tell
    with pytest.raises(StoreError, match=r"sha256 [0-9a-f]{12}… recorded"):
        store.fetch(key, tmp_path / "copy")
    assert list((tmp_path / "copy").rglob("*.parquet*")) == []  # no half-copied file left

    # an object without its sidecar was not completely written by the tool: not stored
    s3.delete_object(Bucket=bucket, Key=f"intermediates/{key}.sha256")
    assert store.exists(key) and not store.stored(key)
    with pytest.raises(StoreError, match="no digest record"):
        store.fetch(key, tmp_path / "copy")

    store.delete(key)
    assert not _object_exists(bucket, f"intermediates/{key}")


def test_a_local_root_hands_out_its_own_files_without_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_HUB_SCRATCH", str(tmp_path / "scratch"))
    store = open_store(tmp_path / "storage")
    assert isinstance(store, LocalStore) and not store.remote
    assert isinstance(open_store(f"file://{tmp_path}/storage"), LocalStore)
    made = tmp_path / "storage" / "demo" / "hub_shards" / "shard-00000.parquet"
    write_table(made, pa.table({"x": [1, 2, 3]}))
    digest = record_digest(made)  # written in place, as the IO manager does
    key = "demo/hub_shards/shard-00000.parquet"
    store.put(made, key, digest)  # nothing to move
    assert store.stored(key) and store.record(key).sha256 == digest
    assert store.list("demo/hub_shards") == [key]  # the .sha256.json sidecar is not listed
    with store.fetched([key]) as copies:
        assert copies == {key: made}  # the stored file itself
    assert made.is_file() and _scratch_leftovers() == []
    made.write_bytes(made.read_bytes()[::-1])  # changed behind the tool's back
    assert "changed since it was written" in store.changed(key) and not store.stored(key)
    store.delete(key)
    assert not made.exists() and not store.exists(key)


def test_the_io_manager_keeps_everything_in_the_bucket(bucket, demo_spec):
    io = BidsHubParquetIOManager(base_dir=f"s3://{bucket}/store")
    table = demo_spec.index_table()
    store_output(io, INDEX, table)
    assert io.read_table(INDEX).equals(table) and load(io, INDEX).equals(table)
    store_output(io, DATASET, dataset_from_index(table))
    assert load(io, DATASET).features == dataset_from_index(table).features
    with pytest.raises(ValueError, match="is not a local folder; use read_table"):
        io.asset_path(INDEX)

    plan = plan_for_index(table, demo_spec.max_shard_size, 4)
    shard = build_shard(dataset_from_index(table), table, plan, "shard-00001")
    context = store_output(io, SHARDS, shard, "shard-00001")
    url = f"s3://{bucket}/store/demo/hub_shards/shard-00001.parquet"
    assert context.get_logged_metadata()["path"] == dg.MetadataValue.url(url)
    assert io.stored_shard(SHARDS, "shard-00001") == StoredShard(True)
    assert io.stored_shard(SHARDS, "shard-00002") == StoredShard(False)
    with io.local_shard(SHARDS, "shard-00001") as copy:
        assert pq.ParquetFile(copy).metadata.num_rows == 1
        record = read_shard_record(pq.read_schema(copy))
    assert not copy.exists() and _scratch_leftovers() == []
    with io.local_shard(SHARDS, "shard-00002") as missing:
        assert not missing.exists()  # as a local folder gives it: the checks say "does not exist"

    handed = load(io, SHARDS, ["shard-00000", "shard-00001"])  # keys only, no byte read
    assert isinstance(handed, StoredFiles) and handed.store.remote
    assert handed == {k: Path(f"demo/hub_shards/{k}.parquet") for k in ("shard-00000", "shard-00001")}

    s3 = boto3.client("s3")
    assert record["preview"]  # built with its preview rows: the shard counts only with them
    s3.delete_object(Bucket=bucket, Key="store/demo/hub_shards.preview/shard-00001.parquet.sha256")
    assert io.stored_shard(SHARDS, "shard-00001") == StoredShard(False)

    assert io.delete_stale_partitions(SHARDS, {"shard-00001": (1, 2)}) == []
    removed = io.delete_stale_partitions(SHARDS, {"shard-00001": (1, 3)})  # the plan moved its rows
    assert removed == [Path("demo/hub_shards/shard-00001.parquet")]
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="store/").get("Contents", [])}
    assert not [k for k in left if "hub_shards" in k]  # shard, preview and both sidecars


_UPLOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fsspec.callbacks import Callback
    from bids_hub_dagster.storage import open_store

    class Slow(Callback):
        # a slow link: each part takes a while, so the upload is still running when it is killed
        def relative_update(self, inc=1):
            super().relative_update(inc)
            print("part", flush=True)
            time.sleep(0.5)

    url, local, key, digest = sys.argv[1:]
    open_store(url, chunksize=5 * 2**20).put(Path(local), key, digest, callback=Slow())
    print("done", flush=True)
    """
)


@pytest.mark.slow  # an uploader in a subprocess, killed with SIGKILL
def test_an_upload_killed_midway_leaves_no_object_under_the_key(bucket, tmp_path):
    local = tmp_path / "scratch-shard.parquet"
    digest = _random_file(local, 12 * CHUNK)  # twelve parts
    key = "demo/hub_shards/shard-00003.parquet"
    url = f"s3://{bucket}/prefix"
    store = open_store(url)
    # an earlier, complete version of the shard: the interrupted upload must not leave it looking current
    earlier = tmp_path / "earlier.parquet"
    store.put(earlier, key, _random_file(earlier, 1000))
    assert store.stored(key)

    proc = subprocess.Popen(
        [sys.executable, "-c", _UPLOADER, url, str(local), key, digest],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    s3 = boto3.client("s3")
    parts = 0
    deadline = time.monotonic() + 60
    try:
        while parts < 3:  # wait (at most a minute) for three parts to reach the server
            assert proc.poll() is None, f"the uploader ended before it was killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "the upload never reached three parts within 60 s"
            uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            if uploads:
                parts = len(
                    s3.list_parts(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]).get(
                        "Parts", []
                    )
                )
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # the parts are there, in an upload never completed ...
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"prefix/{key}"]
    # ... but no object holds them, and the earlier version no longer counts as stored
    head = s3.head_object(Bucket=bucket, Key=f"prefix/{key}")
    assert head["ContentLength"] == 1000  # the earlier object, untouched
    assert not _object_exists(bucket, f"prefix/{key}.sha256")
    assert not store.stored(key)


class _LinkDrops(Callback):
    """The connection fails after two parts have gone up."""

    def relative_update(self, inc=1):
        super().relative_update(inc)
        if self.value >= 2 * CHUNK:
            raise ConnectionResetError("the link to the object store dropped")


def test_a_failed_upload_is_aborted_and_leaves_no_object(bucket, tmp_path):
    local = tmp_path / "scratch-shard.parquet"
    digest = _random_file(local, 4 * CHUNK)
    store = open_store(f"s3://{bucket}/prefix", chunksize=CHUNK)
    with pytest.raises(ConnectionResetError):
        store.put(local, "demo/hub_shards/shard-00000.parquet", digest, callback=_LinkDrops())
    s3 = boto3.client("s3")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted: no parts kept
    assert not _object_exists(bucket, "prefix/demo/hub_shards/shard-00000.parquet")
    assert not _object_exists(bucket, "prefix/demo/hub_shards/shard-00000.parquet.sha256")
    assert not store.stored("demo/hub_shards/shard-00000.parquet")


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _published_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def test_publish_with_s3_storage_matches_local_storage_byte_for_byte(bucket, tmp_path, monkeypatch):
    root = build_demo_bids(tmp_path / "bids")
    local_out, s3_out = tmp_path / "local-out", tmp_path / "s3-out"
    args = ("--num-shards", "3", "--no-progress", "--workers", "2")

    local = _invoke("publish", str(root), "--to", str(local_out), *args)
    assert local.exit_code == 0, local.output

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster-s3"))  # a fresh instance
    (tmp_path / "dagster-s3").mkdir()
    monkeypatch.setenv("BIDS_HUB_STORAGE", f"s3://{bucket}/prefix")
    first = _invoke("publish", str(root), "--to", str(s3_out), *args)
    assert first.exit_code == 0, first.output
    assert "verified: OK" in first.output

    # the same files, the same bytes (the card names its own folder)
    assert _published_files(s3_out) == _published_files(local_out)
    data = [name for name in _published_files(local_out) if name.endswith(".parquet")]
    assert len([n for n in data if n.startswith("data/")]) == 3
    assert len([n for n in data if n.startswith("preview/")]) == 3  # the preview config, from stored previews
    match, mismatch, errors = filecmp.cmpfiles(local_out, s3_out, data, shallow=False)
    assert (mismatch, errors) == ([], [])
    card = (s3_out / "README.md").read_text().replace(str(s3_out), str(local_out))
    assert card == (local_out / "README.md").read_text()

    # the intermediates are in the bucket, each with its digest sidecar; the scratch copies are gone
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="prefix/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    shards = sorted(k for k in keys if "/hub_shards/" in k and k.endswith(".parquet"))
    assert [k.rsplit("/", 1)[-1] for k in shards] == [f"shard-0000{i}.parquet" for i in range(3)]
    previews = sorted(k for k in keys if "/hub_shards.preview/" in k and k.endswith(".parquet"))
    assert len(previews) == 3
    assert all(f"{k}.sha256" in keys for k in shards + previews)
    assert {"prefix/bids/bids_index.parquet", "prefix/bids/hf_dataset.parquet"} <= keys
    assert _scratch_leftovers() == []

    again = _invoke("publish", str(root), "--to", str(s3_out), *args)
    assert again.exit_code == 0, again.output
    assert "3 of 3 shard(s) unchanged since built: kept" in again.output

    # a shard object that lost its digest sidecar (an upload killed before it was recorded) is rebuilt
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"{shards[1]}.sha256")
    third = _invoke("publish", str(root), "--to", str(s3_out), *args)
    assert third.exit_code == 0, third.output
    assert "2 of 3 shard(s) unchanged since built: kept" in third.output
    match, mismatch, errors = filecmp.cmpfiles(local_out, s3_out, data, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert _scratch_leftovers() == []

    # bytes rotten in the bucket behind a record that still matches (size, ETag): the copy for the
    # publish is refused by its sha256, the publication in place stays, and no copy is left behind
    s3 = boto3.client("s3")
    body = bytearray(s3.get_object(Bucket=bucket, Key=shards[2])["Body"].read())
    middle = len(body) // 2  # in the image bytes: the footer stays readable
    body[middle : middle + 16] = bytes(b ^ 0xFF for b in body[middle : middle + 16])
    sidecar = json.loads(s3.get_object(Bucket=bucket, Key=f"{shards[2]}.sha256")["Body"].read())
    s3.put_object(Bucket=bucket, Key=shards[2], Body=bytes(body))
    sidecar["etag"] = s3.head_object(Bucket=bucket, Key=shards[2])["ETag"]
    s3.put_object(Bucket=bucket, Key=f"{shards[2]}.sha256", Body=json.dumps(sidecar).encode())
    elsewhere = tmp_path / "s3-out-2"  # another destination: a publish is due, no shard to rebuild
    rotten = _invoke("publish", str(root), "--to", str(elsewhere), *args)
    assert rotten.exit_code != 0, rotten.output
    assert "3 of 3 shard(s) unchanged since built: kept" in rotten.output
    assert f"s3://{bucket}/{shards[2]} changed since it was stored" in rotten.output
    assert not list(elsewhere.rglob("*.parquet"))  # nothing half-published
    match, mismatch, errors = filecmp.cmpfiles(local_out, s3_out, data, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert _scratch_leftovers() == []


def test_publish_to_the_hub_from_s3_storage_then_rerun_makes_no_commit(
    bucket, hub_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("BIDS_HUB_STORAGE", f"s3://{bucket}/prefix")
    root = build_demo_bids(tmp_path / "bids")
    args = [
        "publish", str(root), "--to", "hf://datasets/lab/from-s3", "--num-shards", "4",
        "--files-per-commit", "2", "--upload-shards", "--private", "--no-progress", "--workers", "2",
    ]  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "verified: OK: 4/4 rows" in result.output
    assert _scratch_leftovers() == []  # the shards' scratch copies (pre-upload, publish) are gone

    again = _invoke(*args)
    assert again.exit_code == 0, again.output
    assert "4 of 4 shard(s) unchanged since built: kept" in again.output and "no commit" in again.output
    checked = _invoke("verify", "hf://datasets/lab/from-s3", "--bids-root", str(root))
    assert checked.exit_code == 0 and checked.output.startswith("OK: 4/4 rows"), checked.output
    assert _scratch_leftovers() == []
