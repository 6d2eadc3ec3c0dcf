"""Publishing to the Hub, against the Hub test server, through the real huggingface_hub client.

Each fault test ends with the remote repo complete (every file byte-equal to its shard),
no file lost or duplicated, and no more commits than the batches need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from datasets import List, Nifti, load_dataset
from huggingface_hub import HfApi

from bids_hub_dagster.dataset.shards import ShardPlan
from bids_hub_dagster.defs import build_definitions, job_names, names
from bids_hub_dagster.defs.io_managers import preview_file
from bids_hub_dagster.demo import write_demo
from bids_hub_dagster.publish.card import render_card
from bids_hub_dagster.publish.destinations import DestinationError, PublishResult
from bids_hub_dagster.publish.hub import (
    Backoff,
    HubAccessError,
    HubOptions,
    HubRepo,
    HubTransientError,
    classify,
    plan_batches,
)
from bids_hub_dagster.publish.hub.retry import short_error
from bids_hub_dagster.publish.manifest import MANIFEST_NAME, Manifest
from bids_hub_dagster.publish.publication import card_facts, publish_shards, shard_file_stats
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster_tests.conftest import isolate_home, materialize_all, memory_instance
from bids_hub_dagster_tests.hub_server import READ_TOKEN, HubServer, use_hub_server

REPO_ID = "lab/demo"
DEST = f"hf://datasets/{REPO_ID}"
FAST = Backoff(attempts=4, base=0.01, cap=0.05)
COMMIT = r"^/api/datasets/lab/demo/commit/"
LFS_PUT = r"^/lfs-upload/"  # the upload href the server hands out in LFS batch answers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Built:
    """The demo's shards, built through Dagster, ready to publish with the core publisher."""

    spec: DatasetSpec
    files: dict[str, Path]
    storage: Path
    server: object

    @property
    def table(self):
        return pq.read_table(self.storage / "demo" / "bids_index.parquet")

    @property
    def plan(self) -> ShardPlan:
        return self.spec.shard_plan(self.table)

    def repo(self, **options) -> HubRepo:
        return HubRepo(
            REPO_ID,
            token=self.server.token,
            endpoint=self.server.endpoint,
            options=dataclasses.replace(self.spec.hub, **options),
            backoff=FAST,
        )

    def publish(self, **options) -> PublishResult:
        return publish_shards(self.spec.name, self.table, self.plan, self.files, self.repo(**options))

    def data_commits(self, revision: str = "main") -> list:
        """Commits after the repo's initial ``.gitattributes`` commit."""
        return self.server.commits(REPO_ID, revision)[1:]

    def assert_complete(self, revision: str = "main") -> None:
        """The remote holds exactly the shards (byte-equal, in order) and the card."""
        remote = self.server.files(REPO_ID, revision)
        n = len(self.files)
        expected = {
            f"data/train-{i:05d}-of-{n:05d}.parquet": self.files[k] for i, k in enumerate(sorted(self.files))
        }
        assert sorted(p for p in remote if p.startswith("data/")) == sorted(expected)
        for name, path in expected.items():
            assert sha256(remote[name]) == sha256(path.read_bytes()), name
        assert "README.md" in remote and b"configs:" in remote["README.md"]


def stored_publication(storage: Path) -> tuple[list[Path], list[Path]]:
    """The demo's stored data shards and their preview files (the ``preview`` config), in shard order."""
    shards = sorted((storage / "demo" / "hub_shards").glob("*.parquet"))
    return shards, [preview_file(p) for p in shards]


def total_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def hub_spec(demo_spec: DatasetSpec, **hub) -> DatasetSpec:
    return demo_spec.with_overrides(
        destination=DEST, num_shards=4, hub=HubOptions(files_per_commit=2, **hub).to_mapping()
    )


def failed_prepare_message(spec: DatasetSpec, storage: Path) -> str:
    """Run the prepare job, which must fail; the message of its failed step."""
    with memory_instance() as instance:
        defs = build_definitions([spec], storage_dir=str(storage))
        result = defs.resolve_job_def(job_names(spec).prepare).execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not result.success
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message


