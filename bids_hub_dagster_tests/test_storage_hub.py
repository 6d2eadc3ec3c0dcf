"""Publishing to the Hub from object storage: one commit batch of files in scratch at a time.

A real S3 server (moto's, on loopback) holds the intermediates; the Hub test server sees
every LFS upload and commit, and at each one the test looks at the scratch folder
(``BIDS_HUB_SCRATCH``): the stored shard and preview files copied there for publishing
must never be more than one commit batch (``files_per_commit``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import threading
from pathlib import Path

import boto3
import datasets
import pyarrow as pa
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from bids_hub_dagster.cli import main
from bids_hub_dagster.dataset.parquet import write_table
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.publish.digests import record_digest
from bids_hub_dagster.publish.hub import HubOptions, HubRepo
from bids_hub_dagster.publish.privacy_report import REPORT_NAME
from bids_hub_dagster.publish.sources import StoredFacts, StoredSource, inspect_all
from bids_hub_dagster.storage import StoreError, open_store, scratch_root
from bids_hub_dagster_tests.hub_server import READ_TOKEN, HubServer, use_hub_server

FILES_PER_COMMIT = 2
COMMIT = r"^/api/datasets/lab/[^/]+/commit/main$"
LFS_PUT = r"^/lfs-upload/"


def _scratch_files() -> list[str]:
    """The stored files copied into scratch now: those under a hub_shards or hub_shards.preview
    folder, finished or being copied (the ``.name.<hex>.tmp`` of an atomic write)."""
    root = scratch_root()
    if not root.is_dir():
        return []
    found = []
    for dirpath, _, filenames in os.walk(root):
        if Path(dirpath).name in ("hub_shards", "hub_shards.preview"):
            found += [
                f"{Path(dirpath).name}/{n}" for n in filenames if n.endswith(".parquet") or ".parquet." in n
            ]
    return sorted(n for n in found if not n.endswith(".sha256.json"))


class _ScratchWatchingHub(HubServer):
    """The Hub test server, noting the stored files present in scratch when an LFS upload or a commit arrives."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, read_token=READ_TOKEN)
        self.seen: list[tuple[str, list[str]]] = []  # ("upload" | "commit", files in scratch then)
        self._seen_lock = threading.Lock()

    def _handle(self, request):  # noqa: ANN001, ANN202  (the server's own request and response types)
        kind = (
            "commit"
            if request.method == "POST" and re.search(COMMIT, request.raw_path)
            else "upload"
            if request.method == "PUT" and re.search(LFS_PUT, request.raw_path)
            else None
        )
        if kind is not None:
            with self._seen_lock:
                self.seen.append((kind, _scratch_files()))
        return super()._handle(request)

    def most_in_scratch(self) -> int:
        return max((len(files) for _, files in self.seen), default=0)


@pytest.fixture
def hub(bucket, tmp_path_factory, monkeypatch):  # the bucket fixture sets BIDS_HUB_SCRATCH
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    with _ScratchWatchingHub(tmp_path_factory.mktemp("hub-server")) as server:
        use_hub_server(server, monkeypatch, tmp_path_factory.mktemp("hf-home"))
        try:
            yield server
        finally:
            HfFileSystem.clear_instance_cache()
            close_session()
    assert server.internal_errors == []


def _six_sessions(root: Path) -> Path:
    """The demo tree with a second session for sub-02 and sub-03: six rows, so six shards."""
    build_demo_bids(root)
    for subject in ("sub-02", "sub-03"):
        shutil.copytree(root / subject / "ses-1", root / subject / "ses-2")
        for path in sorted((root / subject / "ses-2").rglob("*ses-1*")):
            path.rename(path.with_name(path.name.replace("ses-1", "ses-2")))
    return root


def _publish(root: Path, repo: str):
    args = [
        "publish", str(root), "--to", f"hf://datasets/lab/{repo}", "--num-shards", "6",
        "--files-per-commit", str(FILES_PER_COMMIT), "--private", "--no-progress", "--workers", "2",
    ]  # fmt: skip
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _fresh_instance(monkeypatch, folder: Path) -> None:
    folder.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(folder))


