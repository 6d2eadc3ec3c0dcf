"""The `cluster` instance (deploy/cluster/dagster.yaml) on real servers: PostgreSQL, Redis, an S3 server
(moto) for compute logs, two ``dagster-celery`` workers, the daemon and the webserver.

- PostgreSQL: ``bids-hub-dagster publish`` (a ranged shard run, shards in threads) on an instance whose
  storage is the real server; the run records are read back with psycopg2, the dataset with
  ``datasets.load_dataset``.
- Celery: a backfill over GraphQL, as the UI launches it, whose shard runs land on both workers, then
  the upload; the published files are byte for byte those of a local publish of the same tree.
- ``defs.launch``: runs submitted from Python as the CLI does on a cluster, followed to their end.

The servers come from Debian's ``postgresql`` and ``redis-server``; without them the tests skip with the
reason, unless ``BIDS_HUB_REQUIRE_SERVICES=1`` (as in CI), which makes them fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml
from datasets import Nifti, load_dataset

from bids_hub_dagster.defs import build_definitions, job_names
from bids_hub_dagster.defs.launch import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    in_process_run_config,
    launch_job,
    partition_tags,
    uses_remote_launcher,
)
from bids_hub_dagster.demo import write_demo
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster.testing.dagster_servers import LOCATION, REPOSITORY, DagsterServers, dagster_servers
from bids_hub_dagster.testing.services import (
    Postgres,
    Redis,
    S3Server,
    ServiceUnavailable,
    celery_workers,
    moto_s3_server,
    postgres_server,
    redis_server,
    require_services,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]
# the Celery tests share one cluster (a module fixture): one xdist worker runs them (scripts/test.sh:
# --dist loadgroup)
on_cluster = pytest.mark.xdist_group("celery_cluster")

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "deploy" / "cluster" / "dagster.yaml"
CELERY_YAML = REPO / "deploy" / "cluster" / "celery.yaml"
CLI = Path(sys.executable).with_name("bids-hub-dagster")
NUM_SHARDS = 4  # the demo's 4 rows, one per shard
SHARDS = [f"shard-{i:05d}" for i in range(NUM_SHARDS)]
SHARDS_KEY = ["demo", "hub_shards"]
UPLOAD_KEY = ["demo", "hub_upload"]
BACKFILL_TICK = 3  # seconds between backfill daemon ticks (see dagster_servers)
TIMEOUT = 180  # seconds for one run or one backfill
TASK_ID_TAG = "dagster-celery/task_id"
LOG_PREFIX = "compute-logs"


@contextmanager
def services_or_skip() -> Iterator[ExitStack]:
    """An ExitStack for the servers; a missing server program skips the test (fails it in CI)."""
    with ExitStack() as stack:
        try:
            yield stack
        except ServiceUnavailable as exc:
            if require_services():
                pytest.fail(f"{exc} (BIDS_HUB_REQUIRE_SERVICES=1)")
            pytest.skip(str(exc))


def cluster_env(pg: Postgres, s3: S3Server, redis: Redis | None = None) -> dict[str, str]:
    """The variables deploy/cluster/dagster.yaml reads, for these servers."""
    env = {
        **pg.env,
        **s3.env,
        "DAGSTER_COMPUTE_LOG_BUCKET": s3.bucket,
        "DAGSTER_COMPUTE_LOG_PREFIX": LOG_PREFIX,
        "DAGSTER_S3_ENDPOINT_URL": s3.endpoint_url,
    }
    if redis is not None:
        env |= {"DAGSTER_CELERY_BROKER_URL": redis.url(0), "DAGSTER_CELERY_BACKEND_URL": redis.url(1)}
    return env


def render_instance(dest: Path, *, celery: bool, max_concurrent_runs: int) -> Path:
    """deploy/cluster/dagster.yaml as shipped; without ``celery`` the local run launcher instead of Celery."""
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    if not celery:
        del config["run_launcher"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def demo_spec(folder: Path, destination: Path) -> Path:
    """The demo tree in 4 one-row shards, published to ``destination``; the spec file's path."""
    spec = load_spec(write_demo(folder / "demo")).with_overrides(
        destination=str(destination), num_shards=NUM_SHARDS
    )
    path = folder / "demo.yaml"
    path.write_text(spec.to_yaml())
    return path


