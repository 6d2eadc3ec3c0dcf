"""The asset factory: one group of assets per dataset spec.

    bids_files[shard-…] (observed) ─┐
    bids_index ──► hf_dataset ──► hub_shards[shard-00000 …] ──► hub_upload

Each body is wiring: read inputs, call one core function, return the value with its
metadata and data version. The logic lives in ``bids_hub_dagster.bids``, ``.dataset`` and
``.publish``; the versions are those of ``pipeline.versions``.
"""

import time
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import pyarrow as pa
from datasets import Dataset

from ..bids.privacy import PrivacyReport
from ..dataset.preview import markdown_png
from ..dataset.preview_config import first_thumbnails, mosaic, one_per_subject, read_previews
from ..dataset.shards import EmbeddedShard, build_shard, shard_index
from ..dataset.tables import IndexInfo, dataset_from_index
from ..errors import UserError
from ..pipeline.versions import (
    index_fingerprint,
    plan_version,
    publication_version,
    shard_versions,
    structure_version,
)
from ..publish.destinations import DestinationError, Link, LocalFolder, Markdown
from ..publish.hub import HubTransientError, is_hub_url
from ..publish.privacy_report import REPORT_NAME, write_privacy_report
from ..publish.publication import publish_shards
from ..spec import DatasetSpec, format_size
from .io_managers import preview_file
from .names import names
from .outcomes import user_failure
from .resources import HUB_RESOURCE_KEY, HubResource
from .summaries import IndexSummary, PublishSummary, ShardSummary

IO_MANAGER_KEY = "bids_hub_io_manager"
# transient Hub faults are retried inside the upload; this retries the whole step after an outage
UPLOAD_RETRY = dg.RetryPolicy(
    max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# a shard step that died of something passing (a full disk being cleaned, an NFS hiccup); bad
# files fail for good (dg.Failure without retries)
SHARD_RETRY = dg.RetryPolicy(max_retries=1, delay=30, backoff=dg.Backoff.EXPONENTIAL)
CARD_PREVIEW_CHARS = 4000
QC_THUMBNAILS = 8  # thumbnails in a shard's QC mosaic (its first rows)
QC_MOSAIC_BYTES = 200_000  # an inline PNG in the event log: small
CARD_THUMBNAILS = 4  # thumbnails in preview.png, shown by the card
CARD_PICTURE_BYTES = 400_000
SUBJECT_THUMBNAILS = 24  # subjects in the publish asset's mosaic
DATA_VERSION_TAG = "dagster/data_version"


def _markdown_table(rows: list[dict], limit: int = 10) -> str:
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        lines.append("| " + " | ".join(str(r[c]) if r[c] is not None else "" for c in cols) + " |")
    if len(rows) > limit:
        lines.append(f"\n… {len(rows) - limit} more rows")
    return "\n".join(lines)


def _lines_table(lines: list[str]) -> str:
    """Summary lines (``label   value``) as a two-column markdown table."""
    rows = ["| | |", "|---|---|"]
    for line in lines:
        label, _, value = line.strip().partition("  ")
        rows.append(f"| {label.strip()} | {value.strip()} |")
    return "\n".join(rows)


def _privacy_markdown(report: PrivacyReport | None) -> str:
    if report is None:
        return "(the privacy gate did not run)"
    if not report.findings:
        return "No findings: no identifying sidecar key, header text or table column was found."
    return f"{report.summary_line()}\n\n{report.to_markdown(limit=200)}"


def _column_schema(schema: pa.Schema, descriptions: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, str(f.type), description=descriptions.get(f.name)) for f in schema]
    )


def _metadata_values(values: Mapping[str, object]) -> dict[str, object]:
    """A destination's metadata (plain values) as Dagster shows it: paths, links and markdown typed."""

    def typed(value: object) -> object:
        if isinstance(value, Path):
            return dg.MetadataValue.path(str(value))
        if isinstance(value, Link):
            return dg.MetadataValue.url(str(value))
        if isinstance(value, Markdown):
            return dg.MetadataValue.md(str(value))
        return value

    return {k: typed(v) for k, v in values.items()}


