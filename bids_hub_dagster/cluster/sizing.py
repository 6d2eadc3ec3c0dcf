"""What one shard run needs on a cluster, and the run tags that ask a launcher for it.

A run of the shard job builds ``shards_per_run`` shard partitions (k), ``threads`` of them at
a time. Each shard is embedded row group by row group into a local scratch file, hashed,
then uploaded to ``BIDS_HUB_STORAGE``; so a run needs cpu and memory per shard in flight,
and scratch room for the shards in flight.

**Memory.** From the measurements in BENCHMARKS.md (500 MB shards, 100 MB row groups): the
peak RSS of a shard build is 574–740 MB and does not grow with the shard or the dataset
(x1 → x10: core-arrow 574 → 584 MB, core-pandas 698 → 740 MB, through Dagster 604 → 613 MB):
it follows the row group size. A build process holds ~150 MB before its first row group
(Python, pyarrow, datasets) and Dagster adds ~100 MB in the same process; above that, the
parquet writer buffers a group's column chunk beside the Arrow table (~2.5× the group), the
read-ahead of the next group holds one more, and the pandas strategy's round trip more
again: 740 − 150 = 590 MB for 100 MB groups, i.e. ~6× the group. A run on a launcher runs
its steps in a child process of the run worker (Dagster's multiprocess executor), and the run
worker imports the code location too (~200 MB RSS measured for
``import bids_hub_dagster.definitions``). Hence::

    memory request = 200 MB (run worker) + 250 MB (step process) + 6 × row_group_size × shards in flight

``row_group_size: 100MB`` and one shard in flight: 1050 MB, rounded up to 1024 MiB. The limit
is 1.5× the request: a row larger than ``row_group_size`` is a row group of its own, and the
memory follows it.

**CPU.** A shard build keeps one core busy (zlib, Arrow; its threads release the GIL);
250 millicores more for the run worker and Dagster's event writes::

    cpu request = 250m + 1000m × shards in flight          (no limit: throttling only slows a build)

**Scratch (ephemeral storage).** Each shard in flight is written to scratch, then a copy is
put to object storage (multipart), so its bytes are on local disk up to twice; 1 GiB more
for the compute logs staged before their upload, Python's caches and the container's
writable layer::

    ephemeral storage request = 2 × shard size × shards in flight + 1 GiB     (limit: 1.5× that)

Shards in flight = min(k, threads). The run builds ``threads`` at a time; without run config
it takes one per core, at most 4, and inside a container "one per core" counts the node's
cores, not the pod's request (``os.cpu_count()``), so size for the threads it may take. With
``num_shards`` instead of ``max_shard_size`` the shard size is known only once the dataset
is indexed; pass the largest shard you expect.

**The scratch volume** is an ``emptyDir`` at :data:`SCRATCH_PATH` (``BIDS_HUB_SCRATCH``
points there). It has no ``sizeLimit`` on purpose: the pod's ``ephemeral-storage`` limit
already bounds it (the kubelet counts emptyDir use against it), and Dagster deep-merges the
tag's volumes *after* the chart's ``runK8sConfig`` ones by appending lists and dropping only
identical entries, so a ``sizeLimit`` that differs between a spec and the chart default would
leave two volumes of one name in the pod, which the API server refuses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MB = 10**6
MiB = 2**20
GiB = 2**30

#: the RSS of the run worker process (the code location imported; measured ~196 MB)
RUN_WORKER_MEMORY = 200 * MB
#: a step process before its first row group: Python, pyarrow, datasets (~150 MB) + Dagster (~100 MB)
STEP_BASELINE_MEMORY = 250 * MB
#: memory per shard in flight, in row groups: ~5.9× measured with the pandas strategy, rounded up
ROW_GROUPS_IN_MEMORY = 6
#: millicores of the run worker and Dagster's bookkeeping, and per shard in flight
RUN_WORKER_MILLICORES = 250
SHARD_MILLICORES = 1000
#: scratch beyond the shards: staged compute logs, caches, the writable layer
SCRATCH_HEADROOM = GiB
#: limits are this much above the requests (memory and ephemeral storage)
LIMIT_FACTOR = 1.5
#: quantities are rounded up to this many bytes (``Mi`` multiples are what people read)
ROUND_TO = 64 * MiB

#: where the scratch volume is mounted in a run pod; ``BIDS_HUB_SCRATCH`` is set to it
SCRATCH_PATH = "/scratch"
SCRATCH_VOLUME = "bids-hub-scratch"
SCRATCH_ENV = "BIDS_HUB_SCRATCH"
#: the Kubernetes Secret holding HF_TOKEN and the object storage keys (``kubectl create secret ...``)
DEFAULT_SECRET = "bids-hub-secrets"
HUB_TOKEN_KEY = "HF_TOKEN"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

#: the run tag dagster-k8s reads (``dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY``)
K8S_CONFIG_TAG = "dagster-k8s/config"
#: the run tags dagster-celery's CeleryRunLauncher reads (``dagster_celery.tags``)
CELERY_QUEUE_TAG = "dagster-celery/queue"
CELERY_RUN_PRIORITY_TAG = "dagster-celery/run_priority"

#: the backfill daemon queues ~2.5 runs/s here (issue 13); one run per shard at k = 1
RUNS_SUBMITTED_PER_SECOND = 2.5
#: bytes/s one shard build sustains through Dagster, pandas strategy (BENCHMARKS.md: 178 MB/s)
BUILD_BYTES_PER_SECOND = 178 * MB


def _round_up(n: float) -> int:
    return int(math.ceil(n / ROUND_TO) * ROUND_TO)


def _mi(n: int) -> str:
    return f"{n // MiB}Mi"


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}.")
    return value


@dataclass(frozen=True)
class RunResources:
    """The requests and limits of one shard run, in bytes and millicores (see the module docstring)."""

    cpu_millicores: int
    memory_bytes: int
    memory_limit_bytes: int
    ephemeral_storage_bytes: int
    ephemeral_storage_limit_bytes: int
    shards_in_flight: int
    scratch_path: str = SCRATCH_PATH

    def requests(self) -> dict[str, str]:
        """Kubernetes quantities: ``{"cpu": "1250m", "memory": "1024Mi", "ephemeral-storage": "2048Mi"}``."""
        return {
            "cpu": f"{self.cpu_millicores}m",
            "memory": _mi(self.memory_bytes),
            "ephemeral-storage": _mi(self.ephemeral_storage_bytes),
        }

    def limits(self) -> dict[str, str]:
        """Memory and ephemeral storage limits (no cpu limit: throttling a build only slows it)."""
        return {
            "memory": _mi(self.memory_limit_bytes),
            "ephemeral-storage": _mi(self.ephemeral_storage_limit_bytes),
        }


def run_resources(
    max_shard_size: int,
    row_group_size: int,
    shards_per_run: int = 1,
    threads: int = 1,
    scratch_path: str = SCRATCH_PATH,
) -> RunResources:
    """What one run of the shard job needs: ``shards_per_run`` shards, ``threads`` at a time.

    ``max_shard_size`` and ``row_group_size`` are bytes (the spec's parsed values). The
    formulas and the figures behind them are in the module docstring.
    """
    shard = _positive_int(max_shard_size, "max_shard_size")
    group = _positive_int(row_group_size, "row_group_size")
    in_flight = min(_positive_int(shards_per_run, "shards_per_run"), _positive_int(threads, "threads"))
    if not scratch_path.startswith("/"):
        raise ValueError(f"scratch_path must be an absolute path in the container, not {scratch_path!r}.")
    memory = _round_up(RUN_WORKER_MEMORY + STEP_BASELINE_MEMORY + ROW_GROUPS_IN_MEMORY * group * in_flight)
    scratch = _round_up(2 * shard * in_flight + SCRATCH_HEADROOM)
    return RunResources(
        cpu_millicores=RUN_WORKER_MILLICORES + SHARD_MILLICORES * in_flight,
        memory_bytes=memory,
        memory_limit_bytes=_round_up(memory * LIMIT_FACTOR),
        ephemeral_storage_bytes=scratch,
        ephemeral_storage_limit_bytes=_round_up(scratch * LIMIT_FACTOR),
        shards_in_flight=in_flight,
        scratch_path=scratch_path,
    )


#: memory of the upload beyond the run's processes: hashing and the Hub client's transfer buffers
UPLOAD_BUFFERS_MEMORY = 512 * MB


def upload_run_resources(
    max_shard_size: int, files_per_commit: int, scratch_path: str = SCRATCH_PATH
) -> RunResources:
    """What a run of the upload job needs: ``hub_upload`` copies one commit batch of shards
    (``hub: {files_per_commit}``, 50 by default) from object storage to scratch at a time.

    ``ephemeral storage = files_per_commit × shard size + 1 GiB``; memory: the run worker and
    step processes (450 MB, as for a shard run) + 512 MB of transfer buffers; one core.
    """
    shard = _positive_int(max_shard_size, "max_shard_size")
    batch = _positive_int(files_per_commit, "files_per_commit")
    if not scratch_path.startswith("/"):
        raise ValueError(f"scratch_path must be an absolute path in the container, not {scratch_path!r}.")
    memory = _round_up(RUN_WORKER_MEMORY + STEP_BASELINE_MEMORY + UPLOAD_BUFFERS_MEMORY)
    scratch = _round_up(batch * shard + SCRATCH_HEADROOM)
    return RunResources(
        cpu_millicores=RUN_WORKER_MILLICORES + SHARD_MILLICORES,
        memory_bytes=memory,
        memory_limit_bytes=_round_up(memory * LIMIT_FACTOR),
        ephemeral_storage_bytes=scratch,
        ephemeral_storage_limit_bytes=_round_up(scratch * LIMIT_FACTOR),
        shards_in_flight=0,
        scratch_path=scratch_path,
    )


def _secret_env(name: str, secret: str, optional: bool) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name, "optional": optional}}}


def k8s_run_config(
    resources: RunResources,
    *,
    hub_secret: str = DEFAULT_SECRET,
    s3_secret: str | None = DEFAULT_SECRET,
) -> dict[str, Any]:
    """The ``dagster-k8s/config`` of a shard run (Kubernetes field names, as the chart's ``runK8sConfig``).

    ``container_config``: the resources, ``BIDS_HUB_SCRATCH``, the scratch mount, and from
    Secrets ``HF_TOKEN`` (optional: only ``hf://`` destinations need it) and the object
    storage keys ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (required, so that a missing
    Secret stops the pod at its start with Kubernetes naming it; ``s3_secret=None`` leaves
    them out, for pods that get credentials from a cloud role). ``pod_spec_config``: the
    scratch ``emptyDir``.
    """
    for label, name in (("hub_secret", hub_secret), ("s3_secret", s3_secret)):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{label} must be the name of a Kubernetes Secret, not {name!r}.")
    env: list[dict[str, Any]] = [
        {"name": SCRATCH_ENV, "value": resources.scratch_path},
        _secret_env(HUB_TOKEN_KEY, hub_secret, optional=True),
    ]
    if s3_secret is not None:
        env += [_secret_env(key, s3_secret, optional=False) for key in S3_KEYS]
    return {
        "container_config": {
            "resources": {"requests": resources.requests(), "limits": resources.limits()},
            "env": env,
            "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": resources.scratch_path}],
        },
        "pod_spec_config": {"volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {}}]},
    }


def chart_run_k8s_config(
    resources: RunResources,
    *,
    hub_secret: str = DEFAULT_SECRET,
    s3_secret: str | None = DEFAULT_SECRET,
) -> dict[str, Any]:
    """The same as :func:`k8s_run_config`, under the Helm chart's keys (``runLauncher.config.
    k8sRunLauncher.runK8sConfig``: ``containerConfig``, ``podSpecConfig``): the default of runs
    that carry no tag, such as the UI's asset backfills."""
    config = k8s_run_config(resources, hub_secret=hub_secret, s3_secret=s3_secret)
    return {"containerConfig": config["container_config"], "podSpecConfig": config["pod_spec_config"]}


def k8s_run_tags(
    resources: RunResources,
    *,
    hub_secret: str = DEFAULT_SECRET,
    s3_secret: str | None = DEFAULT_SECRET,
) -> dict[str, str]:
    """``{"dagster-k8s/config": JSON}``: the run tag the K8sRunLauncher reads (see :func:`k8s_run_config`).

    Harmless to other launchers, which read no ``dagster-k8s/`` tag.
    """
    config = k8s_run_config(resources, hub_secret=hub_secret, s3_secret=s3_secret)
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True, separators=(",", ":"))}