def test_a_publication_from_s3_fetches_one_commit_batch_at_a_time(bucket, hub, tmp_path, monkeypatch):
    root = _six_sessions(tmp_path / "bids")
    monkeypatch.setenv("BIDS_HUB_STORAGE", f"s3://{bucket}/prefix")
    result = _publish(root, "from-s3")
    assert result.exit_code == 0, result.output
    assert "verified: OK: 6/6 rows" in result.output

    uploads = [files for kind, files in hub.seen if kind == "upload"]
    commits = [files for kind, files in hub.seen if kind == "commit"]
    # six shards and six previews, each sent once from scratch; preview.png (no stored file) from bytes
    assert len(uploads) == 13 and [files for files in uploads if not files] == [[]]
    assert hub.most_in_scratch() == FILES_PER_COMMIT  # the file being sent, with its batch: never more
    assert len(commits) == 9  # the widened manifest, 7 batches of files and preview.png, the card
    assert all(len(files) <= FILES_PER_COMMIT for files in commits)
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []
    # the privacy report, written in scratch (no copy of the shards to sit beside), is kept in the store
    report = boto3.client("s3").get_object(Bucket=bucket, Key=f"prefix/bids/{REPORT_NAME}")["Body"].read()
    assert json.loads(report)["dataset"] == "bids" and REPORT_NAME not in hub.files("lab/from-s3")

    # the same dataset published from local storage: the same files, byte for byte
    _fresh_instance(monkeypatch, tmp_path / "dagster-local")
    monkeypatch.setenv("BIDS_HUB_STORAGE", str(tmp_path / "local-storage"))
    local = _publish(root, "from-local")
    assert local.exit_code == 0, local.output
    from_s3, from_local = hub.files("lab/from-s3"), hub.files("lab/from-local")
    published = sorted(p for p in from_local if p.startswith(("data/", "preview/")) or p == "preview.png")
    assert len(published) == 13 and sorted(p for p in from_s3 if p in published) == published
    assert all(from_s3[p] == from_local[p] for p in published)
    assert from_s3["README.md"] == from_local["README.md"].replace(b"lab/from-local", b"lab/from-s3")
    for config in ("default", "preview"):
        loaded = [
            datasets.load_dataset(f"lab/{repo}", config, split="train").data.table
            for repo in ("from-s3", "from-local")
        ]
        assert loaded[0].num_rows == 6 and loaded[0].equals(loaded[1])


def test_a_publication_from_s3_that_fails_midway_leaves_scratch_empty(bucket, hub, tmp_path, monkeypatch):
    root = _six_sessions(tmp_path / "bids")
    monkeypatch.setenv("BIDS_HUB_STORAGE", f"s3://{bucket}/prefix")
    commit = COMMIT.replace("[^/]+", "faulty")
    lost = hub.inject("POST", commit, drop_after_body=True, skip=1)  # applied, its answer lost
    refused = hub.inject("POST", commit, status=403, skip=3, body="Forbidden: the token lost its write role")
    failed = _publish(root, "faulty")
    assert failed.exit_code != 0, failed.output
    assert (lost.fired, refused.fired) == (1, 1)
    assert "403" in failed.output or "Forbidden" in failed.output
    assert hub.most_in_scratch() <= FILES_PER_COMMIT
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []
    committed = [p for p in hub.files("lab/faulty") if p.startswith(("data/", "preview/"))]
    assert 0 < len(committed) < 12  # failed midway, after the lost answer was found applied

    hub.clear_faults()
    hub.seen.clear()
    again = _publish(root, "faulty")
    assert again.exit_code == 0, again.output
    assert "verified: OK: 6/6 rows" in again.output
    sent = {name for kind, files in hub.seen if kind == "upload" for name in files}
    published = {
        f"hub_shards{'.preview' if p.startswith('preview/') else ''}/shard-{p.split('-')[1]}.parquet"
        for p in committed
    }
    assert sent and not sent & published  # what was committed is neither fetched nor sent again
    assert hub.most_in_scratch() <= FILES_PER_COMMIT
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []


def _stored_files(bucket_name: str, tmp_path: Path, count: int) -> tuple[StoredSource, list[Path]]:
    """``count`` parquet files put in an s3:// store under ``demo/hub_shards/`` (keys as paths)."""
    store = open_store(f"s3://{bucket_name}/store")
    keys = []
    for i in range(count):
        local = tmp_path / "made" / f"shard-{i:05d}.parquet"
        write_table(local, pa.table({"i": list(range(i, i + 5)), "blob": [os.urandom(3000)] * 5}))
        key = f"demo/hub_shards/shard-{i:05d}.parquet"
        store.put(local, key, record_digest(local))
        keys.append(key)
    facts = inspect_all(store, keys)
    assert all(isinstance(f, StoredFacts) for f in facts.values())
    return StoredSource(store, facts), [Path(k) for k in keys]  # type: ignore[arg-type]