def _preupload(
    context: dg.AssetExecutionContext, spec: DatasetSpec, shard: object, num_shards: int
) -> tuple[object, dict[str, object]]:
    """Send a built shard to the destination ahead of the publish, when it takes one (the Hub).

    Returns what the asset outputs (the stored shard file, or ``shard`` unchanged) and the
    pre-upload's metadata. A failed pre-upload is a warning: hub_upload sends the file anyway.
    """
    hf_hub: HubResource = getattr(context.resources, HUB_RESOURCE_KEY)
    try:
        destination = hf_hub.destination(spec, progress=context.log.info)
    except DestinationError as exc:
        context.log.warning(f"no pre-upload; hub_upload will publish the shard: {exc}")
        return shard, {}
    if not destination.supports_preupload:  # a local folder links the stored shards when publishing
        return shard, {}
    key = context.partition_key
    # store the file now, so its bytes can go to the destination before the run ends
    stored = getattr(context.resources, IO_MANAGER_KEY).store_shard(context.asset_key, key, shard)
    try:
        sent = destination.preupload_shard(stored.path, shard_index(key), num_shards)
    except (DestinationError, HubTransientError) as exc:  # the upload sends it later anyway
        context.log.warning(f"pre-upload to {destination.url} failed; hub_upload will send it: {exc}")
        sent = 0
    return stored, {"hub_bytes_sent": sent} | _metadata_values(destination.metadata())


def _published_pictures(previews: list[Path]) -> dict[str, bytes]:
    """From the built previews: the card's picture (the first thumbnails) and one row per subject."""
    existing = [p for p in previews if p.is_file()]  # a missing one: publish_shards names it
    out: dict[str, bytes] = {}
    card = mosaic(first_thumbnails(read_previews(existing), CARD_THUMBNAILS), max_bytes=CARD_PICTURE_BYTES)
    if card is not None:
        out["card"] = card
    subjects = mosaic(one_per_subject(read_previews(existing), SUBJECT_THUMBNAILS), max_bytes=QC_MOSAIC_BYTES)
    if subjects is not None:
        out["subjects"] = subjects
    return out


def _keep_privacy_report(
    spec: DatasetSpec, destination: object, bids_index: pa.Table, shards: dict[str, Path]
) -> Path | None:
    """The gate's report beside the published data (a local folder), else beside the shards."""
    report = IndexInfo.of(bids_index).privacy
    if not report:
        return None
    folder = Path(destination.url) if isinstance(destination, LocalFolder) else None
    if folder is None and shards:
        folder = Path(next(iter(shards.values()))).parent.parent  # <storage>/<dataset>
    return write_privacy_report(folder, spec.name, report) if folder is not None else None


def _qc_mosaic(shard: EmbeddedShard) -> dict[str, object]:
    """The shard's first thumbnails as an inline PNG (markdown metadata the UI shows), once written."""
    pairs = first_thumbnails(shard.preview_tables, QC_THUMBNAILS)
    png = mosaic(pairs, max_bytes=QC_MOSAIC_BYTES)
    if png is None:
        return {}
    return {"qc_mosaic": dg.MetadataValue.md(markdown_png(png, f"first thumbnails of {shard.key}"))}