def pg_rows(pg: Postgres, query: str) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(**pg.params, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def s3_keys(s3: S3Server, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def sha256s(folder: Path) -> dict[str, str]:
    """sha256 of every published file (data, preview, card) by relative path; the card's mentions of its
    own folder (its `load_dataset` examples) are written DEST."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        data = path.read_bytes()
        if path.name == "README.md":
            data = data.replace(str(folder).encode(), b"DEST")
        digests[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return digests


def assert_same_as_a_local_publish(cluster, tmp_path: Path, monkeypatch, capsys) -> None:
    """The cluster's publication is byte for byte what a local publish of the same spec gives (a local
    instance and storage, in this process)."""
    from bids_hub_dagster_tests.conftest import run_cli

    local = tmp_path / "local"
    monkeypatch.setenv("BIDS_HUB_STORAGE", str(tmp_path / "local-storage"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "local-home"))
    code, out = run_cli(
        monkeypatch, capsys, "publish", "--spec", str(cluster.spec_path), "--to", str(local), "--no-progress"
    )
    assert code == 0, out
    assert sha256s(cluster.destination) == sha256s(local)


def assert_dataset(destination: Path, spec_path: Path) -> None:
    """The published data files load as parquet with one row per session, NIfTI bytes as in the tree."""
    files = sorted(str(p) for p in destination.glob("data/train-*.parquet"))
    assert len(files) == NUM_SHARDS, files
    ds = load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == NUM_SHARDS
    spec: DatasetSpec = load_spec(spec_path)
    sources = {p.name: p.read_bytes() for p in spec.bids_root.rglob("*_T1w.nii*")}
    cells = ds.cast_column("t1w", Nifti(decode=False))["t1w"]
    assert sorted(Path(c["path"]).name for c in cells) == sorted(sources)
    for cell in cells:
        assert cell["bytes"] == sources[Path(cell["path"]).name], cell["path"]


# --- PostgreSQL ---------------------------------------------------------------------------------------


def test_publish_on_postgres_instance(tmp_path: Path) -> None:
    """``bids-hub-dagster publish`` on the cluster instance with the local launcher: prepare, the 4 shards
    (one ranged run, 3 threads writing their events at once) and the upload, stored in real PostgreSQL."""
    with services_or_skip() as stack:
        pg = stack.enter_context(postgres_server(tmp_path / "pg"))
        s3 = stack.enter_context(moto_s3_server())
        home = tmp_path / "dagster_home"
        render_instance(home / "dagster.yaml", celery=False, max_concurrent_runs=2)
        destination = tmp_path / "published"
        spec_path = demo_spec(tmp_path, destination)
        env = {
            **os.environ,
            **cluster_env(pg, s3),
            "DAGSTER_HOME": str(home),
            "BIDS_HUB_STORAGE": str(tmp_path / "storage"),
        }
        started = time.monotonic()
        done = subprocess.run(
            [str(CLI), "publish", "--spec", str(spec_path), "--workers", "3", "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, (
            f"{done.stdout}\n{done.stderr}\n{pg.log.read_text() if pg.log.is_file() else ''}"
        )
        assert f"published demo to {destination}" in done.stdout, done.stdout

        # the runs are PostgreSQL rows
        runs = pg_rows(pg, "SELECT pipeline_name, status, run_body FROM runs ORDER BY create_timestamp")
        assert [(job, status) for job, status, _ in runs] == [
            ("demo_prepare", "SUCCESS"),
            ("demo_shards", "SUCCESS"),
            ("demo_upload", "SUCCESS"),
        ], runs
        tags = pg_rows(pg, "SELECT key, value FROM run_tags WHERE key LIKE 'dagster/asset_partition_range%'")
        assert sorted(tags) == [(RANGE_END_TAG, SHARDS[-1]), (RANGE_START_TAG, SHARDS[0])], tags
        # each shard partition has its own materialization event
        materialized = pg_rows(
            pg,
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE '%hub_shards%' ORDER BY partition",
        )
        assert [p for (p,) in materialized] == SHARDS
        partitions = pg_rows(pg, "SELECT partition FROM dynamic_partitions ORDER BY partition")
        assert [p for (p,) in partitions] == SHARDS
        # the hub_commits pool's slot is a PostgreSQL row, free again
        slots = pg_rows(pg, "SELECT concurrency_key, run_id FROM concurrency_slots")
        assert ("hub_commits", None) in slots, slots
        assert_dataset(destination, spec_path)
        print(f"publish on PostgreSQL: {took:.1f} s")


# --- Celery ---------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    pg: Postgres
    redis: Redis
    s3: S3Server
    servers: DagsterServers
    worker_logs: dict[str, Path]
    spec_path: Path
    destination: Path
    env: dict[str, str]
    run_config: dict

    def worker_of(self, task_id: str) -> str | None:
        """The worker (worker1, worker2) whose log says it received the Celery task ``task_id``."""
        found = [
            name
            for name, log in self.worker_logs.items()
            if re.search(
                rf"Task execute_job\[{re.escape(task_id)}\] received", log.read_text(errors="replace")
            )
        ]
        assert len(found) <= 1, (task_id, found)
        return found[0] if found else None

    def failures(self) -> str:
        """What the runs' failed steps and asset checks said (worker logs hold the whole runs)."""
        lines = []
        for log in self.worker_logs.values():
            for line in log.read_text(errors="replace").splitlines():
                if (
                    " - STEP_FAILURE - " in line
                    or "did not pass" in line
                    or line.startswith("dagster._core.errors")
                ):
                    lines.append(line)
        return "\n".join(lines[-40:])

    def report(self) -> str:
        tails = "\n".join(
            f"--- {n} ---\n{p.read_text(errors='replace')[-3000:]}" for n, p in self.worker_logs.items()
        )
        return f"{self.servers.log_tail()}\n{tails}"


def cluster_storage(tmp: Path, s3: S3Server) -> str:
    """BIDS_HUB_STORAGE of the CLI, the daemon and the workers: a prefix on the S3 server (moto), as on a
    cluster; ``BIDS_HUB_TEST_CLUSTER_STORAGE=local`` gives a shared folder instead (one machine here)."""
    if os.environ.get("BIDS_HUB_TEST_CLUSTER_STORAGE") == "local":
        return str(tmp / "storage")
    return f"s3://{s3.bucket}/storage"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """PostgreSQL, Redis, moto, webserver + daemon and two Celery workers (one run at a time each)."""
    tmp = tmp_path_factory.mktemp("cluster")
    with services_or_skip() as stack:
        pg = stack.enter_context(postgres_server(tmp / "pg"))
        redis = stack.enter_context(redis_server(tmp / "redis"))
        s3 = stack.enter_context(moto_s3_server())
        destination = tmp / "published"
        spec_path = demo_spec(tmp, destination)
        env = {
            **cluster_env(pg, s3, redis),
            "BIDS_HUB_SPECS": str(spec_path),
            "BIDS_HUB_STORAGE": cluster_storage(tmp, s3),
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf"),
        }
        instance_yaml = render_instance(tmp / "cluster.yaml", celery=True, max_concurrent_runs=2)
        servers = stack.enter_context(
            dagster_servers(
                tmp / "servers", env, instance_yaml=instance_yaml, backfill_interval=BACKFILL_TICK
            )
        )
        env["DAGSTER_HOME"] = str(servers.home)
        workers = stack.enter_context(
            celery_workers(2, env, CELERY_YAML, tmp / "workers", broker=redis.url(0))
        )
        spec = load_spec(spec_path)
        executor = build_definitions([spec]).resolve_job_def(job_names(spec).shards).executor_def.name
        yield Cluster(
            pg, redis, s3, servers, workers.logs, spec_path, destination, env, in_process_run_config(executor)
        )


@pytest.fixture
def cluster_instance(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    """This process on the cluster's instance, as the CLI will be (same DAGSTER_HOME and variables)."""
    import dagster as dg

    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as instance:
        yield instance


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } ... on PythonError { stack }
  }
}"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message } ... on PythonError { stack }
  }
}"""

RUN = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { runId status tags { key value } } } }"

BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename ... on PartitionBackfill { status runs { runId status tags { key value } } }
  }
}"""


