"""``bids-hub-dagster``: the headless entry point.

It runs the same Definitions as the UI (``bids_hub_dagster.defs.build_definitions``) on
a persistent Dagster instance (``$DAGSTER_HOME``, default ``~/.bids_hub_dagster/dagster_home``),
so every run it makes shows up later in ``dagster dev``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import ConfigError, UserError

if TYPE_CHECKING:
    from .spec import DatasetSpec

# Only light modules are imported above: Ctrl-C is the CLI's own from the moment cli() starts, so
# the others (bids → bidsschematools, spec → datasets and pyarrow, Dagster) are imported where used.

DEFAULT_HOME = Path.home() / ".bids_hub_dagster" / "dagster_home"


INSTANCE_YAML = Path(__file__).with_name("dagster.yaml")  # pools, run limits, retries, monitoring


def _ensure_dagster_home() -> Path:
    from .bids.errors import shown

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_HOME))).expanduser()
    config = home / "dagster.yaml"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not config.exists() or not config.read_text(encoding="utf-8").strip():
            # a user's own is kept
            config.write_text(INSTANCE_YAML.read_text(encoding="utf-8"), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"DAGSTER_HOME={shown(home)} cannot be used: {exc.strerror or exc}; set DAGSTER_HOME to a writable folder."
        ) from None
    return home


def _resolve_spec(
    bids_root: str | None,
    spec_path: str | None,
    to: str | None = None,
    row: str | None = None,
    max_shard_size: str | None = None,
    num_shards: int | None = None,
    root_flag: str = "BIDS_ROOT",
) -> DatasetSpec:
    if bool(bids_root) == bool(spec_path):
        raise click.UsageError(f"give either {root_flag} or --spec SPEC.yaml (one of them).")
    from .spec import load_spec, spec_for_folder

    spec = load_spec(spec_path) if spec_path else spec_for_folder(bids_root)
    return spec.with_overrides(destination=to, row=row, max_shard_size=max_shard_size, num_shards=num_shards)


def _failure_message(result) -> str:
    from .defs.outcomes import failure_message

    return failure_message(result.all_events)


def _hub_options(func):
    """Options of Hub destinations; each overrides the spec's ``hub:`` mapping when given."""
    func = click.option(
        "--upload-shards", is_flag=True, default=None, help="Pre-upload each shard as soon as it is built."
    )(func)
    func = click.option(
        "--files-per-commit", type=click.IntRange(1, 100), help="Files per Hub commit (default 50)."
    )(func)
    func = click.option("--commit-message", help="Message of the Hub commits.")(func)
    func = click.option(
        "--create-pr", is_flag=True, default=None, help="Open a pull request instead of writing the branch."
    )(func)
    func = click.option("--revision", help="Hub branch to publish to (created from main when missing).")(func)
    func = click.option(
        "--private/--public", default=None, help="Visibility of the Hub repo when this creates it."
    )(func)
    return func


def _with_hub(spec: DatasetSpec, **options) -> DatasetSpec:
    given = {k: v for k, v in options.items() if v is not None}
    return spec.with_overrides(hub=given) if given else spec