@pytest.fixture(scope="module")
def built_shards(tmp_path_factory) -> tuple[DatasetSpec, Path, list[str]]:
    """The demo's shards, built through Dagster once per module: ``built`` hands each test a copy.

    The prepare step checks the destination, so the build talks to a Hub test server of its own.
    """
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    root = tmp_path_factory.mktemp("hub-built")
    spec = hub_spec(load_spec(write_demo(root / "demo")))
    storage = root / "storage"
    (root / "server").mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch, HubServer(root / "server") as server:
        isolate_home(monkeypatch, root / "home")
        use_hub_server(server, monkeypatch, root / "hf-home")
        try:
            with memory_instance() as instance:
                defs = build_definitions([spec], storage_dir=str(storage))
                jobs = job_names(spec)
                assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
                keys = instance.get_dynamic_partitions(names(spec).shard_partitions)
                for key in keys:
                    job = defs.resolve_job_def(jobs.shards)
                    assert job.execute_in_process(instance=instance, partition_key=key).success
        finally:
            HfFileSystem.clear_instance_cache()
            close_session()
    return spec, storage, keys


@pytest.fixture
def built(hub_server, built_shards, tmp_path) -> Built:
    spec, template, keys = built_shards
    storage = tmp_path / "storage"
    shutil.copytree(template, storage)
    files = {k: storage / "demo" / "hub_shards" / f"{k}.parquet" for k in keys}
    built = Built(spec, files, storage, hub_server)
    built.repo().ensure_repo()  # what the prepare step did to this test's server: the repo exists
    return built


# -- through Dagster ------------------------------------------------------------------------


def test_dagster_publishes_to_the_hub_and_load_dataset_reads_it_back(hub_server, demo_spec, tmp_path):
    spec = hub_spec(demo_spec, verify_download=True)
    with memory_instance() as instance:
        materialize_all(spec, tmp_path / "storage", instance)
        event = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert meta["destination"] == f"{hub_server.endpoint}/datasets/{REPO_ID}"
    shards, previews = stored_publication(tmp_path / "storage")
    n = spec.num_shards
    assert len(shards) == len(previews) == n
    files = 2 * n + 1  # n data files, their n preview files, preview.png
    assert meta["files_written"] == files + 1 and meta["files_skipped"] == 0  # + the card
    # the widened manifest, the files 2 a commit (files_per_commit), then the card and final manifest
    # (a commit of their own: the last batch has no room for both)
    commits = 1 + math.ceil(files / 2) + 1
    assert meta["num_commits"] == commits
    assert meta["commits"].count(f"{hub_server.endpoint}/datasets/{REPO_ID}/commit/") == commits
    assert meta["verification"].startswith("OK: 4/4 rows, 12 files")
    png = hub_server.files(REPO_ID)["preview.png"]
    sent = total_bytes(shards) + total_bytes(previews) + len(png)
    assert meta["bytes_written"] == sent
    assert sum(size for _, size in hub_server.lfs_uploads()) == sent
    assert len(hub_server.lfs_uploads()) == files  # each file once (the card and manifest are not LFS)

    # a fresh datasets cache reads every row with the NIfTI bytes of the source files
    ds = load_dataset(REPO_ID, split="train", cache_dir=str(tmp_path / "fresh-cache"))
    assert ds.features["t1w"] == Nifti() and ds.features["bold"] == List(Nifti())
    ds = ds.cast_column("t1w", Nifti(decode=False)).cast_column("bold", List(Nifti(decode=False)))
    rows = list(ds)
    assert len(rows) == 4
    root = spec.bids_root
    sources = {p.name: p for p in root.rglob("*.nii*")}
    for row in rows:
        assert row["t1w"]["bytes"] == sources[row["t1w"]["path"]].read_bytes()
        for cell in row["bold"]:
            assert cell["bytes"] == sources[cell["path"]].read_bytes()
    # and the preview config beside it, the same rows in the same order
    preview = load_dataset(REPO_ID, "preview", split="train", cache_dir=str(tmp_path / "fresh-cache"))
    assert preview["subject_id"] == [row["subject_id"] for row in rows]


def test_rerun_with_nothing_changed_makes_no_commit_and_sends_nothing(hub_server, demo_spec, tmp_path):
    spec = hub_spec(demo_spec)
    with memory_instance() as instance:
        materialize_all(spec, tmp_path / "storage", instance)
        commits = len(hub_server.commits(REPO_ID))
        puts = len(hub_server.lfs_uploads())
        defs = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
        assert defs.resolve_job_def(job_names(spec).upload).execute_in_process(instance=instance).success
        event = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert len(hub_server.commits(REPO_ID)) == commits
    assert len(hub_server.lfs_uploads()) == puts
    # every data file, preview file and preview.png already there (the card is not counted)
    assert meta["files_written"] == 0 and meta["files_skipped"] == 2 * spec.num_shards + 1
    assert meta["bytes_written"] == 0
    assert meta["num_commits"] == 0 and "no commit" in meta["commits"]


