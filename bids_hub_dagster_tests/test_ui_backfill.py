"""End to end through the real servers, as a user of the UI would: a backfill of the Hub shards in which one
damaged file fails exactly one shard partition, then its re-execution from failure once the file is fixed.

Everything goes through the webserver's GraphQL API (the mutations the UI sends); the daemon dequeues the
runs and drives the backfills; the dataset is published to the Hub test server and read back with
``datasets.load_dataset``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from datasets import List, Nifti, load_dataset

from bids_hub_dagster.demo import write_demo
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster.testing.dagster_servers import LOCATION, REPOSITORY, DagsterServers, dagster_servers
from bids_hub_dagster_tests.hub_server import HubServer

pytestmark = pytest.mark.slow

REPO_ID = "lab/e2e"
NUM_SHARDS = 4
SHARDS_KEY = ["demo", "hub_shards"]
UPLOAD_KEY = ["demo", "hub_upload"]
DAMAGED = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"  # the only file of row sub-02/ses-1
BACKFILL_TICK = 3  # seconds between backfill daemon ticks (Dagster's is 30 s; see dagster_servers)
TIMEOUT = 120  # seconds for one run or one backfill

RUN_TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_IN_PROGRESS = {"REQUESTED", "CANCELING", "FAILING"}

ERROR_FIELDS = "... on Error { message } ... on PythonError { stack }"

LAUNCH_RUN = f"""
mutation($params: ExecutionParams!) {{
  launchRun(executionParams: $params) {{
    __typename ... on LaunchRunSuccess {{ run {{ runId }} }} {ERROR_FIELDS}
  }}
}}"""

LAUNCH_BACKFILL = f"""
mutation($params: LaunchBackfillParams!) {{
  launchPartitionBackfill(backfillParams: $params) {{
    __typename ... on LaunchBackfillSuccess {{ backfillId }} {ERROR_FIELDS}
  }}
}}"""

REEXECUTE_BACKFILL = f"""
mutation($params: ReexecutionParams!) {{
  reexecutePartitionBackfill(reexecutionParams: $params) {{
    __typename ... on LaunchBackfillSuccess {{ backfillId }} {ERROR_FIELDS}
  }}
}}"""

RUN = f"""
query($runId: ID!) {{
  runOrError(runId: $runId) {{ __typename ... on Run {{ runId status }} {ERROR_FIELDS} }}
}}"""

RUN_FAILURES = """
query($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { eventConnection(limit: 1000) { events {
    __typename ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } }
  } } } }
}"""

BACKFILL = f"""
query($id: String!) {{
  partitionBackfillOrError(backfillId: $id) {{
    __typename {ERROR_FIELDS}
    ... on PartitionBackfill {{
      id status isAssetBackfill error {{ message }}
      assetBackfillData {{ assetBackfillStatuses {{
        ... on AssetPartitionsStatusCounts {{
          assetKey {{ path }} numPartitionsTargeted numPartitionsMaterialized numPartitionsFailed
          numPartitionsInProgress
        }}
        ... on UnpartitionedAssetStatus {{ assetKey {{ path }} materialized failed inProgress }}
      }} }}
      runs {{ runId status tags {{ key value }} }}
    }}
  }}
}}"""

ASSET = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename ... on Error { message }
    ... on AssetNode {
      partitionKeys
      assetMaterializations(limit: 100) { runId partition }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions
        }
      }
    }
  }
}"""


@dataclass
class Damage:
    """A NIfTI file whose header was overwritten (size kept), the shard holding it, its original bytes."""

    path: Path
    shard: str
    original: bytes

    def restore(self) -> None:
        self.path.write_bytes(self.original)


@pytest.fixture(params=[1, 2], ids=["one-shard-per-run", "two-shards-per-run"])
def shards_per_run(request) -> int:
    return request.param


@pytest.fixture
def spec_path(tmp_path: Path, shards_per_run: int) -> Path:
    """The demo dataset in 4 one-row shards, published to hf://datasets/lab/e2e two files a commit;
    a backfill run builds ``shards_per_run`` of them."""
    spec = load_spec(write_demo(tmp_path / "demo")).with_overrides(
        destination=f"hf://datasets/{REPO_ID}",
        num_shards=NUM_SHARDS,
        hub={"files_per_commit": 2},
        shards_per_run=shards_per_run,
    )
    path = tmp_path / "e2e.yaml"
    path.write_text(spec.to_yaml())
    return path


@pytest.fixture
def damage(spec_path: Path) -> Damage:
    """Overwrite the NIfTI header of DAMAGED with an HTML page (a failed download), keeping the file size."""
    spec = load_spec(spec_path)
    labels = [row.label for row in spec.build_index().rows]
    assert len(labels) == NUM_SHARDS, labels  # one row per shard
    path = spec.bids_root / DAMAGED
    original = path.read_bytes()
    page = b"<html><body>503 Service Unavailable</body></html>\n"
    path.write_bytes(page.ljust(348, b" ") + original[348:])
    assert path.stat().st_size == len(original)
    return Damage(path=path, shard=f"shard-{labels.index('sub-02/ses-1'):05d}", original=original)