def _spec_options(func):
    func = click.option(
        "--num-shards", type=int, help="Split into exactly N shards (overrides max_shard_size)."
    )(func)
    func = click.option("--max-shard-size", help="Fill shards up to this size, e.g. 500MB, 2GB.")(func)
    func = click.option(
        "--row", type=click.Choice(["session", "subject"]), help="One row per session or subject."
    )(func)
    func = click.option(
        "--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), help="Spec YAML."
    )(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the core does.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Turn BIDS datasets into typed Hugging Face datasets and publish them, through Dagster."""
    # Without -v the runs print nothing themselves: the CLI prints their errors, once.
    ctx.obj = {"log_level": "INFO" if verbose else "CRITICAL"}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


def _quiet(log_level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


#: contiguous stale shards the CLI builds in one run (the spec's shards_per_run when larger): one run's
#: start-up for many shards, each still recorded, checked and failed on its own partition
CLI_SHARDS_PER_RUN = 64


def shard_ranges(partitions: list[str], todo: list[str], size: int) -> list[list[str]]:
    """``todo`` cut into runs of at most ``size`` keys, each contiguous in ``partitions``' order.

    A ranged run covers every partition between its first and last key, so a gap (a shard
    kept because it is unchanged) starts a new range.
    """
    position = {key: i for i, key in enumerate(partitions)}
    ranges: list[list[str]] = []
    for key in sorted(todo, key=position.__getitem__):
        last = ranges[-1] if ranges else None
        if last is not None and len(last) < size and position[key] == position[last[-1]] + 1:
            last.append(key)
        else:
            ranges.append([key])
    return ranges


def _shard_run_config(spec: DatasetSpec, log_level: str, threads: int) -> dict:
    from .defs import names

    op = names(spec).hub_shards.to_python_identifier()
    return _quiet(log_level) | {"ops": {op: {"config": {"threads": threads}}}}


def _range_failures(spec: DatasetSpec, keys: list[str], result) -> dict[str, str]:
    """The shards of a failed ranged run that were not materialized, each with its error."""
    import dagster as dg

    from .defs import names
    from .defs.outcomes import FAILED_SHARDS

    key = names(spec).hub_shards
    built = {
        event.partition
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and event.asset_key == key
    }
    per_shard: dict[str, str] = {}
    for event in result.all_events:
        if event.is_step_failure and (data := event.step_failure_data.user_failure_data) is not None:
            value = data.metadata.get(FAILED_SHARDS)
            if value is not None:
                per_shard |= {str(k): str(v) for k, v in value.value.items()}
    message = _failure_message(result)
    failed = {k: per_shard.get(k, message) for k in keys if k not in built}
    # a run that failed with every shard built (a failed check, a failure after the last shard):
    # none of its shards counts as built for this publish
    return failed or {k: per_shard.get(k, message) for k in keys}


#: how long the CLI follows one run it submitted to a run launcher (queueing included); its run
#: monitoring ends a run that hangs far sooner (max_runtime_seconds)
RUN_WAIT_ENV = "BIDS_HUB_RUN_TIMEOUT"
DEFAULT_RUN_WAIT = 86400.0


def run_wait_timeout() -> float:
    """``$BIDS_HUB_RUN_TIMEOUT`` seconds (default a day): the bound on following one remote run."""
    raw = os.environ.get(RUN_WAIT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_RUN_WAIT
    except ValueError:
        raise ConfigError(f"{RUN_WAIT_ENV}={raw!r} is not a number of seconds.") from None
    if value <= 0:
        raise ConfigError(f"{RUN_WAIT_ENV}={raw!r} must be a positive number of seconds.")
    return value


class _RemoteResult:
    """A run a run launcher executed elsewhere, read back from the instance as the CLI reads a local one."""

    def __init__(self, instance, run):
        import dagster as dg

        self.run = run
        self.success = run.status == dg.DagsterRunStatus.SUCCESS
        self.all_events = [
            r.dagster_event for r in instance.all_logs(run.run_id) if r.dagster_event is not None
        ]

    def get_asset_materialization_events(self) -> list:
        import dagster as dg

        return [e for e in self.all_events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]


@dataclasses.dataclass
class _Jobs:
    """Runs the dataset's jobs: in this process, or through the instance's run launcher (``remote``),
    which queues each run for the daemon and the workers; the CLI then follows it to its end."""

    defs: object
    instance: object
    remote: bool
    on_abandon: object

    def run(
        self, job_name: str, run_config: dict, *, partition_key=None, tags=None, run_id=None, pool_wait=None
    ):
        from .defs import runs

        if not self.remote:
            return runs.execute_job(
                self.defs.resolve_job_def(job_name),
                self.instance,
                run_config=run_config,
                partition_key=partition_key,
                tags=tags,
                run_id=run_id,
                pool_wait=pool_wait,
                on_abandon=self.on_abandon,
            )
        partition = {"dagster/partition": partition_key} if partition_key is not None else {}
        return self.run_all(job_name, [(run_config, (tags or {}) | partition)])[0]

    def run_all(self, job_name: str, batches: list[tuple[dict, dict]]) -> list:
        """Remote only: submit every (run config, tags) at once, so the workers share them; follow each
        (all within one :func:`run_wait_timeout`); on Ctrl-C or a timeout, stop every one of them."""
        from .defs import launch

        submitted = []
        try:
            for run_config, tags in batches:
                submitted.append(
                    launch.submit_job(
                        self.instance, job_name, run_config=_remote_config(run_config), tags=tags
                    )
                )
            deadline = time.monotonic() + run_wait_timeout()
            return [
                _RemoteResult(
                    self.instance,
                    launch.follow_run(
                        self.instance, run.run_id, timeout=max(1.0, deadline - time.monotonic())
                    ),
                )
                for run in submitted
            ]
        except BaseException:  # Ctrl-C, a timeout: none of the runs is left going
            for run in submitted:
                launch.stop_run(self.instance, run.run_id, timeout=10.0)
            raise


def _remote_config(run_config: dict) -> dict:
    """A run config for a remote run: the console loggers' level is this terminal's business, not theirs."""
    return {k: v for k, v in run_config.items() if k != "loggers"}


class _ShardProgress:
    """Moves the progress bar as a run materializes shards (polls the run's event log once a second)."""

    def __init__(self, instance, run_id: str, key, bar):
        self.instance, self.run_id, self.key, self.bar = instance, run_id, key, bar
        self.done = threading.Event()
        self.seen = 0

    def __enter__(self):
        self.thread = threading.Thread(target=self._poll, name="shard-progress", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(2.0)

    def _poll(self) -> None:
        import dagster as dg

        while not self.done.wait(1.0):
            try:
                records = self.instance.get_records_for_run(
                    self.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                ).records
            except Exception:  # noqa: BLE001  (the run not created yet, a busy database: next second)
                continue
            count = sum(
                1
                for r in records
                if r.event_log_entry.dagster_event is not None
                and r.event_log_entry.dagster_event.asset_key == self.key
            )
            if count > self.seen:
                self.bar.update(count - self.seen)
                self.seen = count


def _range_tags(keys: list[str]) -> dict[str, str]:
    if len(keys) == 1:
        return {"dagster/partition": keys[0]}
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def _run_shards(
    spec: DatasetSpec,
    jobs: _Jobs,
    partitions: list[str],
    todo: list[str],
    workers: int,
    log_level: str,
    bar,
) -> dict[str, str]:
    """Build the shard partitions ``todo``: contiguous ranges, one run each, ``workers`` shards at a
    time inside the run (threads). Returns the failures by key.

    In this process, the ranges run one after the other (each uses the cores); through a run
    launcher, ranges of ``shards_per_run`` are all submitted at once, for the workers to share.
    Partitions hold disjoint rows and every file belongs to one row, so no two threads ever
    read the same file.
    """
    from .defs import names, runs
    from .pipeline.shard_range import default_threads

    failures: dict[str, str] = {}
    job_name = names(spec).jobs.shards
    if jobs.remote:
        ranges = shard_ranges(partitions, todo, spec.shards_per_run)
        bar.set_description(f"{spec.name}: {len(ranges)} shard run(s) submitted")
        results = jobs.run_all(
            job_name,
            [
                (_shard_run_config(spec, log_level, min(workers, len(keys))), _range_tags(keys))
                for keys in ranges
            ],
        )
        for keys, result in zip(ranges, results, strict=True):
            if not result.success:
                failures |= _range_failures(spec, keys, result)
            bar.update(len(keys))
        return {k: failures[k] for k in todo if k in failures}
    size = max(spec.shards_per_run, CLI_SHARDS_PER_RUN)
    for keys in shard_ranges(partitions, todo, size):
        threads = default_threads(len(keys), workers)  # as the run resolves it (0: one per core)
        bar.set_description(
            f"{spec.name}: {keys[0]}" + (f"…{keys[-1]} ({threads} at a time)" if len(keys) > 1 else "")
        )
        counted = bar.n
        run_id = runs.make_new_run_id()
        with _ShardProgress(jobs.instance, run_id, names(spec).hub_shards, bar):
            result = jobs.run(
                job_name,
                _shard_run_config(spec, log_level, threads),
                partition_key=keys[0] if len(keys) == 1 else None,
                tags=_range_tags(keys) if len(keys) > 1 else None,
                run_id=run_id,
            )
        if not result.success:
            failures |= _range_failures(spec, keys, result)
        bar.update(max(0, counted + len(keys) - bar.n))  # the failed ones count as done too
    return {k: failures[k] for k in todo if k in failures}


def _check_spec_matches_code_location(spec: DatasetSpec) -> None:
    """Runs on remote workers rebuild the spec from their code location (``BIDS_HUB_SPECS``): the
    spec this command publishes must be that one, overrides and all, or the workers would build
    another dataset than the one this command indexed and plans."""
    from .spec import load_specs

    specs_path = os.environ.get("BIDS_HUB_SPECS")
    served = {s.name: s for s in load_specs(specs_path)} if specs_path else {}
    if served.get(spec.name) is None or served[spec.name].to_yaml() != spec.to_yaml():
        raise click.UsageError(
            f"this instance launches runs on remote workers (its dagster.yaml names a run launcher), which "
            f"load the specs of BIDS_HUB_SPECS ({specs_path or 'unset'}); the spec {spec.name!r} given here "
            f"{'differs from the one there' if spec.name in served else 'is not among them'}. Publish with "
            f"--spec pointing at that spec file and no overrides (--to, --num-shards, ...), with the same "
            "BIDS_HUB_SPECS as the workers."
        )


def _shards_to_build(spec: DatasetSpec, keys: list[str], instance, rebuild: bool = False) -> list[str]:
    """The shard partitions to build: all with ``rebuild``; else the stale ones by the rule the
    sensors follow (``pipeline.refresh.shards_to_build``): never built, sources changed, stored
    file gone, or stored file changed since it was written (rebuilt with a warning).
    """
    if rebuild:
        return list(keys)
    from .defs import names
    from .defs.automation import read_built_state
    from .defs.io_managers import BidsHubParquetIOManager, default_storage_dir
    from .pipeline.refresh import shards_to_build
    from .pipeline.versions import shard_versions

    storage = BidsHubParquetIOManager(base_dir=default_storage_dir())
    n = names(spec)
    table = storage.read_table(n.bids_index)  # just indexed by the prepare run
    current = shard_versions(table, spec.shard_plan(table))
    built = read_built_state(instance, spec).shard_versions
    stale = shards_to_build(
        {k: current[k] for k in keys}, built, lambda key: storage.stored_shard(n.hub_shards, key)
    )
    for shard in stale:
        if shard.warning:
            click.echo(f"warning: {shard.key}: {shard.warning}; rebuilding it", err=True)
    return [shard.key for shard in stale]


#: the temporary files of ``dataset.parquet.atomic_path``: ``.NAME.<8 hex>.tmp``
_PARTIAL_FILE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def _remove_partial_files(instance, spec: DatasetSpec) -> list[Path]:
    """Delete temporary files a killed run left in the dataset's storage and local destination.

    Only when no run of the dataset is in progress: a live one may be writing them.
    """
    from .defs import names, runs
    from .defs.io_managers import default_storage_dir
    from .publish.hub import is_hub_url
    from .storage import is_remote

    jobs = set(names(spec).jobs)
    if any(r.job_name in jobs for r in instance.get_runs(filters=runs.RunsFilter(statuses=runs.IN_PROGRESS))):
        return []
    storage = default_storage_dir()  # a URL holds no partial files: objects appear whole
    candidates = (
        [] if is_remote(storage) else _own_temporary_files(Path(storage) / names(spec).key, recursive=True)
    )
    if spec.destination and not is_hub_url(spec.destination):
        candidates += _destination_temporary_files(Path(spec.destination))
    removed = []
    for path in candidates:
        if _PARTIAL_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _own_temporary_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The ``.NAME.<8 hex>.tmp`` files in ``folder`` (and below, ``recursive``): call only on the tool's folders."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    return list(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"))


def _destination_temporary_files(dest: Path) -> list[Path]:
    """The temporary files the tool can have left in a local destination, which is the user's folder too.

    Only the temporary names of the files the tool writes atomically at its top (``.README.md.<8 hex>.tmp``,
    ``.bids_hub_manifest.json.<8 hex>.tmp``) and the files of its own staging folders (those that carry the
    staging marker): never a walk of the destination, so a user's ``notes/.draft.deadbeef.tmp`` is not touched.
    """
    from .publish.destinations import STAGING_MARKER, STAGING_PREFIX
    from .publish.manifest import MANIFEST_NAME, README
    from .publish.privacy_report import REPORT_NAME

    if not dest.is_dir():
        return []
    found = [
        path
        for name in (README, MANIFEST_NAME, REPORT_NAME)
        for path in dest.glob(f".{name}.*.tmp")  # no glob character in either name
        if re.fullmatch(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp", path.name)
    ]
    for staging in dest.glob(f"{STAGING_PREFIX}*"):
        if staging.is_dir() and not staging.is_symlink() and (staging / STAGING_MARKER).is_file():
            found += _own_temporary_files(staging, recursive=True)
    return found


@dataclasses.dataclass
class _Stop:
    instance: object
    spec: DatasetSpec
    code: int = 0
    bar: object = None

    def finish(self, reason: BaseException) -> None:
        """After an interrupt or a slot timeout: close the bar, clean up, say it once; sets ``code``."""
        from .defs import runs

        if self.bar is not None:
            self.bar.close()
        runs.sweep(self.instance)  # the runs of workers that had to be killed
        _remove_partial_files(self.instance, self.spec)
        if isinstance(reason, runs.SlotTimeout):
            click.echo(f"error: {reason}", err=True)
            self.code = 1
        else:
            click.echo(INTERRUPTED, err=True)
            self.code = reason.exit_code
        sys.stdout.flush()
        sys.stderr.flush()


@contextlib.contextmanager
def _stoppable(instance, spec: DatasetSpec):
    """The publish's frame: sweep the instance first; on Ctrl-C, SIGTERM or a slot timeout, stop cleanly.

    Yields a :class:`_Stop` whose ``code`` is the exit code once an interrupt (130, 143)
    or a slot timeout (1) was handled; the exception is not propagated.
    """
    from .defs import runs

    stop = _Stop(instance, spec)
    try:
        with runs.signals_raise():
            if summary := runs.sweep(instance).summary():
                click.echo(summary, err=True)
            _remove_partial_files(instance, spec)
            yield stop
    except (runs.Interrupted, runs.SlotTimeout) as exc:
        _SIGINT_PENDING.clear()  # handled: nothing to deliver again
        with runs.signals_deferred():  # a second Ctrl-C does not interrupt the cleanup
            stop.finish(exc)


def _shard_warnings(instance, spec: DatasetSpec, keys: list[str]) -> list[str]:
    """The warnings of the shards just built (e.g. NIfTI-2 files), each said once."""
    import dagster as dg

    from .defs import names
    from .defs.summaries import ShardSummary

    key = names(spec).hub_shards
    lines: list[str] = []
    for partition in keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        if records and (shard := ShardSummary.from_metadata(records[0].asset_materialization.metadata)):
            lines += [f"{partition}: {w}" for w in shard.warnings]
    return lines


def run_publish(
    spec: DatasetSpec,
    progress: bool = True,
    log_level: str = "CRITICAL",
    workers: int | None = None,
    slot_timeout: float | None = None,
    rebuild: bool = False,
) -> int:
    """Materialize index, dataset, every shard partition and the upload. Returns an exit code.

    Each step is a real run on the persistent instance; ``log_level`` sets what the
    runs print to the console (everything is stored in the instance's event log).
    Each shard run builds ``workers`` shards at a time, in threads (default: one per available
    core, at most 4; on a remote launcher, the run's own machine decides). The upload
    waits at most ``slot_timeout`` seconds for the ``hub_commits`` pool slot (default
    ``$BIDS_HUB_SLOT_TIMEOUT``, else 600). Ctrl-C (or SIGTERM) stops every run, which
    ends canceled, and returns 130 (143).
    """
    import dagster as dg
    from tqdm import tqdm

    from .defs import build_definitions, names, runs
    from .defs.resources import tool_folders
    from .defs.summaries import IndexSummary, PublishSummary
    from .publish.publication import parse_destination
    from .spec import format_size

    if not spec.destination:
        raise click.UsageError("no destination: pass --to DEST or set `destination:` in the spec.")
    # a malformed destination fails now; the token and repo are checked by the first run
    parse_destination(
        spec.destination, hub=spec.hub, sources=spec.source_folders(), tool_folders=tool_folders()
    )
    if log_level == "CRITICAL":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # one progress bar, ours; -v shows huggingface_hub's upload bars
    _ensure_dagster_home()
    defs = build_definitions([spec])
    n = names(spec)
    jobs = n.jobs
    quiet = _quiet(log_level)
    timeout = runs.slot_timeout(slot_timeout)
    with dg.DagsterInstance.get() as instance, _stoppable(instance, spec) as stop:
        from .defs import launch

        remote = launch.uses_remote_launcher(instance)
        if remote:
            _check_spec_matches_code_location(spec)
        runner = _Jobs(defs, instance, remote, stop.finish)
        bar = stop.bar = tqdm(
            total=2, desc=f"{spec.name}: index", unit="step", disable=not progress, file=sys.stderr
        )
        result = runner.run(jobs.prepare, quiet)
        if not result.success:
            bar.close()
            click.echo(f"error: indexing {spec.bids_root} failed:\n{_failure_message(result)}", err=True)
            from .defs.outcomes import is_user_error

            return 2 if is_user_error(result.all_events) else 1  # 2: as `index` for the same error
        index_event = instance.get_latest_materialization_event(n.bids_index)
        indexed = IndexSummary.from_metadata(index_event.asset_materialization.metadata) or IndexSummary()
        for line in indexed.warnings:
            tqdm.write(f"warning: {line}", file=sys.stderr)
        keys = instance.get_dynamic_partitions(n.shard_partitions)
        todo = _shards_to_build(spec, keys, instance, rebuild=rebuild)
        if len(todo) < len(keys):
            tqdm.write(
                f"{len(keys) - len(todo)} of {len(keys)} shard(s) unchanged since built: kept",
                file=sys.stderr,
            )
        bar.total = len(todo) + 2
        bar.update(1)
        failures = _run_shards(spec, runner, keys, todo, workers or 0, log_level, bar)
        if failures:
            bar.close()
            click.echo(
                f"error: {len(failures)} of {len(keys)} shard(s) failed; nothing was published:", err=True
            )
            for key, message in failures.items():
                click.echo(f"{message}" if message.startswith(key) else f"{key}: {message}", err=True)
            click.echo(
                "Fix the files, then run the same command again, or rematerialize only the failed "
                "hub_shards partitions and then hub_upload from the Dagster UI.",
                err=True,
            )
            return 1
        for line in _shard_warnings(instance, spec, todo):
            tqdm.write(f"warning: {line}", file=sys.stderr)
        bar.set_description(f"{spec.name}: publish")
        pool_wait = None
        if not remote:  # a remote run waits for its slot in the instance's queue (run coordinator)
            pool_wait = runs.PoolWait(
                instance, n.pool, timeout, lambda line: tqdm.write(line, file=sys.stderr)
            )
            pool_wait.wait()  # says which run holds the slot; gives up after the timeout
        result = runner.run(jobs.upload, quiet, pool_wait=pool_wait)
        bar.update(1)
        bar.close()
        if not result.success:
            click.echo(
                f"error: publishing to {spec.destination} failed:\n{_failure_message(result)}", err=True
            )
            return 1
        for event in result.get_asset_materialization_events():
            published = PublishSummary.from_metadata(event.materialization.metadata)
            if published is None:  # not hub_upload
                continue
            click.echo(f"published {spec.name} to {published.destination}")
            click.echo(
                f"files: {published.files_written} written, {published.files_skipped} unchanged, "
                f"{published.files_removed} removed; {format_size(published.bytes_written)} sent"
            )
            if published.commit_urls is not None:
                click.echo(f"commits: {len(published.commit_urls)}")
                click.echo(published.commits_text)
            if published.pull_request:
                click.echo(f"pull request: {published.pull_request}")
            click.echo(f"verified: {published.verification.summary()}")
    return stop.code


@main.command()
@click.argument("bids_root", required=False, type=click.Path(exists=True, file_okay=False))
@_spec_options
@click.option(
    "--to", help="Destination: a folder (laid out like a Hub dataset repo) or hf://datasets/ORG/NAME."
)
@_hub_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Shard runs at a time (default: cores, at most 4)."
)
@click.option(
    "--slot-timeout",
    type=click.FloatRange(min=0),
    help="Seconds to wait for the hub_commits pool slot held by another run (default $BIDS_HUB_SLOT_TIMEOUT, else 600).",
)
@click.option(
    "--rebuild", is_flag=True, help="Build every shard again, even those unchanged since they were built."
)
@click.option(
    "--affirm-defaced",
    is_flag=True,
    help="Affirm that every anatomical image is defaced (required to publish anat images to a public Hub repo; "
    "the card records it). Same as the spec's privacy: {defaced: true}.",
)
@click.pass_obj
def publish(
    obj,
    bids_root,
    spec_path,
    row,
    max_shard_size,
    num_shards,
    to,
    no_progress,
    workers,
    slot_timeout,
    rebuild,
    affirm_defaced,
    **hub,
) -> None:
    """Index, build every shard, publish and verify: BIDS_ROOT --to DEST, or --spec SPEC.

    Publishing to the Hub reads the token from HF_TOKEN (or the saved `hf auth login`).
    Ctrl-C stops every run and exits 130 (SIGTERM: 143); run the same command to resume.
    """
    spec = _with_hub(_resolve_spec(bids_root, spec_path, to, row, max_shard_size, num_shards), **hub)
    if affirm_defaced:
        spec = dataclasses.replace(spec, privacy=dataclasses.replace(spec.privacy, defaced=True))
    sys.exit(
        run_publish(
            spec,
            progress=not no_progress,
            log_level=obj["log_level"],
            workers=workers,
            slot_timeout=slot_timeout,
            rebuild=rebuild,
        )
    )


@main.command()
@click.argument("bids_root", required=False, type=click.Path(exists=True, file_okay=False))
@_spec_options
@click.option("--print-spec", is_flag=True, help="Print the spec (columns inferred where absent) as YAML.")
def index(bids_root, spec_path, row, max_shard_size, num_shards, print_spec) -> None:
    """Summarise what a BIDS folder gives: rows, columns, files and bytes per column, warnings."""
    from .bids.errors import shown
    from .dataset.shards import plan_shards
    from .spec import format_size

    spec = _resolve_spec(bids_root, spec_path, None, row, max_shard_size, num_shards)
    idx = spec.build_index()
    if print_spec:
        # a relative destination resolves against the folder the spec is saved in
        destination = spec.destination or f"./published/{spec.name}"
        click.echo(
            dataclasses.replace(spec, columns=tuple(idx.columns), destination=destination).to_yaml(), nl=False
        )
        return
    plan = plan_shards([r.nbytes for r in idx.rows], spec.max_shard_size, spec.num_shards)
    click.echo(f"dataset   {spec.name}  ({shown(idx.description.get('Name', 'unnamed'))})")
    click.echo(f"root      {shown(idx.root)}")
    click.echo(
        f"rows      {len(idx.rows)} (one per {spec.row}); {len(idx.subjects)} subjects, {idx.sessions} sessions"
    )
    click.echo(f"shards    {plan.num_shards}")
    click.echo("columns")
    files, sizes = idx.files_per_column(), idx.bytes_per_column()
    for c in idx.columns:
        kind = "List(Nifti())" if c.many else "Nifti()"
        where = f"  [{c.scope}]" if c.scope else ""
        click.echo(
            f"  {c.name:<16} {kind:<14} {files[c.name]:>6} files {format_size(sizes[c.name]):>10}{where}"
        )
    if idx.participants.columns:
        click.echo("phenotype " + ", ".join(f"{shown(n)} ({t})" for n, t in idx.participants.columns.items()))
    if idx.session_columns.columns:
        click.echo(
            "sessions  " + ", ".join(f"{shown(n)} ({t})" for n, t in idx.session_columns.columns.items())
        )
    click.echo("validation")
    for line in idx.validation_lines():
        click.echo(f"  {line}")
    report = idx.privacy_report
    if report is not None and report.findings:
        click.echo(report.to_markdown(limit=100))
        if report.blocking:
            click.echo(
                "publishing is blocked until each blocking finding is fixed in the files, or acknowledged "
                "(privacy: {allow: [FIELD]}) or stripped (privacy: {strip: [FIELD]}) in the spec"
            )
    for w in idx.warnings:
        click.echo(f"warning: {w}")


@main.command()
@click.argument("destination")
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), help="Spec YAML.")
@click.option(
    "--bids-root", type=click.Path(exists=True, file_okay=False), help="BIDS folder (columns inferred)."
)
@click.option("--row", type=click.Choice(["session", "subject"]))
@click.option("--revision", help="Hub branch or refs/pr/N to read (Hub destinations).")
def verify(destination, spec_path, bids_root, row, revision) -> None:
    """Load DESTINATION with datasets.load_dataset and compare every file with its source by sha256.

    DESTINATION is a folder or hf://datasets/ORG/NAME[@branch].
    """
    from .publish.destinations import DestinationError
    from .publish.hub import is_hub_url
    from .publish.publication import parse_destination

    spec = _resolve_spec(bids_root, spec_path, None, row, root_flag="--bids-root")
    idx = spec.build_index(gate=False)  # compared with what was published, which the gate let through
    target = parse_destination(destination, hub=_with_hub(spec, revision=revision).hub, for_reading=True)
    if not is_hub_url(destination) and not Path(target.url).is_dir():
        raise DestinationError(f"{destination}: no such folder; nothing to verify.")
    report = target.verify(spec.index_table(idx))
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option(
    "--to", default="./published/demo", show_default=True, help="Where to publish the demo dataset."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where to build the demo BIDS tree (DIR/bids) and spec (DIR/demo.yaml); files the demo did not write are never replaced.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Shard runs at a time (default: cores, at most 4)."
)
@click.pass_obj
def demo(obj, to, workdir, no_progress, workers) -> None:
    """Build a small BIDS dataset from the images nibabel ships, and publish it."""
    from .demo import demo_home, write_demo
    from .spec import load_spec

    _ensure_dagster_home()
    spec_path = write_demo(Path(workdir) if workdir else demo_home())
    click.echo(f"demo BIDS dataset and spec: {spec_path}")
    spec = load_spec(spec_path).with_overrides(destination=to)
    sys.exit(run_publish(spec, progress=not no_progress, log_level=obj["log_level"], workers=workers))


INTERRUPTED = "interrupted; run the same command to resume"


class _CtrlC(BaseException):
    """SIGINT outside a publish's own handling; not a KeyboardInterrupt, which click turns into a
    blank line and ``Abort``."""


_SIGINT_PENDING = threading.Event()  # set by the handler; cleared once the interrupt was handled
_SIGINT_REDELIVER_SECONDS = 0.5


def _on_sigint(signum, frame) -> None:
    _SIGINT_PENDING.set()
    raise _CtrlC()


def _quiet_dropped_interrupt(unraisable, _default=sys.unraisablehook) -> None:
    """An interrupt raised in a finalizer is dropped by Python (and delivered again): say nothing."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, _CtrlC):
        return
    _default(unraisable)


def _redeliver_sigint() -> None:
    """Deliver SIGINT again while an interrupt stays unhandled.

    Python runs a signal handler between any two bytecodes, also inside a finalizer or a
    weakref callback, where an exception is printed as "ignored" and dropped: the
    interrupt would be lost and the publish would go on. Until the main thread has handled
    it, it is sent again every half second.
    """
    while True:
        _SIGINT_PENDING.wait()
        time.sleep(_SIGINT_REDELIVER_SECONDS)
        if _SIGINT_PENDING.is_set():
            os.kill(os.getpid(), signal.SIGINT)


def console() -> None:
    """The ``bids-hub-dagster`` command: :func:`cli`, then the process ends at once.

    Once the command is done (its files closed and renamed, its instance closed), the
    interpreter's own teardown of the ~2,400 modules Dagster and ``datasets`` import takes
    about a second a user waits for; standard streams and logs are flushed, then the process
    exits with the command's code.
    """
    try:
        cli()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def cli() -> None:
    """Console entry point: user errors print a message and exit 2, without a traceback.

    Ctrl-C at any moment prints one line and exits 130 (a publish first stops its runs).
    """
    previous = signal.signal(signal.SIGINT, _on_sigint)  # first: the heavy imports happen under it
    threading.Thread(target=_redeliver_sigint, name="sigint-redeliver", daemon=True).start()
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_dropped_interrupt
    try:
        try:
            _main()
        finally:  # as it was (cli() may be called in a process that goes on, e.g. a test)
            signal.signal(signal.SIGINT, previous)
    except (_CtrlC, KeyboardInterrupt, click.Abort):
        _SIGINT_PENDING.clear()
        with contextlib.suppress(BaseException):
            click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    finally:
        _SIGINT_PENDING.clear()
        sys.unraisablehook = previous_hook


def _main() -> None:
    try:
        main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:  # named in the message; any other exception is a bug: its traceback shows
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