def _wait(cluster: Cluster, what: str, poll, done) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        cluster.servers.check_alive()
        answer = poll()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not done after {TIMEOUT} s: {answer}\n{cluster.report()}")
        time.sleep(1)


@on_cluster
def test_backfill_over_graphql_runs_on_both_workers(
    cluster: Cluster, tmp_path: Path, monkeypatch, capsys
) -> None:
    started = time.monotonic()
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": "demo_prepare"}
    data = cluster.servers.graphql(
        LAUNCH_RUN, {"params": {"selector": selector, "runConfigData": cluster.run_config}}
    )
    assert data["launchRun"]["__typename"] == "LaunchRunSuccess", data
    prepare = data["launchRun"]["run"]["runId"]
    run = _wait(
        cluster,
        f"prepare run {prepare}",
        lambda: cluster.servers.graphql(RUN, {"runId": prepare})["runOrError"],
        lambda r: r["status"] in {"SUCCESS", "FAILURE", "CANCELED"},
    )
    assert run["status"] == "SUCCESS", f"{run}\n{cluster.report()}"

    # the backfill the UI launches (Materialize selected → All partitions), every shard and the upload
    params = {
        "assetSelection": [{"path": SHARDS_KEY}, {"path": UPLOAD_KEY}],
        "allPartitions": True,
        "title": "cluster backfill",
        "runConfigData": cluster.run_config,
    }
    data = cluster.servers.graphql(LAUNCH_BACKFILL, {"params": params})
    assert data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", data
    backfill_id = data["launchPartitionBackfill"]["backfillId"]
    backfill = _wait(
        cluster,
        f"backfill {backfill_id}",
        lambda: cluster.servers.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"],
        lambda b: b["status"] not in {"REQUESTED", "CANCELING", "FAILING"},
    )
    took = time.monotonic() - started
    assert backfill["status"] == "COMPLETED_SUCCESS", f"{backfill}\n{cluster.report()}"
    runs = [{t["key"]: t["value"] for t in r["tags"]} | {"status": r["status"]} for r in backfill["runs"]]
    assert sorted(r.get("dagster/partition", "-") for r in runs) == ["-", *SHARDS], runs
    assert all(r["status"] == "SUCCESS" for r in runs), f"{runs}\n{cluster.failures()}\n{cluster.report()}"

    # every run was a Celery task; the shard runs were spread over both workers
    workers = {r.get("dagster/partition", "-"): cluster.worker_of(r[TASK_ID_TAG]) for r in runs}
    assert None not in workers.values(), f"{workers}\n{cluster.report()}"
    assert {workers[k] for k in SHARDS} == {"worker1", "worker2"}, workers
    statuses = dict(pg_rows(cluster.pg, "SELECT run_id, status FROM runs"))
    assert [statuses[r["runId"]] for r in backfill["runs"]] == ["SUCCESS"] * (NUM_SHARDS + 1), statuses
    # two shard runs at a time (max_concurrent_runs 2), one on each worker
    shard_ids = ", ".join(
        f"'{r['runId']}'" for r in backfill["runs"] if any(t["key"] == "dagster/partition" for t in r["tags"])
    )
    spans = sorted(
        pg_rows(cluster.pg, f"SELECT start_time, end_time FROM runs WHERE run_id IN ({shard_ids})")
    )
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), (
        f"no two shard runs overlap: {spans}"
    )
    # the compute logs of the workers' runs reached the S3 server
    assert s3_keys(cluster.s3, f"{LOG_PREFIX}/storage/"), "no compute log was uploaded"

    assert_dataset(cluster.destination, cluster.spec_path)
    assert_same_as_a_local_publish(cluster, tmp_path, monkeypatch, capsys)
    print(f"celery backfill (prepare, {NUM_SHARDS} shards, upload): {took:.1f} s; workers {workers}")