def test_per_shard_upload_sends_bytes_while_shards_build(hub_server, demo_spec, tmp_path):
    spec = hub_spec(demo_spec, upload_shards=True)
    with memory_instance() as instance:
        defs = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
        jobs = job_names(spec)
        assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
        keys = instance.get_dynamic_partitions(names(spec).shard_partitions)
        sent = 0
        for key in keys:
            result = defs.resolve_job_def(jobs.shards).execute_in_process(
                instance=instance, partition_key=key
            )
            assert result.success
            meta = result.get_asset_materialization_events()[0].materialization.metadata
            sent += meta["hub_bytes_sent"].value
            assert meta["file_bytes"].value == meta["hub_bytes_sent"].value
        assert (
            len(hub_server.lfs_uploads()) == 4 and len(hub_server.commits(REPO_ID)) == 1
        )  # bytes, no commit
        shards, previews = stored_publication(tmp_path / "storage")
        assert sent == total_bytes(shards)  # only the data shards go ahead, not their previews
        # the upload commits them without sending any shard byte again: it sends only what was not
        # pre-uploaded, the preview files and preview.png
        assert defs.resolve_job_def(jobs.upload).execute_in_process(instance=instance).success
        event = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        png = hub_server.files(REPO_ID)["preview.png"]
        assert event.asset_materialization.metadata["bytes_written"].value == total_bytes(previews) + len(png)
        uploads = hub_server.lfs_uploads()
        assert len(uploads) == 4 + len(previews) + 1
        assert Counter(oid for oid, _ in uploads[4:]) == Counter(
            [sha256(p.read_bytes()) for p in previews] + [sha256(png)]
        )
        # a backfill of one shard, rebuilt identical, sends nothing either
        assert (
            defs.resolve_job_def(jobs.shards)
            .execute_in_process(instance=instance, partition_key=keys[1])
            .success
        )
        assert hub_server.lfs_uploads() == uploads
    assert sent == sum(size for _, size in uploads[:4])


