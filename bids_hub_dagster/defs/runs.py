"""The CLI's runs on the instance: who runs them, runs whose process is gone, pool slots, interrupts.

Every run the CLI makes carries the pid, the pid's start time and the host of the process
that executes it (:func:`process_tags`). Before it launches anything, the CLI sweeps the
instance (:func:`sweep`): a run of this host still marked in progress whose process is gone
(killed with ``kill -9``, out of memory, a closed laptop) is marked failed and its
concurrency slots are freed, and so are the slots still held by runs that have ended.

Jobs execute under a watchdog (:func:`execute_job`): Ctrl-C or SIGTERM stop the run within
seconds, and it ends canceled, even where Dagster's in-process executor never looks at
signals (its loop that waits for a pool slot, which spins without sleeping); a step that
waits for a pool slot waits at most the slot timeout, saying which run holds the slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.utils import make_new_run_id

from ..errors import ConfigError

PID_TAG = "bids_hub/pid"
HOST_TAG = "bids_hub/host"
START_TAG = "bids_hub/pid_start"  # the process's start time (clock ticks after boot): pids are reused
# a CLI run is resumed by running the same command again, never re-executed by the daemon
MAX_RETRIES_TAG = "dagster/max_retries"
IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
#: seconds a run gets to stop by itself after an interrupt, before it is marked canceled anyway
STOP_GRACE_SECONDS = 10.0
SLOT_TIMEOUT_ENV = "BIDS_HUB_SLOT_TIMEOUT"
DEFAULT_SLOT_TIMEOUT = 600.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the CLI (or a shard worker): stop, leave nothing half-done."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for Ctrl-C, 143 for SIGTERM


class SlotTimeout(Exception):
    """A pool slot stayed taken longer than the slot timeout."""


def slot_timeout(value: float | None = None) -> float:
    """``value`` (``--slot-timeout``), else ``$BIDS_HUB_SLOT_TIMEOUT``, else 600 seconds."""
    if value is not None:
        return float(value)
    raw = os.environ.get(SLOT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_SLOT_TIMEOUT
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{SLOT_TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to e.g. 600."
        ) from None


# --- who runs a run ------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks after boot (Linux), or None."""
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5)


def process_tags() -> dict[str, str]:
    """Tags naming the process that executes a run (this one)."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), MAX_RETRIES_TAG: "0"}
    if started := _start_time(os.getpid()):
        tags[START_TAG] = started
    return tags


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if started is None:
        return True
    now = _start_time(pid)
    return now is None or now == started  # another start time: the pid was reused


def gone_reason(run: dg.DagsterRun) -> str | None:
    """Why ``run``'s process is known to be gone, or None (alive, another host's, not the CLI's)."""
    tags = run.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if process_alive(pid, tags.get(START_TAG)):
        return None
    return f"its process {pid} is gone"


