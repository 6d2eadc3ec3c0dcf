"""Keeping a published dataset current: a schedule, a watch sensor and a chaining sensor per dataset.

All three ask ``pipeline.refresh.plan_refresh`` what the next step is — re-index, rebuild the
stale shards, or publish — and request the runs for it. A stale shard is what
``pipeline.refresh.shards_to_build`` says, the rule ``bids-hub-dagster publish`` follows too:
never built, sources changed, or its stored file gone or changed since it was written.

- ``<key>_watch`` scans the BIDS folder every ``watch_interval`` seconds (cursor: the
  index fingerprint). When files changed it records a data version per shard on
  ``bids_files`` (so the UI marks exactly those shards stale), adds or removes shard
  partitions when the plan changed, and requests the next step.
- ``<key>_refresh`` re-indexes on a cron (weekly by default); stopped by default.
- ``<key>_refresh_chain`` continues a refresh started by either of them: when one of
  its runs succeeds, it requests the following step, until the dataset is published.

All three wait while any run of the dataset is queued or running. Run keys name the
step, the versions it builds and the refresh round (``bids_hub/refresh`` tag): a step is
never requested twice in one round, and one that failed (a bad file, a Hub outage) is
tried again in the next round — when files change, or at the next scheduled tick.
"""

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ..errors import UserError
from ..pipeline.refresh import FILE_CHANGED, FILE_MISSING, BuiltState, RefreshPlan, plan_refresh
from ..spec import DatasetSpec
from .assets import DATA_VERSION_TAG
from .io_managers import BidsHubParquetIOManager
from .names import names

REFRESH_TAG = "bids_hub/refresh"  # on the runs a refresh requests: which round of refresh they belong to
IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _data_version(event: dg.EventLogEntry | None) -> str | None:
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.tags.get(DATA_VERSION_TAG)


def _metadata(event: dg.EventLogEntry | None, name: str) -> str | None:
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(name)
    return None if value is None else str(value.value)


def read_built_state(instance: dg.DagsterInstance, spec: DatasetSpec) -> BuiltState:
    """What the instance's last materializations of this dataset recorded.

    A publication counts only if its ``published_copy_verifies`` check passed: a failed
    blocking check fails the run but keeps the materialization.
    """
    n = names(spec)
    index_event = instance.get_latest_materialization_event(n.bids_index)
    partitions = instance.get_dynamic_partitions(n.shard_partitions)
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        n.hub_shards, dg.DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], partitions
    )
    versions = {k: t.get(DATA_VERSION_TAG, "") for k, t in tags.items()}
    upload = instance.get_latest_materialization_event(n.hub_upload)
    check = n.published_copy_verifies
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([check]).get(check)
    verified = latest is not None and latest.status == AssetCheckExecutionRecordStatus.SUCCEEDED
    return BuiltState(
        _metadata(index_event, "index_fingerprint"),
        _metadata(instance.get_latest_materialization_event(n.hf_dataset), "plan_version"),
        partitions,
        versions,
        _data_version(upload) if verified else None,
    )


def runs_in_flight(instance: dg.DagsterInstance, spec: DatasetSpec) -> list[dg.DagsterRun]:
    """Queued or running runs that touch this dataset's assets, however they were started."""
    n = names(spec)
    return [run for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT)) if n.owns_run(run)]


def next_step(
    spec: DatasetSpec, instance: dg.DagsterInstance, storage: BidsHubParquetIOManager | None = None
) -> RefreshPlan:
    """Index the BIDS folder now and compare with what was built (and is stored, in ``storage``)."""
    table = spec.index_table(gate=False)
    key = names(spec).hub_shards
    stored = (lambda partition: storage.stored_shard(key, partition)) if storage is not None else None
    built = read_built_state(instance, spec)
    return plan_refresh(table, spec.shard_plan(table), spec.destination, built, stored)


def run_requests(
    spec: DatasetSpec, refresh: RefreshPlan, round_id: str, reindex: bool = True
) -> list[dg.RunRequest]:
    """The runs of the next step.

    Run keys name the step, the versions it builds and the refresh round: a step that
    failed is not requested again in the same round (a bad file is not retried in a
    loop), but a later round (a file changed, the next scheduled tick) tries it again.
    """
    tags = {REFRESH_TAG: round_id}
    jobs = names(spec).jobs
    if refresh.reindex:
        if not reindex:
            return []
        return [
            dg.RunRequest(run_key=f"prepare:{refresh.plan_key}:{round_id}", job_name=jobs.prepare, tags=tags)
        ]
    if refresh.stale:
        # a stored file lost or changed (its sources did not): the key says so, or it would repeat
        # the key of the build that wrote the file in this round, and never run
        why = {FILE_MISSING: ":missing", FILE_CHANGED: ":changed-"}
        return [
            dg.RunRequest(
                run_key=f"{s.key}:{refresh.shard_versions[s.key]}{why.get(s.cause, '')}"
                f"{(s.digest or '')[:16]}:{round_id}",
                job_name=jobs.shards,
                partition_key=s.key,
                tags=tags,
            )
            for s in refresh.stale
        ]
    if refresh.publish:
        return [
            dg.RunRequest(run_key=f"upload:{refresh.publication}:{round_id}", job_name=jobs.upload, tags=tags)
        ]
    return []