@pytest.fixture
def servers(tmp_path: Path, spec_path: Path, hub_server: HubServer) -> Iterator[DagsterServers]:
    """Webserver and daemon serving the spec, writing to the Hub test server; stopped after the test."""
    env = {
        "BIDS_HUB_SPECS": str(spec_path),
        "BIDS_HUB_STORAGE": str(tmp_path / "storage"),
        "HF_ENDPOINT": hub_server.endpoint,
        "HF_TOKEN": hub_server.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "servers-hf-home"),
    }
    with dagster_servers(tmp_path / "servers", env, backfill_interval=BACKFILL_TICK) as started:
        yield started


def _result(data: dict, field: str, success: str) -> dict:
    """The payload of a mutation answer, or a failed test naming the error it returned."""
    answer = data[field]
    if answer["__typename"] != success:
        pytest.fail(
            f"{field} answered {answer['__typename']}: {answer.get('message')}\n{answer.get('stack')}"
        )
    return answer


def launch_job(servers: DagsterServers, job: str) -> str:
    """Launch ``job`` (queued; the daemon starts it); its run id."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job}
    data = servers.graphql(LAUNCH_RUN, {"params": {"selector": selector}})
    return _result(data, "launchRun", "LaunchRunSuccess")["run"]["runId"]


def failure_messages(servers: DagsterServers, run_ids: list[str]) -> str:
    """The step failures of these runs, each with the messages of its causes."""
    lines = []
    for run_id in run_ids:
        events = servers.graphql(RUN_FAILURES, {"runId": run_id})["runOrError"]["eventConnection"]["events"]
        for event in events:
            if event["__typename"] == "ExecutionStepFailureEvent" and event["error"]:
                causes = " <- ".join(c["message"].strip() for c in event["error"]["causes"])
                lines.append(f"{run_id} {event['stepKey']}: {event['error']['message'].strip()} {causes}")
    return "\n".join(lines)


def report(servers: DagsterServers, run_ids: list[str]) -> str:
    """What to read when the flow went wrong: run failures, then the server logs."""
    return f"run failures:\n{failure_messages(servers, run_ids) or '(none)'}\n{servers.log_tail()}"


def wait_for_run(servers: DagsterServers, run_id: str) -> str:
    """Poll the run until it is finished; its status."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        servers.check_alive()
        status = servers.graphql(RUN, {"runId": run_id})["runOrError"]["status"]
        if status in RUN_TERMINAL:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still {status} after {TIMEOUT} s\n{report(servers, [run_id])}")
        time.sleep(1)


def wait_for_backfill(servers: DagsterServers, backfill_id: str) -> dict:
    """Poll the backfill until it is no longer in progress; the PartitionBackfill."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        servers.check_alive()
        backfill = servers.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill["__typename"] != "PartitionBackfill":
            pytest.fail(f"backfill {backfill_id}: {backfill.get('message')}")
        if backfill["status"] not in BACKFILL_IN_PROGRESS:
            return backfill
        if time.monotonic() > deadline:
            run_ids = [r["runId"] for r in backfill["runs"]]
            pytest.fail(
                f"backfill {backfill_id} still {backfill['status']} after {TIMEOUT} s\n{report(servers, run_ids)}"
            )
        time.sleep(1)


def asset_node(servers: DagsterServers, key: list[str]) -> dict:
    node = servers.graphql(ASSET, {"key": {"path": key}})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return node


def statuses_by_asset(backfill: dict) -> dict[str, dict]:
    """The backfill's per-asset status counts, keyed ``demo/hub_shards``."""
    statuses = backfill["assetBackfillData"]["assetBackfillStatuses"]
    return {"/".join(s["assetKey"]["path"]): s for s in statuses}