class _Interrupted(KeyboardInterrupt):
    pass


def test_ctrl_c_during_a_commit_retry_removes_the_batch_and_verify_reads_no_stored_file(
    bucket, hub, tmp_path
):
    source, keys = _stored_files(bucket, tmp_path, 5)
    card = DatasetCard("---\nlicense: other\n---\n# stored\n")
    hub.inject("POST", COMMIT, status=500, skip=2)  # the second batch of files fails once

    def ctrl_c(seconds: float) -> None:  # Ctrl-C while waiting to retry: the batch's copies are in scratch
        assert len(_scratch_files()) == FILES_PER_COMMIT
        raise _Interrupted

    options = HubOptions(files_per_commit=FILES_PER_COMMIT)
    with pytest.raises(_Interrupted):
        HubRepo("lab/stored", options=options, sleep=ctrl_c).publish(keys, card, source=source)
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []
    assert len([p for p in hub.files("lab/stored") if p.startswith("data/")]) == FILES_PER_COMMIT

    repo = HubRepo("lab/stored", options=options, sleep=lambda s: None)
    hub.seen.clear()
    result = repo.publish(keys, card, source=source)
    assert result.source is source and len(result.files_skipped) == FILES_PER_COMMIT
    commits = [files for kind, files in hub.seen if kind == "commit"]
    assert [len(files) for files in commits] == [2, 1]  # the last batch: one file and the card
    assert all(1 <= len(files) <= FILES_PER_COMMIT for kind, files in hub.seen if kind == "upload")
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []

    # verification compares the Hub's LFS oids with the stored digest records: with the stored
    # files gone from the bucket, it still checks every one, and nothing comes to scratch
    s3 = boto3.client("s3")
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=f"store/{key.as_posix()}")
    report = repo.verify_quick(keys, card, pa.table({"i": list(range(25))}), source=source)
    assert report.files_checked == 6 and report.rows_found == 25, report.problems  # 5 files and the card
    assert not report.problems
    tampered = keys[1].as_posix()
    wrong = StoredSource(
        source.store, source.facts | {tampered: dataclasses.replace(source.facts[tampered], sha256="0" * 64)}
    )
    report = repo.verify_quick(keys, card, pa.table({"i": list(range(25))}), source=wrong)
    assert [p for p in report.problems if "data/train-00001-of-00005.parquet differs from s3://" in p]
    assert list(scratch_root().iterdir()) == []


def test_a_stored_file_rotten_behind_its_record_stops_the_publication_at_its_batch(bucket, hub, tmp_path):
    source, keys = _stored_files(bucket, tmp_path, 5)
    s3 = boto3.client("s3")
    rotten = f"store/{keys[3].as_posix()}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=rotten)["Body"].read())
    body[100:116] = bytes(b ^ 0xFF for b in body[100:116])  # same size; the record's ETag made to match
    s3.put_object(Bucket=bucket, Key=rotten, Body=bytes(body))
    sidecar = json.loads(s3.get_object(Bucket=bucket, Key=f"{rotten}.sha256")["Body"].read())
    sidecar["etag"] = s3.head_object(Bucket=bucket, Key=rotten)["ETag"]
    s3.put_object(Bucket=bucket, Key=f"{rotten}.sha256", Body=json.dumps(sidecar).encode())

    repo = HubRepo("lab/rotten", options=HubOptions(files_per_commit=FILES_PER_COMMIT), sleep=lambda s: None)
    card = DatasetCard("---\nlicense: other\n---\n# stored\n")
    with pytest.raises(
        StoreError, match=rf"s3://{bucket}/store/{keys[3].as_posix()} changed since it was stored"
    ):
        repo.publish(keys, card, source=source)
    # its batch was refused as it was copied: nothing of it was sent, the batch before it is in
    assert sorted(p for p in hub.files("lab/rotten") if p.startswith("data/")) == [
        "data/train-00000-of-00005.parquet",
        "data/train-00001-of-00005.parquet",
    ]
    assert "README.md" not in hub.files("lab/rotten")  # the card comes last: never names a missing file
    assert hub.most_in_scratch() <= FILES_PER_COMMIT
    assert _scratch_files() == [] and list(scratch_root().iterdir()) == []
