"""Asset checks of the shards, read back from the stored files (see ``dataset.audit``).

Per shard partition (run with each shard, blocking): the NIfTI cells hold NIfTI bytes,
and the shard holds exactly its planned rows. Over all shards (run before ``hub_upload``
by the upload job, and with shard runs too): every row of the dataset is in exactly one
shard; a row twice or a shard of another plan is an error that blocks publishing, shards
not built yet only warn. The published copy's check lives on ``hub_upload``.
"""

from collections.abc import Sequence

import dagster as dg
import pyarrow as pa

from ..dataset.audit import audit_shard_file, row_count_problems, shard_coverage
from ..dataset.shards import ShardPlan
from ..spec import DatasetSpec
from .assets import IO_MANAGER_KEY
from .names import names
from .outcomes import check_metadata


def _result(problems: list[str], warnings: Sequence[str] = (), **metadata: object) -> dg.AssetCheckResult:
    """Failed with ERROR on problems (blocking), with WARN on warnings only (not blocking)."""
    return dg.AssetCheckResult(
        passed=not problems and not warnings,
        severity=dg.AssetCheckSeverity.ERROR if problems else dg.AssetCheckSeverity.WARN,
        metadata=check_metadata([*problems, *warnings], **metadata),
    )


def build_shard_checks(spec: DatasetSpec, shards: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """The checks of one dataset's ``hub_shards``: two per partition, one over all of them."""
    n = names(spec)
    key = shards.key
    index_key = n.bids_index

    def stored(context: dg.AssetCheckExecutionContext):
        return getattr(context.resources, IO_MANAGER_KEY)

    def current_plan(context: dg.AssetCheckExecutionContext) -> tuple[pa.Table, ShardPlan]:
        """The stored index and the shard plan it gives."""
        table = stored(context).read_table(index_key)
        return table, spec.shard_plan(table)

    @dg.asset_check(
        asset=key,
        name=n.checks.shard_files_are_nifti,
        partitions_def=shards.partitions_def,
        blocking=True,
        required_resource_keys={IO_MANAGER_KEY},
        description="Every NIfTI cell of the shard holds bytes with a NIfTI-1/2 header: "
        "no zero-byte, missing or foreign (HTML, text) file.",
    )
    def shard_files_are_nifti(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        with stored(context).local_shard(key, context.partition_key) as path:
            audit = audit_shard_file(path)
        return _result(audit.problems, cells_checked=audit.cells, rows=audit.num_rows)

    @dg.asset_check(
        asset=key,
        name=n.checks.shard_row_count_matches_plan,
        partitions_def=shards.partitions_def,
        blocking=True,
        required_resource_keys={IO_MANAGER_KEY},
        description="The shard holds exactly the rows the current plan gives it.",
    )
    def shard_row_count_matches_plan(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        _, plan = current_plan(context)
        with stored(context).local_shard(key, context.partition_key) as path:
            audit = audit_shard_file(path, check_cells=False)
        problems = audit.problems or row_count_problems(
            audit, context.partition_key, plan.range_of(context.partition_key)
        )
        return _result(problems, rows=audit.num_rows)

    @dg.asset_check(
        asset=key,
        name=n.checks.shards_hold_every_row_once,
        blocking=True,
        required_resource_keys={IO_MANAGER_KEY},
        description="Taken together, the shards of the current plan hold every row of the dataset exactly once.",
    )
    def shards_hold_every_row_once(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        table, plan = current_plan(context)
        audits = {}
        for k in plan.keys():  # under a URL, one shard copied to scratch at a time
            with stored(context).local_shard(key, k) as path:
                audits[k] = audit_shard_file(path, check_cells=False)
        coverage = shard_coverage(audits, table.num_rows, dict(zip(plan.keys(), plan.ranges, strict=True)))
        # shards not built yet only warn: they are normal while a backfill runs, and hub_upload
        # refuses them itself, naming them
        return _result(coverage.errors, coverage.missing, rows=table.num_rows, shards=plan.num_shards)

    return [shard_files_are_nifti, shard_row_count_matches_plan, shards_hold_every_row_once]