def celery_run_tags(queue: str | None = None, priority: int | None = None) -> dict[str, str]:
    """The tags dagster-celery's CeleryRunLauncher reads: the queue a run goes to, its priority.

    ``dagster-celery/queue`` (default: the launcher's ``default_queue``; a queue no worker
    consumes leaves the run waiting until run monitoring's start timeout) and
    ``dagster-celery/run_priority`` (an integer; default 0). Nothing is set by default.
    """
    tags: dict[str, str] = {}
    if queue is not None:
        if not isinstance(queue, str) or not queue.strip():
            raise ValueError(f"queue must be the name of a Celery queue, not {queue!r}.")
        tags[CELERY_QUEUE_TAG] = queue
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, not {priority!r}.")
        tags[CELERY_RUN_PRIORITY_TAG] = str(priority)
    return tags


@dataclass(frozen=True)
class BackfillEstimate:
    """Rough figures for building a dataset's shards on a cluster (lower bounds on time)."""

    runs: int
    shards_in_flight: int  # over all concurrent runs
    submit_seconds: float  # the backfill daemon queuing every run
    pass_seconds: float  # moving the dataset's bytes once over the network
    build_seconds: float  # read the BIDS mount + put to object storage, or the builds' cpu if slower
    upload_seconds: float  # get from object storage to scratch + put to the Hub