def test_the_token_never_appears_in_logs_output_or_metadata(hub_server, demo_spec, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    spec = hub_spec(demo_spec)
    token = hub_server.token
    with memory_instance() as instance:
        materialize_all(spec, tmp_path / "storage", instance)
        # a shard went missing remotely: the rerun must commit, meets one retried fault, then a refusal
        HfApi().delete_file("data/train-00000-of-00004.parquet", REPO_ID, repo_type="dataset")
        hub_server.inject("POST", COMMIT, status=500)
        hub_server.inject("POST", COMMIT, status=401)
        spec2 = spec.with_overrides(hub={"commit_message": "second"})
        defs = build_definitions([spec2], storage_dir=str(tmp_path / "storage"))
        assert (
            not defs.resolve_job_def(job_names(spec2).upload)
            .execute_in_process(instance=instance, raise_on_error=False)
            .success
        )
        records = instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.STEP_FAILURE))
        assert records and "Set HF_TOKEN" in str(records[-1].event_log_entry)
        first = capfd.readouterr()
        assert "retrying in" in caplog.text + first.err  # the retry was logged (and the token not)
        everything = [str(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        everything += [str(run.run_config) for run in instance.get_runs()]
    captured = capfd.readouterr()
    everything += [first.out, first.err, captured.out, captured.err, caplog.text]
    assert all(token not in text for text in everything)


def test_a_bad_token_fails_before_any_shard_is_built_and_says_what_to_do(
    hub_server, demo_spec, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    message = failed_prepare_message(hub_spec(demo_spec), tmp_path / "storage")
    assert "HTTP 401" in message and "Set HF_TOKEN" in message
    assert "hf_wrong" not in message
    # refused at the first request (reading the repo's visibility for the privacy gate), nothing after it
    assert [r.status for r in hub_server.requests] == [401]
    assert not any(r.path == "/api/repos/create" for r in hub_server.requests)  # no repo was created


# -- the core publisher, under faults --------------------------------------------------------


def test_batches_respect_the_file_limit_and_the_card_comes_last(built):
    result = built.publish(files_per_commit=3)
    commits = built.data_commits()
    # the manifest widened to the new files first, then 3 shards, then 1 shard + card (+ final manifest)
    assert [len(c.added) for c in commits] == [1, 3, 2]
    assert list(commits[0].added) == [MANIFEST_NAME] and "README.md" in commits[-1].added
    assert all("README.md" not in c.added for c in commits[:-1])
    assert len(result.commit_urls) == 3 and result.files_skipped == []
    built.assert_complete()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(dict(method="POST", path_pattern=COMMIT, status=429, retry_after=0.05), id="commit-429"),
        pytest.param(dict(method="POST", path_pattern=COMMIT, status=500, times=2), id="commit-500"),
        pytest.param(dict(method="POST", path_pattern=COMMIT, drop=True), id="commit-dropped"),
        pytest.param(
            dict(method="POST", path_pattern=COMMIT, drop_after_body=True, skip=1),
            id="commit-applied-unanswered",
        ),
        pytest.param(dict(method="POST", path_pattern=COMMIT, status=412), id="commit-412"),
        pytest.param(dict(method="POST", path_pattern=COMMIT, status=409, skip=1), id="commit-409"),
        pytest.param(dict(method="GET", path_pattern=r"/revision/", status=503), id="revision-503"),
        pytest.param(dict(method="GET", path_pattern=r"/tree/", status=500), id="tree-500"),
        pytest.param(
            dict(method="POST", path_pattern=r"/preupload/", status=429, retry_after=0.05), id="preupload-429"
        ),
        pytest.param(
            dict(method="PUT", path_pattern=LFS_PUT, drop=True, skip=1), id="lfs-put-dropped-mid-body"
        ),
    ],
)
def test_transient_faults_and_conflicts_are_retried_to_a_complete_repo(built, fault):
    injected = built.server.inject(**fault)
    result = built.publish()
    assert injected.fired >= 1
    built.assert_complete()
    commits = built.data_commits()
    assert len(commits) == 4  # never a duplicate commit: manifest, 2 + 2 shards, then the card
    added = [p for c in commits for p in c.added]
    assert len(added) == len(set(added)) == 6
    assert len(result.files_written) == 5
    # every LFS object arrived exactly once (a retried PUT re-sends only the interrupted file)
    oids = Counter(oid for oid, _ in built.server.lfs_uploads())
    assert oids == Counter(sha256(p.read_bytes()) for p in built.files.values())


def test_a_concurrent_writer_is_detected_and_its_file_kept(built):
    """Another client commits between two batches: the next commit gets 412, re-reads the head, retries."""
    api = HfApi(endpoint=built.server.endpoint, token=built.server.token)
    repo = built.repo()
    original = api.create_commit

    def commit_then_someone_else_writes(*args, **kwargs):
        info = original(*args, **kwargs)
        if len(built.data_commits()) == 1:
            api.upload_file(
                path_or_fileobj=b"notes", path_in_repo="NOTES.md", repo_id=REPO_ID, repo_type="dataset"
            )
        return info

    repo.api.create_commit = commit_then_someone_else_writes
    publish_shards(built.spec.name, built.table, built.plan, built.files, repo)
    statuses = [r.status for r in built.server.requests if r.method == "POST" and "/commit/" in r.path]
    assert 412 in statuses
    built.assert_complete()
    assert built.server.files(REPO_ID)["NOTES.md"] == b"notes"


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (401, "Set HF_TOKEN"),
        (403, "write access"),
        (404, "was not found"),
    ],
)
def test_permanent_faults_fail_at_once_with_what_to_do(built, status, advice):
    fault = built.server.inject("POST", COMMIT, status=status, times=100)
    with pytest.raises(HubAccessError, match=advice) as info:
        built.publish()
    assert f"HTTP {status}" in str(info.value)
    assert built.server.token not in str(info.value)
    assert fault.fired == 1  # not retried


def test_transient_faults_that_never_stop_give_up_with_a_rerun_hint(built):
    fault = built.server.inject("POST", COMMIT, status=503, times=100)
    with pytest.raises(HubTransientError, match="Run again"):
        built.publish()
    assert fault.fired == FAST.attempts