def build_automation(
    spec: DatasetSpec, jobs: list, storage: BidsHubParquetIOManager | None = None
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    """The watch sensor, the chaining sensor and the refresh schedule of one dataset.

    ``storage`` is the IO manager the shards are stored with: a shard whose stored file is
    gone or changed is stale too (``pipeline.refresh.shards_to_build``).
    """
    prepare, shards, upload = jobs
    n = names(spec)
    partitions = n.shard_partitions
    bids_files = n.bids_files

    @dg.sensor(
        name=n.watch_sensor,
        jobs=jobs,
        minimum_interval_seconds=spec.watch_interval,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Scans {spec.bids_root} for new, changed or removed files and requests the runs that "
        "bring the published dataset up to date (re-index, stale shards only, publish).",
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        flying = runs_in_flight(context.instance, spec)
        if flying:  # never re-plan under runs that read the current plan; the chain continues them
            return dg.SkipReason(f"{spec.name}: {len(flying)} run(s) in flight; looking again after them")
        try:
            refresh = next_step(spec, context.instance, storage)
        except (UserError, OSError) as exc:  # the folder cannot be indexed now: look again later
            return dg.SkipReason(f"cannot index {spec.bids_root}: {exc}")
        changed = refresh.fingerprint != context.cursor
        requests = []
        if refresh.add_partitions:
            requests.append(dg.AddDynamicPartitionsRequest(partitions, refresh.add_partitions))
        if refresh.remove_partitions:
            requests.append(dg.DeleteDynamicPartitionsRequest(partitions, refresh.remove_partitions))
        known = set(context.instance.get_dynamic_partitions(partitions)) - set(refresh.remove_partitions)
        observations = [
            dg.AssetObservation(asset_key=bids_files, partition=key, tags={DATA_VERSION_TAG: version})
            for key, version in refresh.shard_versions.items()
            if changed and key in known
        ]
        runs = run_requests(spec, refresh, f"watch-{refresh.fingerprint[:16]}")
        if not (runs or requests or observations):
            return dg.SkipReason(f"{spec.name}: {refresh.summary()}")
        context.log.info(f"{spec.name}: {refresh.summary()}")
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=requests,
            asset_events=observations,
            cursor=refresh.fingerprint,
        )

    @dg.run_status_sensor(
        name=n.refresh_chain_sensor,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[prepare, shards],
        request_jobs=[shards, upload],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When a run started by the watch sensor or the refresh schedule succeeds, requests "
        "the next step (stale shards after the index, publishing after the last shard).",
    )
    def refresh_chain(context: dg.RunStatusSensorContext):
        round_id = context.dagster_run.tags.get(REFRESH_TAG)
        if round_id is None:
            return dg.SkipReason("not a run of a refresh")
        flying = runs_in_flight(context.instance, spec)
        if flying:  # the last run of this step to finish requests the next one
            return dg.SkipReason(f"{len(flying)} run(s) of {spec.name} still in flight")
        try:
            refresh = next_step(spec, context.instance, storage)
        except (UserError, OSError) as exc:  # the folder cannot be indexed now: look again later
            return dg.SkipReason(f"cannot index {spec.bids_root}: {exc}")
        # never re-index from here: a folder that keeps changing is the watch sensor's to follow
        return run_requests(spec, refresh, round_id, reindex=False) or dg.SkipReason(refresh.summary())

    @dg.schedule(
        name=n.refresh_schedule,
        cron_schedule=spec.schedule,
        job=prepare,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Re-indexes {spec.bids_root} ({spec.schedule}); the refresh chain then rebuilds only "
        "the stale shards and publishes.",
    )
    def refresh_schedule(context: dg.ScheduleEvaluationContext):
        if runs_in_flight(context.instance, spec):
            return dg.SkipReason(f"{spec.name}: runs in flight; the next tick will look again")
        try:
            refresh = next_step(spec, context.instance, storage)
        except (UserError, OSError) as exc:  # the folder cannot be indexed now: look again later
            return dg.SkipReason(f"cannot index {spec.bids_root}: {exc}")
        if refresh.up_to_date:
            return dg.SkipReason(f"{spec.name}: up to date")
        # the schedule starts with the index (current or not: it is cheap); the chain takes it from there
        round_id = f"schedule-{context.scheduled_execution_time:%Y%m%dT%H%M}"
        return dg.RunRequest(run_key=f"prepare:{refresh.plan_key}:{round_id}", tags={REFRESH_TAG: round_id})

    return [watch, refresh_chain], [refresh_schedule]