def _process_start_epoch(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (Linux), or None."""
    ticks = _start_time(pid)
    try:
        btime = next(
            float(line.split()[1])
            for line in open("/proc/stat", encoding="ascii").read().splitlines()
            if line.startswith("btime ")
        )
        return btime + int(ticks) / os.sysconf("SC_CLK_TCK") if ticks is not None else None
    except (OSError, StopIteration, ValueError):
        return None


def worker_gone_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why the run worker of a started run launched on this machine is gone, or None.

    For runs the CLI did not make (the UI's, launched by the local run launcher): the
    run worker's pid is the pid of the run's RUN_START event. A pid whose process started
    after the run did belongs to another process now.
    """
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    if not records or records[0].event_log_entry.dagster_event is None:
        return None
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid
    if pid is None:
        return None
    if not process_alive(pid):
        return f"its run worker (pid {pid}) is gone"
    started = _process_start_epoch(pid)
    if started is not None and started > entry.timestamp + 5:
        return f"its run worker (pid {pid}) is gone (the pid now belongs to a process started later)"
    return None


def _local_launcher(instance: dg.DagsterInstance) -> bool:
    """Whether the instance launches run workers as processes of this machine."""
    from dagster._core.launcher.default_run_launcher import DefaultRunLauncher

    return isinstance(instance.run_launcher, DefaultRunLauncher)


def describe_run(instance: dg.DagsterInstance, run_id: str) -> str:
    """``run 1a2b3c4d (demo_upload, pid 123 on host, started 16:20:11 UTC)`` for messages."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return f"run {run_id} (no longer in the instance)"
    run = record.dagster_run
    facts = [run.job_name, str(run.status.value).lower()]
    if PID_TAG in run.tags:
        facts.append(f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}")
    when = record.start_time or record.create_timestamp.timestamp()
    if when:
        stamp = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
        facts.append(f"started {stamp:%Y-%m-%d %H:%M:%S} UTC")
    return f"run {run_id} ({', '.join(facts)})"


# --- the sweep -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Swept:
    failed: list[tuple[str, str]]  # (run id, job name) of runs marked failed
    freed: list[str]  # runs whose slots were freed

    def summary(self) -> str | None:
        if not self.failed:
            return None
        runs = ", ".join(f"{run_id} ({job})" for run_id, job in self.failed)
        return (
            f"marked {len(self.failed)} run(s) failed, their process being gone (killed?), "
            f"and freed their concurrency slots: {runs}"
        )


def sweep(instance: dg.DagsterInstance) -> Swept:
    """Mark failed the in-progress runs of this host whose process is gone; free slots of ended runs.

    CLI runs are known by their tags; the UI's runs, when the instance launches run
    workers on this machine (the local run launcher), by the pid of their RUN_START event.
    The CLI sweeps before each publish; the ``bids_hub_dead_runs`` sensor sweeps every
    minute in the daemon, because Dagster's run monitoring cannot see a local run worker
    die (only ``max_runtime_seconds`` would end such a run, after a day).
    """
    failed: list[tuple[str, str]] = []
    freed: list[str] = []
    host = socket.gethostname()

    def mark_failed(run: dg.DagsterRun, reason: str, then: str) -> None:
        instance.report_run_failed(
            run,
            message=f"Marked failed by bids-hub-dagster: {reason} (killed?). {then}",
            job_failure_data=JobFailureData(
                error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION
            ),
        )
        failed.append((run.run_id, run.job_name))

    for run in instance.get_runs(filters=RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: host})):
        if (reason := gone_reason(run)) is not None:
            mark_failed(run, reason, "Run the same command again.")
    if _local_launcher(instance):  # the UI's runs: their workers run on this machine too
        for run in instance.get_runs(filters=RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            if PID_TAG not in run.tags and (reason := worker_gone_reason(instance, run)) is not None:
                mark_failed(run, reason, "Re-execute it.")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                freed.append(run_id)
    return Swept(failed=failed, freed=freed)


def _pool_limit(info) -> int | None:
    """The pool's slots: its limit (set, or the instance's default), None when it has no limit."""
    if info.limit is not None:
        return info.limit
    return info.slot_count or None


def pool_holders(instance: dg.DagsterInstance, pool: str, own_run_id: str | None = None) -> list[str] | None:
    """The runs whose claims fill ``pool`` (other than ``own_run_id``; none if it has no slot), or None
    when a slot is free."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    info = storage.get_concurrency_info(pool)
    limit = _pool_limit(info)
    if limit is None:
        return None  # no limit on this pool
    holders = [s.run_id for s in info.claimed_slots if s.run_id != own_run_id]
    ours = [s for s in info.claimed_slots if s.run_id == own_run_id]
    if own_run_id is not None and ours:
        return None  # we hold it
    if len(holders) < limit:
        return None
    return list(dict.fromkeys(holders))