def test_resume_after_a_failure_sends_only_what_is_missing(built):
    n, k = 4, 2
    # the upload dies after k shards: the Hub refuses the (k+1)th file's LFS batch request
    built.server.inject("POST", r"/info/lfs/objects/batch$", status=403, skip=k, times=100)
    with pytest.raises(HubAccessError):
        built.publish(files_per_commit=1)
    assert len(built.data_commits()) == k + 1  # the widened manifest, then k shards
    sent_before = len(built.server.lfs_uploads())
    assert sent_before == k
    built.server.clear_faults()

    result = built.publish(files_per_commit=1)
    assert len(built.server.lfs_uploads()) - sent_before == n - k  # only the missing shards
    assert len(result.files_skipped) == k and len(result.files_written) == n - k + 1
    built.assert_complete()
    total = len(built.data_commits())

    again = built.publish(files_per_commit=1)  # nothing changed: no commit, nothing sent
    assert again.commit_urls == [] and len(built.data_commits()) == total
    assert len(built.server.lfs_uploads()) == n


def test_a_smaller_plan_deletes_the_old_shards_in_the_final_commit(built):
    built.publish()
    three = [built.files[k] for k in sorted(built.files)[:3]]  # stand-ins for a 3-shard plan's files
    card = render_card(card_facts("demo", built.table, [shard_file_stats(p) for p in three], REPO_ID))
    before = len(built.data_commits())
    result = built.repo().publish(three, card)
    commits = built.data_commits()[before:]
    # the widened manifest; 3 new names, 4 old ones, the card and the final manifest, 2 files a
    # commit: additions first, the card last
    assert [(len(c.added), len(c.deleted)) for c in commits] == [
        (1, 0),
        (2, 0),
        (1, 1),
        (0, 2),
        (0, 1),
        (2, 0),
    ]
    assert "README.md" in commits[-1].added
    deleted = [p for c in commits for p in c.deleted]
    assert sorted(deleted) == [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)]
    remote = built.server.files(REPO_ID)
    assert sorted(p for p in remote if p.startswith("data/")) == [
        f"data/train-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    assert sorted(result.files_removed) == sorted(deleted)


def test_a_branch_and_a_pull_request_leave_main_alone(built, tmp_path):
    built.publish(revision="dev")
    assert (
        built.server.commits(REPO_ID)[-1].title == "initial commit" or len(built.server.commits(REPO_ID)) == 1
    )
    built.assert_complete("dev")
    repo = built.repo(revision="dev")
    assert repo.verify(built.table).ok

    result = built.publish(create_pr=True, commit_message="Publish demo for review")
    assert result.pr_url and "/discussions/" in result.pr_url
    assert len(built.server.commits(REPO_ID)) == 1  # main untouched
    pr_ref = next(ref for ref in built.server.refs(REPO_ID) if ref.startswith("refs/pr/"))
    built.assert_complete(pr_ref)
    assert all(c.title == "Publish demo for review" for c in built.data_commits(pr_ref))


@pytest.mark.parametrize(
    ("adds", "deletes", "expected"),
    [
        (1, 0, [(1, 0, True)]),
        (49, 0, [(49, 0, True)]),
        (50, 0, [(50, 0, False), (0, 0, True)]),
        (51, 0, [(50, 0, False), (1, 0, True)]),
        (900, 0, [(50, 0, False)] * 18 + [(0, 0, True)]),  # 900 shards: 19 commits, none over 50 files
        (3, 900, [(3, 47, False)] + [(0, 50, False)] * 17 + [(0, 3, True)]),  # a plan shrank: old names go
        (0, 0, [(0, 0, True)]),  # only the card changed
    ],
)
def test_commits_hold_at_most_the_limit_deletions_after_additions_card_last(adds, deletes, expected):
    names = [f"data/train-{i:05d}-of-{adds:05d}.parquet" for i in range(adds)]
    old = [f"data/train-{i:05d}-of-99999.parquet" for i in range(deletes)]
    batches = plan_batches(names, old, b"card", 50)
    assert [(len(b.adds), len(b.deletes), b.card is not None) for b in batches] == expected
    assert all(len(b.adds) + len(b.deletes) + (b.card is not None) <= 50 for b in batches)
    assert [n for b in batches for n in b.adds] == names and [p for b in batches for p in b.deletes] == old
    first_delete = next((k for k, b in enumerate(batches) if b.deletes), len(batches))
    assert not any(b.adds for b in batches[first_delete + 1 :])  # nothing is deleted before all files are in


def test_nothing_to_change_plans_no_commit():
    assert plan_batches([], [], None, 50) == []


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RuntimeError("Data processing error: CAS service error : Reqwest Error"), "transient"),  # Xet
        (ConnectionResetError(), "transient"),
        (TypeError("a bug"), "permanent"),
        (ValueError("LFS batch API returned errors"), "permanent"),
    ],
)
def test_errors_without_an_http_status_are_classified(exc, kind):
    assert classify(exc)[0] == kind


