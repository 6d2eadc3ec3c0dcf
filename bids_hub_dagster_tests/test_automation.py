"""Keeping the dataset current: data versions, staleness, the watch sensor, the chain sensor, the schedule."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from bids_hub_dagster.dataset.audit import ShardAudit, audit_shard_file, shard_coverage
from bids_hub_dagster.defs import build_definitions, job_names, names
from bids_hub_dagster.defs.automation import REFRESH_TAG, read_built_state
from bids_hub_dagster.demo import write_demo
from bids_hub_dagster.pipeline.refresh import plan_refresh
from bids_hub_dagster.spec import load_spec
from bids_hub_dagster_tests.conftest import isolate_home, materialize_all

CHANGED = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"  # a file of one row of the demo


class Pipeline:
    """The demo dataset (4 shards, one row each) on one instance, with its sensors and schedule."""

    def __init__(self, spec, storage, instance: dg.DagsterInstance) -> None:
        self.spec, self.storage, self.instance = spec, storage, instance
        self.defs = build_definitions([spec], storage_dir=str(storage))
        self.jobs = job_names(spec)

    def run(self, job: str, partition_key: str | None = None, tags: dict | None = None):
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=partition_key, tags=tags
        )
        assert result.success
        return result

    def sensor(self, cursor: str | None = None):
        sensor = self.defs.resolve_sensor_def(names(self.spec).watch_sensor)
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=self.defs)
        return sensor(context)

    def perform(self, requests: list[dg.RunRequest]) -> list[str]:
        """Execute the requested runs, in order; returns their job names (with partition keys)."""
        done = []
        for request in requests:
            self.run(request.job_name, request.partition_key, request.tags)
            done.append(request.job_name + (f"[{request.partition_key}]" if request.partition_key else ""))
        return done

    def stale(self) -> dict[str, StaleStatus]:
        # what the UI's staleStatus reads (an internal API: the public one is GraphQL, see test_ui_backfill)
        resolver = CachingStaleStatusResolver(
            self.instance, self.defs.resolve_asset_graph(), LoadingContextForTest(self.instance)
        )
        key = names(self.spec).hub_shards
        return {
            p: resolver.get_status(key, p)
            for p in self.instance.get_dynamic_partitions(names(self.spec).shard_partitions)
        }


@pytest.fixture(scope="module")
def built_demo(tmp_path_factory):
    """The demo materialized once per module in ``work`` (BIDS tree, storage, instance), and a copy of it.

    Building takes seconds; restoring the copy takes milliseconds. The copy goes back to the same path
    (tests of a module run one after the other), so the paths the instance recorded stay true.
    """
    root = tmp_path_factory.mktemp("automation")
    work = root / "work"
    spec = load_spec(write_demo(work / "demo")).with_overrides(
        destination=str(work / "published"), num_shards=4
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_home(monkeypatch, root / "home")
        (work / "instance").mkdir()
        with dg.instance_for_test(temp_dir=str(work / "instance")) as instance:
            materialize_all(spec, work / "storage", instance)
    shutil.copytree(work, root / "pristine", symlinks=True)
    return spec, work, root / "pristine"


@pytest.fixture
def pipeline(built_demo):
    """A fresh copy of the materialized demo (files and instance): tests change both."""
    spec, work, pristine = built_demo
    shutil.rmtree(work)
    shutil.copytree(pristine, work, symlinks=True)
    with dg.instance_for_test(temp_dir=str(work / "instance")) as instance:
        yield Pipeline(spec, work / "storage", instance)


def touch(path) -> None:
    """Rewrite a file with the same bytes: only its mtime changes (a re-copied file)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def changed_shard(pipeline: Pipeline) -> str:
    table = pipeline.spec.index_table()
    sessions = list(
        zip(table.column("subject_id").to_pylist(), table.column("session_id").to_pylist(), strict=True)
    )
    return f"shard-{sessions.index(('sub-02', 'ses-1')):05d}"


def test_everything_built_is_up_to_date(pipeline):
    state = read_built_state(pipeline.instance, pipeline.spec)
    table = pipeline.spec.index_table()
    plan = pipeline.spec.shard_plan(table)
    refresh = plan_refresh(table, plan, pipeline.spec.destination, state)
    assert refresh.up_to_date, refresh.summary()
    assert sorted(state.shard_versions) == plan.keys() and all(state.shard_versions.values())
    result = pipeline.sensor(cursor=refresh.fingerprint)
    assert isinstance(result, dg.SkipReason) and "up to date" in result.skip_message