def waiting_in_pool(instance: dg.DagsterInstance, pool: str, run_id: str) -> bool:
    """Whether a step of ``run_id`` waits for a slot of ``pool`` (claimed nothing yet)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return False
    info = storage.get_concurrency_info(pool)
    if any(s.run_id == run_id for s in info.claimed_slots):
        return False
    return any(p.run_id == run_id for p in info.pending_steps)


class PoolWait:
    """Bounds the time a publish waits for a pool slot, saying what it waits for."""

    def __init__(self, instance: dg.DagsterInstance, pool: str, timeout: float, echo: Callable[[str], None]):
        self.instance, self.pool, self.timeout, self.echo = instance, pool, timeout, echo
        self.started: float | None = None
        self._said: set[str] = set()

    def blocked(self, own_run_id: str | None = None) -> list[str] | None:
        """The runs holding the pool now (after a sweep), or None; raises SlotTimeout past the bound."""
        holders = pool_holders(self.instance, self.pool, own_run_id)
        if holders:
            swept = sweep(self.instance)
            if summary := swept.summary():
                self.echo(summary)
            holders = pool_holders(self.instance, self.pool, own_run_id)
        if holders is None:
            return None
        self.started = self.started or time.monotonic()
        waited = time.monotonic() - self.started
        described = "; ".join(describe_run(self.instance, r) for r in holders) or (
            f"no run: the pool has no slot (`dagster instance concurrency set {self.pool} 1` gives it one)"
        )
        if waited >= self.timeout:
            raise SlotTimeout(self.timeout_message(holders, described))
        if described not in self._said:
            self._said.add(described)
            self.echo(
                f"waiting for the {self.pool} pool slot held by {described}; "
                f"giving up after {self.timeout:g} s ({SLOT_TIMEOUT_ENV} or --slot-timeout)"
            )
        return holders

    def wait(self) -> None:
        """Return once a slot of the pool is free (before launching the run that needs it)."""
        while self.blocked() is not None:
            time.sleep(1.0)

    def timeout_message(self, holders: list[str], described: str) -> str:
        first = holders[0] if holders else "RUN_ID"
        return (
            f"the {self.pool} pool slot is still held by {described} after {self.timeout:g} s; "
            "nothing was published.\n"
            f"If that run is working (another publish), wait for it and run the same command again "
            f"(or raise --slot-timeout / {SLOT_TIMEOUT_ENV}). If it is stuck: stop its process "
            "(`kill PID`, or terminate it in the Dagster UI), then run the same command again: runs "
            "whose process is gone are marked failed and their slots freed. A run of the UI that "
            f"stays in progress: `dagster run delete --force {first}` (with this DAGSTER_HOME) deletes it and "
            "frees its slot."
        )


# --- executing a job under a watchdog ------------------------------------------------------

#: seconds a run gets to stop at Dagster's own interrupt checkpoints (in user code) before the
#: watchdog raises the interrupt wherever the run is (e.g. in the executor's loop waiting for a slot)
ESCALATE_SECONDS = 2.0
#: the signal the watchdog sends the main thread to raise the interrupt there: it also ends a sleep
ESCALATE_SIGNAL = signal.SIGUSR1
_PROCESS = {"in_run": False, "escalate": False}


def _on_escalate(signum, frame) -> None:
    if _PROCESS["escalate"] and _PROCESS["in_run"]:
        _PROCESS["escalate"] = False
        raise DagsterExecutionInterruptedError()


def _escalate(thread_id: int) -> None:
    """Raise the interrupt in the main thread wherever it is (a sleep, Dagster's executor loop)."""
    if thread_id == threading.main_thread().ident and signal.getsignal(ESCALATE_SIGNAL) is _on_escalate:
        _PROCESS["escalate"] = True
        signal.pthread_kill(thread_id, ESCALATE_SIGNAL)
    else:
        exc = ctypes.py_object(DagsterExecutionInterruptedError)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def end_run(instance: dg.DagsterInstance, run_id: str, message: str) -> None:
    """Mark ``run_id`` canceled unless it ended, and free its concurrency slots."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message=message)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


class _Watchdog:
    """Watches a run executing in the main thread: signals that reach it, and its wait for a pool slot.

    Dagster's in-process execution captures SIGINT and SIGTERM and raises them only inside
    user code; its loop that waits for a pool slot never looks. The signal still reaches
    the wakeup fd this sets, so the watchdog learns of it: it reports the run canceling
    (so it ends canceled), gives Dagster :data:`ESCALATE_SECONDS` to stop it at a
    checkpoint, then raises the interrupt in the main thread itself (with
    :data:`ESCALATE_SIGNAL`, which also ends a sleep); after
    :data:`STOP_GRACE_SECONDS` it marks the run canceled and ends the process.
    """

    def __init__(
        self, instance, run_id: str, pool_wait: PoolWait | None, on_abandon: Callable[[BaseException], None]
    ):
        self.instance, self.run_id, self.pool_wait, self.on_abandon = instance, run_id, pool_wait, on_abandon
        self.signum: int | None = None
        self.timeout: SlotTimeout | None = None
        self.done = threading.Event()
        self._runner = threading.current_thread().ident  # the thread executing the run
        self._sockets = None
        self._old_fd = -1
        self._old_mask = None

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.signal(ESCALATE_SIGNAL, _on_escalate)  # kept: it does nothing outside a stop
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._sockets = (reader, writer)
            self._old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name=f"watchdog-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        if main:
            # The main thread holds Ctrl-C back (the watchdog thread takes it; Dagster's handler still
            # runs in the main thread): the processes the run starts (Dagster's log tails and their
            # watchers) inherit the block, so a terminal's Ctrl-C does not make them print tracebacks.
            self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        return self

    def __exit__(self, exc_type, exc, tb):
        self.done.set()
        _PROCESS["escalate"] = False
        if self._sockets is not None:
            signal.set_wakeup_fd(self._old_fd)
        self._thread.join(2.0)
        if self._sockets is not None:
            if self.signum is None and (late := self._signals()):  # the run ended before the watchdog looked
                self.signum = late[0]
            for sock in self._sockets:
                sock.close()
        try:
            self._finish(exc)
        finally:
            if self._old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        return False

    def _finish(self, exc: BaseException | None) -> None:
        stopped = self.signum is not None or self.timeout is not None
        if isinstance(exc, Interrupted) and self.signum is None:
            self.signum = exc.signum
            stopped = True
        if stopped:
            end_run(self.instance, self.run_id, "bids-hub-dagster was interrupted: the run was stopped.")
            if self.timeout is not None:
                raise self.timeout from None
            raise Interrupted(self.signum or signal.SIGINT) from None

    def _signals(self) -> list[int]:
        if self._sockets is None:
            return []
        try:
            return [b for b in self._sockets[0].recv(64) if b in (signal.SIGINT, signal.SIGTERM)]
        except BlockingIOError:
            return []

    def _watch(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        checked = time.monotonic()
        while not self.done.wait(0.1):
            if received := self._signals():
                self.signum = self.signum or received[0]
                return self._stop()
            if self.pool_wait is not None and time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                try:
                    if waiting_in_pool(self.instance, self.pool_wait.pool, self.run_id):
                        self.pool_wait.blocked(own_run_id=self.run_id)
                except SlotTimeout as exc:
                    self.timeout = exc
                    return self._stop(escalate_now=True)
                except Exception:  # noqa: BLE001  (a busy database: look again in a second)
                    pass

    def _stop(self, escalate_now: bool = False) -> None:
        with contextlib.suppress(Exception):
            run = self.instance.get_run_by_id(self.run_id)
            if run is not None and not run.is_finished and run.status != dg.DagsterRunStatus.CANCELING:
                self.instance.report_run_canceling(
                    run, message="bids-hub-dagster was interrupted: stopping the run."
                )
        started = time.monotonic()
        raised_at = None
        while not self.done.wait(0.1):
            waited = time.monotonic() - started
            if waited >= STOP_GRACE_SECONDS:
                break
            if (escalate_now or waited >= ESCALATE_SECONDS) and (
                raised_at is None or time.monotonic() - raised_at >= 2.0
            ):
                _escalate(self._runner)
                raised_at = time.monotonic()
        if self.done.is_set():
            return
        # the run did not stop (a call that does not return): record it, and end the process
        reason: BaseException = Interrupted(self.signum) if self.signum else self.timeout or Interrupted()
        code = reason.exit_code if isinstance(reason, Interrupted) else 1
        with contextlib.suppress(Exception):
            end_run(
                self.instance, self.run_id, "bids-hub-dagster was interrupted; the run did not stop in time."
            )
        with contextlib.suppress(BaseException):
            self.on_abandon(reason)
        os._exit(code)


def _no_cleanup(reason: BaseException) -> None:
    pass


def execute_job(
    job,
    instance: dg.DagsterInstance,
    *,
    run_config: dict,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    pool_wait: PoolWait | None = None,
    on_abandon: Callable[[BaseException], None] = _no_cleanup,
) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process``, tagged with this process, stopped when a signal arrives.

    SIGINT or SIGTERM end the run canceled and raise :class:`Interrupted`. With
    ``pool_wait``, a step that waits for a slot of its pool waits at most the slot timeout
    (:class:`SlotTimeout`). When a run cannot be stopped, ``on_abandon(reason)`` is called
    (the Interrupted or SlotTimeout) and the process exits.
    """
    run_id = run_id or make_new_run_id()
    _PROCESS["in_run"] = True
    try:
        with _Watchdog(instance, run_id, pool_wait, on_abandon):
            return job.execute_in_process(
                instance=instance,
                run_config=run_config,
                partition_key=partition_key,
                raise_on_error=False,
                run_id=run_id,
                tags=dict(tags or {}) | process_tags(),
            )
    finally:
        _PROCESS["in_run"] = False


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Within: SIGINT and SIGTERM are only recorded (cleanup after an interrupt is not interrupted)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda n, f: received.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


DEAD_RUNS_SENSOR = "bids_hub_dead_runs"


def build_dead_run_sensor() -> dg.SensorDefinition:
    """A sensor of the daemon that sweeps the instance (see :func:`sweep`) every minute."""

    @dg.sensor(
        name=DEAD_RUNS_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks failed the runs whose run worker process is gone (killed, out of memory) and "
        "frees their concurrency slots, so that no upload waits for a slot nobody will release.",
    )
    def bids_hub_dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        swept = sweep(context.instance)
        if summary := swept.summary():
            context.log.warning(summary)
        return dg.SkipReason(summary or "every run in progress has its process")

    return bids_hub_dead_runs