def http_error(status: int, url: str, headers: dict | None = None):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(status, headers=headers or {}, request=httpx2.Request("PUT", url))
    return HfHubHTTPError(f"{status} error for url: {url}", response=response)


def test_a_storage_refusal_is_retried_but_an_api_refusal_is_not():
    expired = http_error(403, "https://storage.example/bucket/obj?X-Amz-Signature=secret")
    try:
        raise RuntimeError("Error while uploading 'data/x.parquet' to the Hub.") from expired
    except RuntimeError as wrapped:
        assert classify(wrapped)[0] == "transient"
    assert classify(http_error(403, "https://huggingface.co/api/datasets/o/n/commit/main"))[0] == "permanent"
    assert "secret" not in short_error(expired) and "https://storage.example/bucket/obj" in short_error(
        expired
    )


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("later", None), (None, None)],
)
def test_retry_after_is_read_in_seconds_or_as_a_date_and_never_crashes(header, seconds):
    headers = {"Retry-After": header} if header is not None else {}
    assert classify(http_error(429, "http://h/x", headers)) == ("transient", seconds)


def test_a_read_only_token_fails_the_index_step_with_what_to_do(hub_server, demo_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    message = failed_prepare_message(hub_spec(demo_spec), tmp_path / "storage")
    assert "read-only" in message and "write role" in message


def test_a_lost_answer_to_the_commit_that_opens_a_pull_request_opens_only_one(built):
    fault = built.server.inject("POST", COMMIT, drop_after_body=True)  # applied, but the client never hears
    result = built.publish(create_pr=True, files_per_commit=50)
    assert fault.fired == 1
    prs = [ref for ref in built.server.refs(REPO_ID) if ref.startswith("refs/pr/")]
    assert prs == ["refs/pr/1"] and result.pr_url.endswith("/discussions/1")
    built.assert_complete("refs/pr/1")
    assert len(built.server.commits(REPO_ID)) == 1  # main untouched


def test_a_conflict_on_an_unmoved_head_waits_before_retrying(built):
    waits: list[float] = []
    repo = built.repo()
    repo._sleep = waits.append
    built.server.inject("POST", COMMIT, status=409, times=2)
    publish_shards(built.spec.name, built.table, built.plan, built.files, repo)
    assert len(waits) == 2 and all(w > 0 for w in waits)
    built.assert_complete()


def test_a_visibility_that_differs_from_private_is_reported(built):
    messages: list[str] = []
    HfApi().create_repo(REPO_ID, repo_type="dataset", private=False, exist_ok=True)
    repo = built.repo(private=True)
    repo._progress = messages.append
    publish_shards(built.spec.name, built.table, built.plan, built.files, repo)
    assert any("is public, but hub.private is True" in m for m in messages)


def test_the_default_verification_compares_published_files_and_catches_a_replaced_one(built):
    repo = built.repo()
    result = publish_shards(built.spec.name, built.table, built.plan, built.files, repo)
    report = repo.verify_quick(result.shard_files, result.card, built.table)
    assert report.ok and report.summary().startswith("OK: 4/4 rows, 5 published files")

    HfApi().upload_file(
        path_or_fileobj=b"not a shard", path_in_repo="data/train-00001-of-00004.parquet", repo_id=REPO_ID,
        repo_type="dataset",
    )  # fmt: skip
    later = built.repo()
    later.published_head = built.server.head(REPO_ID)
    report = later.verify_quick(result.shard_files, result.card, built.table)
    assert not report.ok and "data/train-00001-of-00004.parquet differs" in report.summary()


def test_a_failed_pre_upload_does_not_fail_the_shard(hub_server, demo_spec, tmp_path):
    spec = hub_spec(demo_spec, upload_shards=True)
    with memory_instance() as instance:
        defs = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
        jobs = job_names(spec)
        assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
        hub_server.inject("POST", r"/info/lfs/objects/batch$", status=403, times=100)
        result = defs.resolve_job_def(jobs.shards).execute_in_process(
            instance=instance, partition_key="shard-00000"
        )
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert meta["hub_bytes_sent"].value == 0
        hub_server.clear_faults()
        for key in ("shard-00001", "shard-00002", "shard-00003"):
            assert (
                defs.resolve_job_def(jobs.shards)
                .execute_in_process(instance=instance, partition_key=key)
                .success
            )
        assert defs.resolve_job_def(jobs.upload).execute_in_process(instance=instance).success
    shards, previews = stored_publication(tmp_path / "storage")
    uploaded = Counter(oid for oid, _ in hub_server.lfs_uploads())
    # every shard went up once, the refused one with the upload; so did each preview file and preview.png
    assert all(uploaded[sha256(p.read_bytes())] == 1 for p in shards)
    assert all(uploaded[sha256(p.read_bytes())] == 1 for p in previews)
    assert sum(uploaded.values()) == len(shards) + len(previews) + 1


# -- the manifest: only what the tool wrote is deleted ---------------------------------------


def test_the_manifest_is_committed_with_the_card_and_lists_what_was_published(built):
    built.publish()
    remote = built.server.files(REPO_ID)
    manifest = Manifest.parse(remote[MANIFEST_NAME], MANIFEST_NAME)
    assert manifest.files == {p for p in remote if p.startswith("data/")} | {"README.md"}


def test_a_foreign_file_under_data_is_refused_and_kept(built):
    HfApi().upload_file(
        path_or_fileobj=b"theirs", path_in_repo="data/extra.csv", repo_id=REPO_ID, repo_type="dataset"
    )
    with pytest.raises(DestinationError, match=r"did not write: data/extra\.csv"):
        built.repo().check()
    commits = len(built.data_commits())
    with pytest.raises(DestinationError, match="data/extra.csv"):
        built.publish()
    assert len(built.data_commits()) == commits and built.server.files(REPO_ID)["data/extra.csv"] == b"theirs"


def test_a_repo_published_before_manifests_is_adopted_and_its_old_shards_replaced(built):
    built.publish()
    HfApi().delete_file(MANIFEST_NAME, repo_id=REPO_ID, repo_type="dataset")  # as an older version left it
    three = [built.files[k] for k in sorted(built.files)[:3]]
    card = render_card(card_facts("demo", built.table, [shard_file_stats(p) for p in three], REPO_ID))
    result = built.repo().publish(three, card)
    assert sorted(result.files_removed) == [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)]
    assert MANIFEST_NAME in built.server.files(REPO_ID)