def backfill_estimate(
    dataset_bytes: int,
    num_shards: int,
    shards_per_run: int,
    threads: int,
    concurrent_runs: int,
    bandwidth_bits_per_second: float,
) -> BackfillEstimate:
    """How long a backfill of every shard takes at least, and how many runs it makes.

    Building moves the dataset twice over the network (read from the shared BIDS mount,
    put to object storage), unless the builds themselves are slower (~178 MB/s per shard
    in flight through Dagster, BENCHMARKS.md); publishing to the Hub moves it twice again
    (object storage to scratch, scratch to the Hub). Pod start-up, the Hub's own speed and
    the storage's limits come on top.
    """
    for name, value in (
        ("dataset_bytes", dataset_bytes),
        ("num_shards", num_shards),
        ("concurrent_runs", concurrent_runs),
    ):
        _positive_int(value, name)
    if not bandwidth_bits_per_second > 0:
        raise ValueError(f"bandwidth_bits_per_second must be positive, not {bandwidth_bits_per_second!r}.")
    k = _positive_int(shards_per_run, "shards_per_run")
    runs = math.ceil(num_shards / k)
    in_flight = min(runs, concurrent_runs) * min(k, _positive_int(threads, "threads"))
    in_flight = min(in_flight, num_shards)
    one_pass = dataset_bytes / (bandwidth_bits_per_second / 8)
    cpu_bound = dataset_bytes / (BUILD_BYTES_PER_SECOND * in_flight)
    return BackfillEstimate(
        runs=runs,
        shards_in_flight=in_flight,
        submit_seconds=runs / RUNS_SUBMITTED_PER_SECOND,
        pass_seconds=one_pass,
        build_seconds=max(2 * one_pass, cpu_bound),
        upload_seconds=2 * one_pass,
    )