def test_a_changed_file_rebuilds_only_its_shard_then_publishes(pipeline):
    first = pipeline.sensor()  # no cursor yet: records the shards' versions, nothing to run
    assert first.run_requests == [] and len(first.asset_events) == 4
    touch(pipeline.spec.bids_root / CHANGED)
    shard = changed_shard(pipeline)

    # the watch sensor sees the change: it re-indexes first and marks exactly that shard stale
    step1 = pipeline.sensor(cursor=first.cursor)
    assert [r.job_name for r in step1.run_requests] == ["demo_prepare"]
    for event in step1.asset_events:
        pipeline.instance.report_runless_asset_event(event)
    stale = pipeline.stale()
    assert {p for p, s in stale.items() if s == StaleStatus.STALE} == {shard}
    assert pipeline.perform(step1.run_requests) == ["demo_prepare"]
    # re-indexing changed no layout: the other shards stay fresh
    assert {p for p, s in pipeline.stale().items() if s == StaleStatus.STALE} == {shard}

    step2 = pipeline.sensor(cursor=step1.cursor)
    assert pipeline.perform(step2.run_requests) == [f"demo_shards[{shard}]"]
    assert all(s == StaleStatus.FRESH for s in pipeline.stale().values())
    step3 = pipeline.sensor(cursor=step2.cursor)
    assert pipeline.perform(step3.run_requests) == ["demo_upload"]
    assert isinstance(pipeline.sensor(cursor=step3.cursor), dg.SkipReason)

    # run keys name the step, the versions it builds and the round: repeats are deduplicated, and a
    # step that failed is tried again only in a later round (files changed, next scheduled tick)
    keys = [r.run_key for r in step1.run_requests + step2.run_requests + step3.run_requests]
    version = read_built_state(pipeline.instance, pipeline.spec).shard_versions[shard]
    round_id = step1.run_requests[0].tags[REFRESH_TAG]
    assert round_id.startswith("watch-") and all(k.endswith(f":{round_id}") for k in keys)
    assert keys[1] == f"{shard}:{version}:{round_id}"


def test_a_new_session_adds_a_partition_and_a_removed_one_drops_it(pipeline):
    root = pipeline.spec.bids_root
    shutil.copytree(root / "sub-03" / "ses-1", root / "sub-03" / "ses-2")
    for path in (root / "sub-03" / "ses-2").rglob("*ses-1*"):
        path.rename(path.with_name(path.name.replace("ses-1", "ses-2")))
    spec = pipeline.spec.with_overrides(num_shards=5)
    grown = Pipeline(spec, pipeline.storage, pipeline.instance)
    result = grown.sensor()
    assert result.dynamic_partitions_requests == [
        dg.AddDynamicPartitionsRequest(names(pipeline.spec).shard_partitions, ["shard-00004"])
    ]
    assert [r.job_name for r in result.run_requests] == ["demo_prepare"]

    shutil.rmtree(root / "sub-03" / "ses-2")
    shrunk = Pipeline(pipeline.spec.with_overrides(num_shards=3), pipeline.storage, pipeline.instance)
    result = shrunk.sensor()
    assert result.dynamic_partitions_requests == [
        dg.DeleteDynamicPartitionsRequest(names(pipeline.spec).shard_partitions, ["shard-00003"])
    ]