def test_without_a_manifest_or_the_tools_mark_nothing_is_deleted(built):
    built.publish()
    api = HfApi()
    api.delete_file(MANIFEST_NAME, repo_id=REPO_ID, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"# our own card\n", path_in_repo="README.md", repo_id=REPO_ID, repo_type="dataset"
    )
    with pytest.raises(DestinationError, match="did not write"):
        built.publish()  # the old shards are not the tool's any more: refused, not deleted
    assert len([p for p in built.server.files(REPO_ID) if p.startswith("data/")]) == 4


def test_a_readme_of_someone_else_in_the_repo_is_refused_and_kept(built):
    HfApi().upload_file(
        path_or_fileobj=b"# My hand-written card\n",
        path_in_repo="README.md",
        repo_id=REPO_ID,
        repo_type="dataset",
    )
    with pytest.raises(DestinationError, match=r"did not write: README\.md"):
        built.publish()
    assert built.server.files(REPO_ID)["README.md"] == b"# My hand-written card\n"


def test_a_manifest_naming_a_file_the_tool_never_writes_is_refused(built):
    api = HfApi()
    api.upload_file(
        path_or_fileobj=b"labels", path_in_repo="data/labels.csv", repo_id=REPO_ID, repo_type="dataset"
    )
    api.upload_file(
        path_or_fileobj=b'{"tool": "bids_hub_dagster", "format": 1, "files": ["data/labels.csv"]}',
        path_in_repo=MANIFEST_NAME,
        repo_id=REPO_ID,
        repo_type="dataset",
    )
    with pytest.raises(DestinationError, match="never writes"):
        built.publish()
    assert built.server.files(REPO_ID)["data/labels.csv"] == b"labels"


def test_a_card_edited_on_the_hub_after_publishing_is_kept(built):
    built.publish()
    card = built.server.files(REPO_ID)["README.md"] + b"\n## Acknowledgements\n"
    HfApi().upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=REPO_ID, repo_type="dataset")
    with pytest.raises(DestinationError, match=r"did not write: README\.md"):
        built.publish()
    assert built.server.files(REPO_ID)["README.md"] == card