def run_partitions(backfill: dict) -> list[tuple[str, str]]:
    """(partition, status) of each run of the backfill, sorted; partition ``-`` for an unpartitioned run,
    ``first…last`` for a run of a range of partitions."""
    runs = []
    for run in backfill["runs"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        start, end = (
            tags.get("dagster/asset_partition_range_start"),
            tags.get("dagster/asset_partition_range_end"),
        )
        if start is not None and start != end:
            partition = f"{start}…{end}"
        elif start is not None:
            partition = start
        else:
            partition = tags.get("dagster/partition", "-")
        runs.append((partition, run["status"]))
    return sorted(runs)


def expected_runs(keys: list[str], per_run: int, failed: str) -> list[tuple[str, str]]:
    """The runs a backfill of ``keys`` makes, ``per_run`` partitions each; the one holding ``failed`` fails."""
    runs = []
    for i in range(0, len(keys), per_run):
        chunk = keys[i : i + per_run]
        name = chunk[0] if len(chunk) == 1 else f"{chunk[0]}…{chunk[-1]}"
        runs.append((name, "FAILURE" if failed in chunk else "SUCCESS"))
    return sorted(runs)


def test_backfill_fails_one_shard_then_reexecutes_from_failure(
    servers: DagsterServers,
    damage: Damage,
    spec_path: Path,
    hub_server: HubServer,
    tmp_path: Path,
    shards_per_run: int,
) -> None:
    # prepare: index and type the dataset, which registers the dynamic shard partitions
    prepare = launch_job(servers, "demo_prepare")
    assert wait_for_run(servers, prepare) == "SUCCESS", report(servers, [prepare])
    keys = [f"shard-{i:05d}" for i in range(NUM_SHARDS)]
    assert asset_node(servers, SHARDS_KEY)["partitionKeys"] == keys

    # the backfill of every shard and the upload: the damaged shard fails, the upload never runs
    params = {
        "assetSelection": [{"path": SHARDS_KEY}, {"path": UPLOAD_KEY}],
        "allPartitions": True,
        "title": "e2e shards and upload",
    }
    data = servers.graphql(LAUNCH_BACKFILL, {"params": params})
    first_id = _result(data, "launchPartitionBackfill", "LaunchBackfillSuccess")["backfillId"]
    first = wait_for_backfill(servers, first_id)
    first_runs = [r["runId"] for r in first["runs"]]
    why = report(servers, first_runs)
    assert first["isAssetBackfill"] and first["status"] == "COMPLETED_FAILED", f"{first}\n{why}"
    # with several shards per run, the damaged one still fails alone: the others of its run are built
    assert run_partitions(first) == expected_runs(keys, shards_per_run, damage.shard), f"{first}\n{why}"
    counts = statuses_by_asset(first)
    shards = counts["demo/hub_shards"]
    assert (shards["numPartitionsMaterialized"], shards["numPartitionsFailed"]) == (NUM_SHARDS - 1, 1), why
    assert not counts["demo/hub_upload"]["materialized"], why
    failures = failure_messages(servers, first_runs)
    assert damage.shard in failures and "not a NIfTI" in failures and damage.path.name in failures, failures
    statuses = asset_node(servers, SHARDS_KEY)["assetPartitionStatuses"]
    assert statuses["failedPartitions"] == [damage.shard], statuses
    assert sorted(statuses["materializedPartitions"]) == [k for k in keys if k != damage.shard], statuses
    assert asset_node(servers, UPLOAD_KEY)["assetMaterializations"] == []
    assert not [name for name in hub_server.files(REPO_ID) if name.startswith("data/")]

    # fix the file, re-execute the backfill from failure: the damaged shard, then the upload
    damage.restore()
    reexecution = {"parentRunId": first_id, "strategy": "FROM_FAILURE"}
    data = servers.graphql(REEXECUTE_BACKFILL, {"params": reexecution})
    second_id = _result(data, "reexecutePartitionBackfill", "LaunchBackfillSuccess")["backfillId"]
    second = wait_for_backfill(servers, second_id)
    why = report(servers, [r["runId"] for r in second["runs"]])
    assert second["status"] == "COMPLETED_SUCCESS", f"{second}\n{why}"
    assert run_partitions(second) == [("-", "SUCCESS"), (damage.shard, "SUCCESS")], f"{second}\n{why}"
    statuses = asset_node(servers, SHARDS_KEY)["assetPartitionStatuses"]
    assert sorted(statuses["materializedPartitions"]) == keys and statuses["failedPartitions"] == [], statuses
    assert len(asset_node(servers, UPLOAD_KEY)["assetMaterializations"]) == 1

    # the published dataset: 4 data files and the card, every NIfTI file byte for byte
    published = hub_server.files(REPO_ID)
    data_files = sorted(name for name in published if name.startswith("data/"))
    assert data_files == [f"data/train-{i:05d}-of-{NUM_SHARDS:05d}.parquet" for i in range(NUM_SHARDS)]
    assert "README.md" in published
    ds = load_dataset(REPO_ID, split="train", cache_dir=str(tmp_path / "fresh-cache"))
    assert len(ds) == NUM_SHARDS
    ds = (
        ds.cast_column("t1w", Nifti(decode=False))
        .cast_column("bold", List(Nifti(decode=False)))
        .cast_column("lesion", Nifti(decode=False))
    )
    spec: DatasetSpec = load_spec(spec_path)
    sources = {p.name: p.read_bytes() for p in spec.bids_root.rglob("*.nii*")}
    compared = 0
    for row in ds:
        for cell in [row["t1w"], row["lesion"], *row["bold"]]:
            if cell is not None:
                assert cell["bytes"] == sources[Path(cell["path"]).name], cell["path"]
                compared += 1
    assert compared == len(sources)