@on_cluster
def test_launch_from_python_on_celery(cluster: Cluster, cluster_instance) -> None:
    """defs.launch as the CLI uses it: submitted to the queue, launched by the daemon on a worker."""
    assert uses_remote_launcher(cluster_instance)
    spec = load_spec(cluster.spec_path)
    jobs = job_names(spec)
    seen: list[str] = []
    started = time.monotonic()
    prepare = launch_job(
        cluster_instance, jobs.prepare, timeout=TIMEOUT, on_change=lambda r: seen.append(r.status.value)
    )
    assert prepare.status.value == "SUCCESS", cluster.report()
    assert seen[0] == "QUEUED" and seen[-1] == "SUCCESS", seen
    shard = launch_job(
        cluster_instance,
        jobs.shards,
        timeout=TIMEOUT,
        partition_key=SHARDS[1],
        tags={"bids_hub/test": "launch"},
    )
    took = time.monotonic() - started
    assert shard.status.value == "SUCCESS", cluster.report()
    assert shard.tags["dagster/partition"] == SHARDS[1] and shard.tags["bids_hub/test"] == "launch"
    assert cluster.worker_of(shard.tags[TASK_ID_TAG]) in {"worker1", "worker2"}
    assert shard.run_config == cluster.run_config
    materialized = pg_rows(cluster.pg, f"SELECT status FROM runs WHERE run_id = '{shard.run_id}'")
    assert materialized == [("SUCCESS",)]
    assert partition_tags(partition_range=(SHARDS[0], SHARDS[2])) == {
        RANGE_START_TAG: SHARDS[0],
        RANGE_END_TAG: SHARDS[2],
    }
    print(f"launch_job prepare + one shard on Celery: {took:.1f} s")


