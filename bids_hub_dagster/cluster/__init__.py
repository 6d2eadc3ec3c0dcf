"""Running the pipeline on a cluster: per-run resource requests and the run tags that carry them.

Plain Python (no Dagster import): :mod:`.sizing` turns a spec's shard and row group sizes into
the cpu, memory and scratch storage one shard run needs, and into the tags Dagster's
Kubernetes and Celery run launchers read.
"""

from .sizing import (
    DEFAULT_SECRET,
    SCRATCH_PATH,
    SCRATCH_VOLUME,
    BackfillEstimate,
    RunResources,
    backfill_estimate,
    celery_run_tags,
    chart_run_k8s_config,
    k8s_run_config,
    k8s_run_tags,
    run_resources,
    upload_run_resources,
)

__all__ = [
    "DEFAULT_SECRET",
    "SCRATCH_PATH",
    "SCRATCH_VOLUME",
    "BackfillEstimate",
    "RunResources",
    "backfill_estimate",
    "celery_run_tags",
    "chart_run_k8s_config",
    "k8s_run_config",
    "k8s_run_tags",
    "run_resources",
    "upload_run_resources",
]
