"""Runs of the CLI on an instance whose ``dagster.yaml`` names a run launcher (Celery workers, Kubernetes).

On one machine the CLI executes each job in its own process (:func:`.runs.execute_job`). When the
instance launches runs elsewhere, a run must be something another machine can rebuild: it is created with
the origin of a real code location (the module ``bids_hub_dagster.definitions``, as ``workspace.yaml``
names it), submitted to the instance's run coordinator (queued in the instance's storage: run limits,
pools and priorities apply, and the daemon launches it), then followed until it ends. This is what
``dagster job launch`` does, plus the wait.

The workers rebuild the job from that module with their own environment: they must read the same specs
(``BIDS_HUB_SPECS``) and storage (``BIDS_HUB_STORAGE``) as this process.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

from .runs import Interrupted

DEFINITIONS_MODULE = "bids_hub_dagster.definitions"
LOCATION_NAME = "bids_hub_dagster"  # as workspace.yaml names it: the daemon finds the run's location by name
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
#: run config that selects the in-process executor of Dagster's default executor
#: (multi_or_in_process_executor): a run worker in a Celery worker is a daemonic process, which
#: cannot start the multiprocess executor's step processes
IN_PROCESS_RUN_CONFIG: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
_HINTS = {
    dg.DagsterRunStatus.QUEUED: "queued runs are launched by the daemon: is `dagster-daemon run` running on "
    "this instance, and are other runs holding every run slot (concurrency > runs)?",
    dg.DagsterRunStatus.STARTING: "the run was handed to the run launcher but no worker started it: are "
    "workers running and listening on its queue (for Celery: `dagster-celery worker start … -q dagster`)?",
    dg.DagsterRunStatus.NOT_STARTED: "the run was never submitted",
}


class LaunchError(RuntimeError):
    """The job could not be submitted (the code location does not load, the job is unknown)."""


class RunWaitTimeout(TimeoutError):
    """A submitted run did not end within the wait's bound; the message names the run and its status."""

    def __init__(self, message: str, run_id: str, status: dg.DagsterRunStatus):
        super().__init__(message)
        self.run_id, self.status = run_id, status


def uses_remote_launcher(instance: dg.DagsterInstance) -> bool:
    """Whether the instance's runs are launched elsewhere (its ``run_launcher`` is not the local one)."""
    from dagster._core.launcher import DefaultRunLauncher

    if instance.is_ephemeral:
        return False
    return not isinstance(instance.run_launcher, DefaultRunLauncher)


def in_process_run_config(executor_name: str) -> dict[str, Any]:
    """The run config that makes a job with the executor ``executor_name`` run in one process.

    Dagster's default executor takes ``execution: {config: {in_process: {}}}``; a job whose executor is
    already the in-process one needs nothing. Any other executor is refused: it would start processes.
    """
    if executor_name == "in_process":
        return {}
    if executor_name == "multi_or_in_process_executor":
        return IN_PROCESS_RUN_CONFIG
    raise LaunchError(
        f"the job's executor is {executor_name!r}; runs launched on remote workers need the in-process "
        "executor (set executor=dg.in_process_executor on the Definitions)"
    )


