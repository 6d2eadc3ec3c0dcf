"""Building a range of shards in one process: a few at a time, in threads, each on its own.

One run of the shard job builds a range of shard partitions (``shards_per_run``; the CLI
groups the stale ones the same way). The index, the dataset and the plan are loaded once
for the range; the shards are built by a small pool of threads (the work is file reads,
zlib and Arrow, which release the GIL), and each shard's outcome is handed back as soon as
it is known, so the caller records it on its own partition: a failed shard fails alone.

Stopping (Ctrl-C, a canceled run): the consumer leaves the iteration (an exception, or
closing the generator); every shard not started is dropped, and the shards being built
stop at their next row group (:func:`until_stopped`), their temporary files removed by
the atomic writer. The wait for them is bounded by ``grace`` seconds.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_AUTO_THREADS = 4  # shards built at a time by default: the work is I/O- and zlib-bound


class ShardBuildStopped(Exception):
    """Raised inside a shard's build when the range is being stopped (its file is not kept)."""


@dataclass(frozen=True)
class ShardOutcome(Generic[T]):
    """What became of one shard: its result, or the exception its build raised."""

    key: str
    result: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, and a container's CPU quota (cgroup v2
    ``cpu.max``, what a Kubernetes cpu limit sets) when it is lower. ``os.cpu_count()`` counts
    the whole node's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read: the affinity counts
    return max(1, cores)


def default_threads(num_shards: int, requested: int = 0) -> int:
    """Shards built at a time: ``requested`` when given (> 0), else one per available core
    (:func:`available_cpus`), at most 4; never more than the shards there are."""
    wanted = requested if requested > 0 else min(available_cpus(), MAX_AUTO_THREADS)
    return max(1, min(wanted, num_shards))


def until_stopped(groups: Iterable[T], stop: threading.Event) -> Iterator[T]:
    """``groups``, checking ``stop`` before each one: a shard being written stops between row groups."""
    for group in groups:
        if stop.is_set():
            raise ShardBuildStopped("stopped")
        yield group


def build_range(
    keys: list[str],
    build: Callable[[str, threading.Event], T],
    threads: int,
    grace: float = 5.0,
) -> Iterator[ShardOutcome[T]]:
    """Build every key with ``build(key, stop)``, ``threads`` at a time; yield each outcome as it ends.

    Outcomes come in completion order. An exception raised by ``build`` becomes that key's
    outcome (the others go on). When the consumer stops iterating early (an interrupt, or
    ``close()``), ``stop`` is set, shards not started are dropped, and the running ones are
    waited for at most ``grace`` seconds (they stop at their next row group).
    """
    if not keys:
        return
    stop = threading.Event()
    if threads <= 1:  # in this thread: nothing to coordinate
        try:
            for key in keys:
                yield _outcome(key, build, stop)
        finally:
            stop.set()
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard")
    futures = {pool.submit(_outcome, key, build, stop): key for key in keys}
    finished = False
    try:
        for future in concurrent.futures.as_completed(futures):
            yield future.result()  # _outcome never raises
        finished = True
    finally:
        if not finished:
            stop.set()
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures, timeout=grace)
        pool.shutdown(wait=finished, cancel_futures=True)


def _outcome(key: str, build: Callable[[str, threading.Event], T], stop: threading.Event) -> ShardOutcome[T]:
    if stop.is_set():
        return ShardOutcome(key, error=ShardBuildStopped("stopped before it started"))
    try:
        return ShardOutcome(key, result=build(key, stop))
    except Exception as exc:  # noqa: BLE001  (the caller records it on the shard's own partition)
        return ShardOutcome(key, error=exc)
