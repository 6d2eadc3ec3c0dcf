"""``python -m bids_hub_dagster.cluster SPEC.yaml``: the run resources of a spec's shard runs.

Prints the figures and the Helm chart's ``runK8sConfig`` block for them (what
deploy/helm/values.yaml holds for the default spec), to paste into your values when the
spec's shards, row groups or ``shards_per_run`` differ from the defaults.
"""

from __future__ import annotations

import sys

import yaml

from ..errors import UserError
from ..pipeline.shard_range import MAX_AUTO_THREADS
from ..spec import load_spec
from .sizing import chart_run_k8s_config, run_resources


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bids_hub_dagster.cluster SPEC.yaml", file=sys.stderr)
        return 2
    try:
        spec = load_spec(argv[0])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resources = run_resources(spec.max_shard_size, spec.row_group_size, spec.shards_per_run, MAX_AUTO_THREADS)
    print(
        f"# {spec.name}: {resources.shards_in_flight} shard(s) in flight per run; "
        f"requests {resources.requests()}, limits {resources.limits()}"
    )
    block = {"runLauncher": {"config": {"k8sRunLauncher": {"runK8sConfig": chart_run_k8s_config(resources)}}}}
    print(yaml.safe_dump(block, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