@contextmanager
def _workspace(instance: dg.DagsterInstance, module: str, location_name: str, working_directory: str | None):
    """A workspace holding the code location ``module``, loaded in this process."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=module,
            working_directory=working_directory or os.getcwd(),
        ),
        location_name=location_name,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin), read_only=False) as context:
        workspace = context.create_request_context()
        if workspace.has_code_location_error(location_name):
            error = workspace.get_code_location_error(location_name)
            raise LaunchError(
                f"the code location {module} does not load:\n{error.to_string() if error else ''}"
            )
        yield workspace


def partition_tags(partition_key: str | None = None, partition_range: tuple[str, str] | None = None) -> dict:
    """The run tags of one partition, or of a range of them (first and last key, inclusive)."""
    if partition_key is not None and partition_range is not None:
        raise ValueError("give a partition key or a partition range, not both")
    if partition_range is not None:
        start, end = partition_range
        return {RANGE_START_TAG: start, RANGE_END_TAG: end}
    return {PARTITION_TAG: partition_key} if partition_key is not None else {}


def submit_job(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    module: str = DEFINITIONS_MODULE,
    location_name: str = LOCATION_NAME,
    working_directory: str | None = None,
) -> dg.DagsterRun:
    """Create a run of ``job_name`` of the code location ``module`` and submit it to the run coordinator.

    Unless ``run_config`` has an ``execution`` key, the in-process executor is selected in it (see
    :func:`in_process_run_config`). The run is queued (QueuedRunCoordinator) or launched at once, as the
    instance says; the submitted run.
    """
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._utils.tags import normalize_tags

    with _workspace(instance, module, location_name, working_directory) as workspace:
        location = workspace.get_code_location(location_name)
        repositories = list(location.get_repositories().values())
        repo = next((r for r in repositories if r.has_job(job_name)), None)
        if repo is None:
            known = sorted(j.name for r in repositories for j in r.get_all_jobs())
            raise LaunchError(
                f"no job {job_name!r} in the code location {module} (its jobs: {', '.join(known)}); "
                "is the spec among BIDS_HUB_SPECS?"
            )
        selector = JobSubsetSelector(
            location_name=location.name, repository_name=repo.name, job_name=job_name, op_selection=None
        )
        remote_job = location.get_job(selector)
        run_config = dict(run_config or {})
        if "execution" not in run_config:
            job_def = location.get_reconstructable_job(repo.name, job_name).get_definition()  # loaded here
            run_config |= in_process_run_config(job_def.executor_def.name)
        all_tags = normalize_tags(
            {**remote_job.tags, **(tags or {}), **partition_tags(partition_key, partition_range)}
        )
        plan = location.get_execution_plan(
            remote_job, dict(run_config), step_keys_to_execute=None, known_state=None, instance=instance
        ).execution_plan_snapshot
        run = instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=dict(run_config),
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=all_tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repo.asset_graph,
        )
        try:
            return instance.submit_run(run.run_id, workspace)
        except BaseException:  # Ctrl-C or a failure while submitting: leave no run that never ends
            current = instance.get_run_by_id(run.run_id)
            if current is not None and current.status in (
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.QUEUED,
            ):
                instance.report_run_canceled(current, message="bids-hub-dagster stopped while submitting it.")
            raise


def follow_run(
    instance: dg.DagsterInstance,
    run_id: str,
    *,
    timeout: float,
    poll_interval: float = 1.0,
    on_change: Callable[[dg.DagsterRun], None] | None = None,
    stop_timeout: float = 30.0,
) -> dg.DagsterRun:
    """Wait until the run ends (at most ``timeout`` s, else :class:`RunWaitTimeout`); the ended run.

    ``on_change(run)`` is called each time its status changes. Ctrl-C (or the CLI's SIGTERM,
    :class:`.runs.Interrupted`) asks for the run to stop: a queued run is canceled, a running one is
    reported canceling and its launcher told to terminate it; this waits at most ``stop_timeout`` s for
    it to end, then re-raises.
    """
    deadline = time.monotonic() + timeout
    last: dg.DagsterRunStatus | None = None
    try:
        while True:
            run = instance.get_run_by_id(run_id)
            if run is None:
                raise LaunchError(f"run {run_id} is not in the instance any more (deleted?)")
            if run.status != last:
                last = run.status
                if on_change is not None:
                    on_change(run)
            if run.status in FINISHED:
                return run
            if time.monotonic() >= deadline:
                hint = _HINTS.get(run.status, "")
                raise RunWaitTimeout(
                    f"run {run_id} ({run.job_name}) is still {run.status.value} after {timeout:g} s"
                    + (f"; {hint}" if hint else ""),
                    run_id,
                    run.status,
                )
            time.sleep(poll_interval)
    except (KeyboardInterrupt, Interrupted):
        stop_run(instance, run_id, stop_timeout)
        raise


def stop_run(instance: dg.DagsterInstance, run_id: str, timeout: float = 30.0) -> dg.DagsterRun | None:
    """Ask the run to stop (see :func:`follow_run`); wait at most ``timeout`` s for it to end; the run.

    A run still not ended then is recorded canceled and its pool slots are freed.
    """
    run = instance.get_run_by_id(run_id)
    if run is None or run.status in FINISHED:
        return run
    message = "bids-hub-dagster was interrupted: stopping the run."
    if run.status == dg.DagsterRunStatus.QUEUED:
        instance.report_run_canceling(run, message=message)
        instance.report_run_canceled(run, message="bids-hub-dagster was interrupted: canceled in the queue.")
    else:
        if run.status != dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceling(run, message=message)
        try:
            instance.run_launcher.terminate(run_id)
        except Exception:  # noqa: BLE001  (run monitoring ends it after cancel_timeout_seconds)
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in FINISHED:
            return run
        time.sleep(0.5)
    # not ended in time (e.g. its task was revoked before a worker started it, so no run worker is left
    # to say so): record it canceled and free its pool slots, as the local runs are
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in FINISHED:
        instance.report_run_canceled(
            run,
            message=f"bids-hub-dagster was interrupted; the run did not end "
            f"within {timeout:g} s of being told to stop.",
        )
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return instance.get_run_by_id(run_id)


def launch_job(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    timeout: float,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    poll_interval: float = 1.0,
    on_change: Callable[[dg.DagsterRun], None] | None = None,
    module: str = DEFINITIONS_MODULE,
    location_name: str = LOCATION_NAME,
    working_directory: str | None = None,
) -> dg.DagsterRun:
    """Submit a run of ``job_name`` (:func:`submit_job`) and follow it to its end (:func:`follow_run`).

    Prints nothing; the final run (``run.status``: SUCCESS, FAILURE or CANCELED). ``timeout`` bounds the
    whole wait, queueing included.
    """
    run = submit_job(
        instance,
        job_name,
        run_config=run_config,
        tags=tags,
        partition_key=partition_key,
        partition_range=partition_range,
        module=module,
        location_name=location_name,
        working_directory=working_directory,
    )
    return follow_run(instance, run.run_id, timeout=timeout, poll_interval=poll_interval, on_change=on_change)