def test_the_schedule_starts_a_refresh_that_the_chain_sensor_finishes(pipeline):
    schedule = pipeline.defs.resolve_schedule_def(names(pipeline.spec).refresh_schedule)
    assert (
        schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.cron_schedule == "0 3 * * 1"
    )
    when = datetime(2026, 11, 30, 3, tzinfo=UTC)
    assert isinstance(
        schedule(dg.build_schedule_context(pipeline.instance, scheduled_execution_time=when)), dg.SkipReason
    )

    touch(pipeline.spec.bids_root / CHANGED)
    request = schedule(dg.build_schedule_context(pipeline.instance, scheduled_execution_time=when))
    assert request.tags[REFRESH_TAG] == "schedule-20261130T0300"
    prepared = pipeline.run(pipeline.jobs.prepare, tags=request.tags)

    chain = pipeline.defs.resolve_sensor_def(names(pipeline.spec).refresh_chain_sensor)
    assert chain.default_status == dg.DefaultSensorStatus.RUNNING

    def chain_after(result):
        success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
        context = dg.build_run_status_sensor_context(
            names(pipeline.spec).refresh_chain_sensor, success, pipeline.instance, result.dagster_run
        )
        return chain(context)

    def after(result) -> list[dg.RunRequest]:
        requests = chain_after(result)
        assert isinstance(requests, list), requests
        return requests

    shards = after(prepared)
    assert [(r.job_name, r.partition_key) for r in shards] == [("demo_shards", changed_shard(pipeline))]
    rebuilt = pipeline.run(shards[0].job_name, shards[0].partition_key, shards[0].tags)
    upload = after(rebuilt)
    assert [r.job_name for r in upload] == ["demo_upload"]
    pipeline.perform(upload)

    # runs not started by a refresh are left alone
    assert isinstance(chain_after(pipeline.run(pipeline.jobs.prepare)), dg.SkipReason)


def test_shard_checks_run_with_each_shard_and_coverage_with_the_upload(pipeline):
    key = "shard-00001"
    result = pipeline.run(pipeline.jobs.shards, key)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    # the two of the shard, on its partition, and the one over the run
    assert checks == {
        "shard_files_are_nifti": True,
        "shard_row_count_matches_plan": True,
        "shards_of_run_pass_checks": True,
    }
    partitions = {e.check_name: e.partition for e in result.get_asset_check_evaluations()}
    assert partitions["shard_files_are_nifti"] == partitions["shard_row_count_matches_plan"] == key
    upload = pipeline.run(pipeline.jobs.upload)
    assert {e.check_name: e.passed for e in upload.get_asset_check_evaluations()} == {
        "shards_hold_every_row_once": True,
        "published_copy_verifies": True,
    }


def test_materializations_carry_schema_counts_previews_and_versions(pipeline):
    def meta(name: str, partition: str | None = None):
        key = dg.AssetKey(["demo", name])
        records = pipeline.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
        ).records
        event = records[0].asset_materialization
        return event.metadata, event.tags

    index, index_tags = meta("bids_index")
    assert index["dagster/row_count"].value == 4
    assert [c.name for c in index["dagster/column_schema"].value.columns][:3] == [
        "subject_id",
        "session_id",
        "t1w",
    ]
    assert "| subject_id |" in index["preview"].value and index["duration_s"].value >= 0
    assert index_tags["dagster/data_version"]
    dataset, _ = meta("hf_dataset")
    assert {c.name for c in dataset["dagster/column_schema"].value.columns} >= {"t1w", "bold"}
    shard, shard_tags = meta("hub_shards", "shard-00000")
    assert shard["first_row"].value == "sub-01/ses-1" and shard["files_per_column"].value
    assert (
        shard_tags["dagster/data_version"]
        == read_built_state(pipeline.instance, pipeline.spec).shard_versions["shard-00000"]
    )
    upload, _ = meta("hub_upload")
    assert "configs:" in upload["card"].value and upload["destination"].value == pipeline.spec.destination


def test_coverage_tells_gaps_from_errors(tmp_path):
    def audit(key: str, start: int, stop: int, rows: int | None = None) -> ShardAudit:
        path = tmp_path / f"{key}.parquet"
        path.write_bytes(b"stand-in")
        return ShardAudit(
            path, num_rows=stop - start if rows is None else rows, record={"start": start, "stop": stop}
        )

    planned = {"shard-00000": (0, 2), "shard-00001": (2, 4)}
    ok = shard_coverage(
        {"shard-00000": audit("shard-00000", 0, 2), "shard-00001": audit("shard-00001", 2, 4)}, 4, planned
    )
    assert ok.errors == [] and ok.missing == []
    gap = shard_coverage(
        {"shard-00000": audit("shard-00000", 0, 2), "shard-00001": ShardAudit(tmp_path / "none")}, 4, planned
    )
    assert gap.errors == [] and gap.missing == [
        "shard-00001: not built yet; materialize this hub_shards partition"
    ]
    overlap = shard_coverage(
        {"shard-00000": audit("shard-00000", 0, 3), "shard-00001": audit("shard-00001", 2, 4, rows=1)},
        4,
        planned,
    )
    assert (
        "shard-00000: built for rows 0–2, the plan now gives it rows 0–1; materialize this hub_shards partition again"
        in overlap.errors
    )
    assert "row 2 is in 2 shards: shard-00000, shard-00001" in overlap.errors
    assert "shard-00001: records rows 2–3 but holds 1" in overlap.errors