def build_dataset_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    """The assets of one dataset, keyed ``[spec.key, ...]`` in group ``spec.key`` (see ``names``)."""
    n = names(spec)
    shards_def = dg.DynamicPartitionsDefinition(name=n.shard_partitions)
    common = {"group_name": n.group, "io_manager_key": IO_MANAGER_KEY, "owners": list(spec.owners)}
    destination_text = spec.destination or "(no destination set)"

    @dg.observable_source_asset(
        key=n.bids_files,
        partitions_def=shards_def,
        group_name=n.group,
        description=f"The source files of each shard of {spec.name}, under {spec.bids_root}: observing "
        "them records a "
        "data version per shard (paths, sizes, mtimes), so a changed file marks its shard stale.",
    )
    def bids_files(context: dg.AssetExecutionContext) -> dg.DataVersionsByPartition:
        table = spec.index_table(gate=False)
        versions = shard_versions(table, spec.shard_plan(table))
        known = set(context.instance.get_dynamic_partitions(shards_def.name))
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items() if k in known})

    @dg.asset(
        key=n.bids_index,
        description=f"Rows, files per column, phenotype and sidecars of {spec.name}: the BIDS folder "
        f"{spec.bids_root}.",
        kinds={"bids", "parquet"},
        **common,
    )
    def bids_index(context: dg.AssetExecutionContext, hf_hub: HubResource) -> dg.Output[pa.Table]:
        started = time.monotonic()
        try:
            destination = hf_hub.destination(spec, progress=context.log.info) if spec.destination else None
            # the repo's visibility as the Hub has it (a --private that came too late does not count)
            index = spec.build_index(public_hub=destination.is_public() if destination is not None else None)
        except UserError as exc:  # a bad file, spec or destination, named: a retry fails the same way
            raise user_failure(exc) from None
        for warning in index.warnings:
            context.log.warning(warning)
        checked = {
            "validation": dg.MetadataValue.md(_lines_table(index.validation_lines())),
            "privacy": dg.MetadataValue.md(_privacy_markdown(index.privacy_report)),
        }
        if index.privacy_report is not None:
            context.log.info(index.privacy_report.summary_line())
            try:
                index.privacy_report.raise_if_blocked()
            except UserError as exc:  # identifying data: nothing is built or created, the report says why
                raise user_failure(exc, metadata=checked) from None
        try:
            if destination is not None:  # refuse an unusable destination (or token) before any shard is built
                destination.check()
        except UserError as exc:
            raise user_failure(exc) from None
        table = spec.index_table(index)
        preview = [
            {"subject_id": r.subject_id, "session_id": r.session_id}
            | {c: len(files) for c, files in r.cells.items()}
            for r in index.rows
        ]
        phenotype = IndexInfo.of(table).phenotype_descriptions
        return dg.Output(
            table,
            data_version=dg.DataVersion(structure_version(table)),
            metadata={
                "dagster/row_count": len(index.rows),
                "dagster/column_schema": _column_schema(table.schema, phenotype),
                "bids_root": dg.MetadataValue.path(str(spec.bids_root)),
                "subjects": len(index.subjects),
                "columns": ", ".join(f"{c.name}{' (many)' if c.many else ''}" for c in index.columns),
                "files_per_column": index.files_per_column(),
                "bytes_per_column": index.bytes_per_column(),
                "total_bytes": sum(index.bytes_per_column().values()),
                "index_fingerprint": index_fingerprint(table),
                **IndexSummary(
                    tuple(index.warnings)
                    + tuple(index.privacy_report.notice_lines() if index.privacy_report is not None else ())
                ).metadata(),
                **checked,
                "preview": dg.MetadataValue.md(_markdown_table(preview)),
                "duration_s": round(time.monotonic() - started, 2),
            },
        )

    @dg.asset(
        key=n.hf_dataset,
        ins={"bids_index": dg.AssetIn(key=n.bids_index)},
        description=f"{spec.name} as a typed Hugging Face dataset: Nifti()/List(Nifti()) columns holding "
        "file paths. "
        "Materializing it plans the shards and registers one hub_shards partition per shard.",
        kinds={"huggingface", "parquet"},
        required_resource_keys={IO_MANAGER_KEY},
        **common,
    )
    def hf_dataset(context: dg.AssetExecutionContext, bids_index: pa.Table) -> dg.Output[Dataset]:
        started = time.monotonic()
        ds = dataset_from_index(bids_index)
        plan = spec.shard_plan(bids_index)
        name = shards_def.name
        wanted = plan.keys()
        existing = context.instance.get_dynamic_partitions(name)
        for key in sorted(set(existing) - set(wanted)):
            context.instance.delete_dynamic_partition(name, key)
        # shard files of removed partitions, or built for other rows, can never be published: drop them
        removed = getattr(context.resources, IO_MANAGER_KEY).delete_stale_partitions(
            n.hub_shards, dict(zip(wanted, plan.ranges, strict=True))
        )
        if removed:
            context.log.info(
                f"removed {len(removed)} shard file(s) the new plan cannot use: {[p.stem for p in removed]}"
            )
        context.instance.add_dynamic_partitions(name, [k for k in wanted if k not in existing])
        if legacy := context.instance.get_dynamic_partitions(n.legacy_shard_partitions):
            # earlier releases named the partitions like the shards job; materializations are kept by
            # partition key, so registering the keys under the new name is all a stored instance needs
            for key in legacy:
                context.instance.delete_dynamic_partition(n.legacy_shard_partitions, key)
            context.log.info(
                f"shard partitions moved from {n.legacy_shard_partitions!r} to {name!r} ({len(legacy)} keys)"
            )
        # the source files of each shard as indexed now: shards built next record these versions, and
        # the UI marks a shard stale when a later observation (the watch sensor) differs
        for key, version in shard_versions(bids_index, plan).items():
            context.log_event(
                dg.AssetObservation(asset_key=bids_files.key, partition=key, tags={DATA_VERSION_TAG: version})
            )
        return dg.Output(
            ds,
            data_version=dg.DataVersion(structure_version(bids_index)),
            metadata={
                "plan_version": plan_version(bids_index, plan),
                "dagster/row_count": len(ds),
                "dagster/column_schema": _column_schema(ds.features.arrow_schema, {}),
                "features": dg.MetadataValue.json(ds.features.to_dict()),
                "num_shards": plan.num_shards,
                "shard_sizes": ", ".join(format_size(s) for s in plan.sizes),
                "duration_s": round(time.monotonic() - started, 2),
            },
        )

    @dg.asset(
        key=n.hub_shards,
        ins={"hf_dataset": dg.AssetIn(key=n.hf_dataset), "bids_index": dg.AssetIn(key=n.bids_index)},
        deps=[bids_files],
        partitions_def=shards_def,
        description="One parquet shard per partition, NIfTI bytes embedded, written row group by row group"
        + (
            f"; pre-uploaded to {spec.destination} once built."
            if spec.hub.upload_shards and spec.destination and is_hub_url(spec.destination)
            else "."
        ),
        kinds={"parquet"},
        required_resource_keys={IO_MANAGER_KEY, HUB_RESOURCE_KEY},
        retry_policy=SHARD_RETRY,
        **common,
    )
    def hub_shards(context: dg.AssetExecutionContext, hf_dataset: Dataset, bids_index: pa.Table) -> dg.Output:
        key = context.partition_key
        plan = spec.shard_plan(bids_index)
        version = shard_versions(bids_index, plan)[key]
        try:
            shard = build_shard(
                hf_dataset,
                bids_index,
                plan,
                key,
                row_group_size=spec.row_group_size,
                shard_strategy=spec.shard_strategy,
                compression=spec.compression,
            )
        except UserError as exc:  # bad files, a stale plan: a retry would fail the same way
            raise user_failure(exc) from exc
        for warning in shard.warnings:
            context.log.warning(warning)
        value, uploaded = shard, {}
        if spec.hub.upload_shards and spec.destination:
            value, uploaded = _preupload(context, spec, shard, plan.num_shards)
        if value is shard and shard.preview_schema is not None:  # stored now: thumbnails come as it is written
            value = getattr(context.resources, IO_MANAGER_KEY).store_shard(context.asset_key, key, shard)
        uploaded |= _qc_mosaic(shard)
        files_per_column: dict[str, int] = {}
        for row in shard.rows.files:
            for f in row:
                files_per_column[f["column"]] = files_per_column.get(f["column"], 0) + 1
        return dg.Output(
            value,
            data_version=dg.DataVersion(version),
            metadata=uploaded
            | {
                "dagster/row_count": shard.num_rows,
                "first_row": shard.rows.labels[0],
                "last_row": shard.rows.labels[-1],
                "files_per_column": files_per_column,
            }
            | ShardSummary(
                key, shard.start, shard.stop, shard.rows.num_files, shard.nbytes, tuple(shard.warnings)
            ).metadata(),
        )

    @dg.asset(
        key=n.hub_upload,
        ins={"hub_shards": dg.AssetIn(key=n.hub_shards), "bids_index": dg.AssetIn(key=n.bids_index)},
        description=f"{spec.name}, published to {destination_text} with its card, verified by sha256.",
        kinds={"huggingface"},
        group_name=n.group,
        owners=list(spec.owners),
        pool=n.pool,  # two publications never commit to the Hub at once
        retry_policy=UPLOAD_RETRY,
        check_specs=[
            dg.AssetCheckSpec(
                n.checks.published_copy_verifies,
                asset=n.hub_upload,
                blocking=True,
                description="Every published file matches its source by sha256 (see `verify`).",
            )
        ],
    )
    def hub_upload(
        context: dg.AssetExecutionContext,
        hub_shards: dict[str, Path],
        bids_index: pa.Table,
        hf_hub: HubResource,
    ) -> dg.MaterializeResult:
        plan = spec.shard_plan(bids_index)
        started = time.monotonic()
        previews = (
            {k: preview_file(Path(p)) for k, p in hub_shards.items()}
            if IndexInfo.of(bids_index).preview
            else None
        )
        pictures = _published_pictures(
            [previews[k] for k in plan.keys() if k in previews] if previews else []
        )
        try:
            destination = hf_hub.destination(spec, progress=context.log.info)
            result = publish_shards(
                spec.name,
                bids_index,
                plan,
                hub_shards,
                destination,
                preview_files=previews,
                preview_png=pictures.get("card"),
                preview_default=spec.preview.default,
            )
        except UserError as exc:  # an unusable destination, shards not ready: retrying cannot fix these
            raise user_failure(exc) from None
        report = destination.verify_after_publish(result, bids_index)  # its own default: quick or full
        kept = _keep_privacy_report(spec, destination, bids_index, hub_shards)
        if kept is not None:
            context.log.info(f"privacy report (not published): {kept}")
        elif IndexInfo.of(bids_index).privacy:
            context.log.warning(
                f"the privacy report was not written: a {REPORT_NAME} that the tool did not write is in the way "
                "(kept); the report is in bids_index's metadata"
            )
        context.log.info(report.summary())
        card = str(result.card)
        where = destination.metadata(result)
        summary = PublishSummary.of(result, report, where)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(
                publication_version(shard_versions(bids_index, plan), spec.destination or "")
            ),
            metadata=_metadata_values(where)
            | summary.metadata()
            | (
                {
                    "subjects_mosaic": dg.MetadataValue.md(
                        markdown_png(pictures["subjects"], "one row per subject")
                    )
                }
                if "subjects" in pictures
                else {}
            )
            | {
                "duration_s": round(time.monotonic() - started, 2),
                "columns": ", ".join(IndexInfo.of(bids_index).columns),
                "card": dg.MetadataValue.md(
                    card if len(card) <= CARD_PREVIEW_CHARS else card[:CARD_PREVIEW_CHARS] + "\n\n…"
                ),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=n.checks.published_copy_verifies,
                    passed=report.ok,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={
                        "files_checked": report.files_checked,
                        "bytes_checked": report.bytes_checked,
                        "summary": report.summary(),
                    }
                    # one line per problem: what the CLI and the UI show of a failed check
                    | ({"problems": "\n".join(report.problem_lines())} if not report.ok else {}),
                )
            ],
        )

    return [bids_files, bids_index, hf_dataset, hub_shards, hub_upload]