class _Stop(KeyboardInterrupt):
    """Ctrl-C, raised from follow_run's status callback when the run reaches a given status."""


def _interrupt_at(status: str):
    def on_change(run) -> None:
        if run.status.value == status:
            raise _Stop()

    return on_change


@on_cluster
@pytest.mark.parametrize("status", ["QUEUED", "STARTED"])
def test_ctrl_c_while_following_a_celery_run_cancels_it(
    cluster: Cluster, cluster_instance, status: str
) -> None:
    """Ctrl-C while the CLI follows a run: a queued run is canceled, a running one terminated on its worker;
    either way it ends CANCELED within seconds and holds no slot."""
    spec = load_spec(cluster.spec_path)
    jobs = job_names(spec)
    started = time.monotonic()
    with pytest.raises(_Stop):
        launch_job(
            cluster_instance,
            jobs.prepare,
            timeout=TIMEOUT,
            poll_interval=0.2,
            on_change=_interrupt_at(status),
        )
    took = time.monotonic() - started
    runs = cluster_instance.get_runs(limit=1)
    assert runs[0].status.value == "CANCELED", (runs[0].status, cluster.report())
    assert took < 60, took
    print(f"Ctrl-C at {status}: canceled in {took:.1f} s")


@on_cluster
def test_cli_publish_submits_through_the_celery_launcher(
    cluster: Cluster, cluster_instance, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``bids-hub-dagster publish`` on the cluster's instance: its runs go through the run launcher (queued,
    then run on the Celery workers, shards on both), shards on S3; the result is byte for byte a local
    publish's."""
    from bids_hub_dagster_tests.conftest import run_cli

    before = {r.run_id for r in cluster_instance.get_runs()}
    started = time.monotonic()
    code, out = run_cli(
        monkeypatch, capsys, "publish", "--spec", str(cluster.spec_path), "--rebuild", "--no-progress"
    )
    took = time.monotonic() - started
    assert code == 0, f"{out}\n{cluster.report()}"
    assert "verified: OK" in out, out
    runs = [r for r in cluster_instance.get_runs() if r.run_id not in before]
    assert runs and all(r.status.value == "SUCCESS" for r in runs), [(r.job_name, r.status) for r in runs]
    assert all(TASK_ID_TAG in r.tags for r in runs), "a run did not go through the Celery launcher"
    shard_runs = [r for r in runs if r.job_name.endswith("_shards")]
    assert sorted(r.tags["dagster/partition"] for r in shard_runs) == SHARDS  # shards_per_run 1: one each
    assert {cluster.worker_of(r.tags[TASK_ID_TAG]) for r in shard_runs} == {"worker1", "worker2"}
    assert cluster.env["BIDS_HUB_STORAGE"].startswith("s3://") and s3_keys(cluster.s3, "storage/")

    assert_same_as_a_local_publish(cluster, tmp_path, monkeypatch, capsys)
    print(f"CLI publish through Celery (prepare, {NUM_SHARDS} shard runs, upload): {took:.1f} s")