def test_a_damaged_cell_in_a_stored_shard_fails_its_check(pipeline):
    import pyarrow.parquet as pq

    path = pipeline.storage / "demo" / "hub_shards" / "shard-00001.parquet"
    table = pq.read_table(path)
    cells = table.column("t1w").to_pylist()
    cells[0] = {"bytes": b"<html>404</html>", "path": cells[0]["path"]}
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("t1w"), "t1w", pa.array(cells, table.schema.field("t1w").type)
        ),
        path,
    )
    name = cells[0]["path"]
    why = "not a valid gzip stream" if name.endswith(".gz") else "not a NIfTI-1/2 image"
    (problem,) = audit_shard_file(path).problems
    assert problem.startswith(f"row 0 t1w: {name}: {why}")


def test_a_file_added_to_one_session_leaves_the_other_shards_fresh(pipeline):
    shard = changed_shard(pipeline)
    func = pipeline.spec.bids_root / "sub-02/ses-1/func"  # this session had no bold run: it gains one
    func.mkdir()
    shutil.copyfile(pipeline.spec.bids_root / CHANGED, func / "sub-02_ses-1_task-rest_run-1_bold.nii")
    steps = []
    cursor = None
    for _ in range(4):
        result = pipeline.sensor(cursor=cursor)
        if isinstance(result, dg.SkipReason):
            break
        for event in result.asset_events:
            pipeline.instance.report_runless_asset_event(event)
        steps += pipeline.perform(result.run_requests)
        cursor = result.cursor
    assert steps == ["demo_prepare", f"demo_shards[{shard}]", "demo_upload"]
    assert all(s == StaleStatus.FRESH for s in pipeline.stale().values())


def test_the_sensors_wait_while_runs_of_the_dataset_are_in_flight(pipeline):
    touch(pipeline.spec.bids_root / CHANGED)
    job = pipeline.defs.resolve_job_def(pipeline.jobs.prepare)
    pipeline.instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    result = pipeline.sensor()
    assert isinstance(result, dg.SkipReason) and "in flight" in result.skip_message


def test_a_publication_that_failed_verification_is_not_counted(pipeline, monkeypatch):
    from bids_hub_dagster.publish import destinations, verify

    monkeypatch.setattr(
        destinations, "verify_published", lambda *a, **k: verify.VerifyReport(rows_expected=4)
    )
    touch(pipeline.spec.bids_root / CHANGED)  # a refresh republishes, but its verification fails
    for _ in range(3):
        result = pipeline.sensor()
        if isinstance(result, dg.SkipReason):
            break
        for request in result.run_requests:
            pipeline.defs.resolve_job_def(request.job_name).execute_in_process(
                instance=pipeline.instance,
                partition_key=request.partition_key,
                tags=request.tags,
                raise_on_error=False,
            )
    assert read_built_state(pipeline.instance, pipeline.spec).publication_version is None  # not up to date


def test_a_stored_shard_lost_or_changed_is_rebuilt_by_the_same_rule_as_the_cli(pipeline):
    """The sensors follow pipeline.refresh.shards_to_build, as `publish` does: sources unchanged,
    but a stored shard file gone or no longer holding the bytes written is rebuilt."""
    from bids_hub_dagster.publish.digests import check_recorded

    first = pipeline.sensor()
    assert first.run_requests == []
    stored = pipeline.storage / "demo" / "hub_shards"
    (stored / "shard-00000.parquet").unlink()
    with open(stored / "shard-00003.parquet", "r+b") as fh:  # one byte changed in place
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    step = pipeline.sensor(cursor=first.cursor)
    assert [(r.job_name, r.partition_key) for r in step.run_requests] == [
        ("demo_shards", "shard-00000"),
        ("demo_shards", "shard-00003"),
    ]
    missing, changed = (r.run_key for r in step.run_requests)
    assert ":missing:watch-" in missing and ":changed-" in changed  # never the key of the build before
    pipeline.perform(step.run_requests)
    assert check_recorded(stored / "shard-00003.parquet").ok
    after = pipeline.sensor(cursor=step.cursor)
    assert all(r.job_name != "demo_shards" for r in getattr(after, "run_requests", None) or [])
