"""The asset factory: one group of assets per dataset spec.

    bids_files[shard-…] (observed) ─┐
    bids_index ──► hf_dataset ──► hub_shards[shard-00000 …] ──► hub_upload

Each body is wiring: read inputs, call one core function, return the value with its
metadata and data version. The logic lives in ``bids_hub_dagster.bids``, ``.dataset`` and
``.publish``; the versions are those of ``pipeline.versions``.
"""

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from datasets import Dataset
from pydantic import Field

from ..bids.privacy import PrivacyReport
from ..dataset.audit import audit_shard_file, row_count_problems
from ..dataset.parquet import WrittenFile
from ..dataset.preview import markdown_png
from ..dataset.preview_config import first_thumbnails, mosaic, one_per_subject, read_previews
from ..dataset.shards import EmbeddedShard, build_shard, shard_index
from ..dataset.tables import IndexInfo, dataset_from_index
from ..errors import UserError
from ..pipeline.shard_range import build_range, default_threads, until_stopped
from ..pipeline.versions import (
    index_fingerprint,
    plan_version,
    publication_version,
    shard_versions,
    structure_version,
)
from ..publish.destinations import DestinationError, Link, LocalFolder, Markdown
from ..publish.digests import SourceDigests
from ..publish.hub import HubTransientError, is_hub_url
from ..publish.privacy_report import REPORT_NAME, write_privacy_report
from ..publish.publication import local_shard_files, publish_shards
from ..spec import DatasetSpec, format_size
from ..storage import Store, scratch_folder
from .io_managers import preview_file
from .names import CHECKS, names
from .outcomes import FAILED_SHARDS, USER_ERROR, check_metadata, user_failure
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


class ShardRunConfig(dg.Config):
    """Run config of the shard job (the launchpad shows it; the CLI sets it from ``--workers``)."""

    threads: int = Field(
        default=0,
        ge=0,
        description="Shards of the run built at a time, in threads. 0: one per core, at most 4.",
    )


@dataclasses.dataclass
class _BuiltShard:
    """One shard of a run, written and read back: what its partition's materialization records."""

    shard: EmbeddedShard
    written: WrittenFile
    write_seconds: float
    extra: dict[str, object]  # pre-upload figures, QC mosaic
    checks: list[tuple[str, list[str], dict[str, object]]]  # (check name, problems, metadata)
    notes: list[str]  # said by the build's thread, logged by the run's

    def metadata(self) -> dict[str, object]:
        shard, written = self.shard, self.written
        files_per_column: dict[str, int] = {}
        for row in shard.rows.files:
            for f in row:
                files_per_column[f["column"]] = files_per_column.get(f["column"], 0) + 1
        return (
            self.extra
            | {
                "dagster/row_count": shard.num_rows,
                "first_row": shard.rows.labels[0],
                "last_row": shard.rows.labels[-1],
                "files_per_column": files_per_column,
                "path": dg.MetadataValue.path(str(written.path)),
                "file_bytes": written.size,
                "row_groups": written.num_row_groups,
                # the embedding happens as the row groups are written
                "write_duration_s": round(self.write_seconds, 2),
            }
            | ShardSummary(
                shard.key, shard.start, shard.stop, shard.rows.num_files, shard.nbytes, tuple(shard.warnings)
            ).metadata()
        )


def _build_and_store(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    storage,
    dataset: Dataset,
    index: pa.Table,
    plan,
    key: str,
    stop: threading.Event,
) -> _BuiltShard:
    """Build shard ``key``, store it, read it back (its two checks), pre-upload it when asked.

    Runs in a build thread: it logs nothing itself (``notes`` are logged by the run's thread).
    """
    # each source's sha256, from the bytes being embedded: the verification after publishing
    # compares with it instead of reading every source file again (while the file is unchanged)
    sources = SourceDigests()
    shard = build_shard(
        dataset,
        index,
        plan,
        key,
        row_group_size=spec.row_group_size,
        shard_strategy=spec.shard_strategy,
        compression=spec.compression,
        on_file=sources,
    )
    shard = dataclasses.replace(shard, groups=until_stopped(shard.groups, stop))
    started = time.monotonic()
    notes: list[str] = []
    read_back: dict[str, object] = {"extra": {}}

    def after_stored(path: Path) -> None:  # the stored file, or its scratch copy under a URL
        read_back["seconds"] = time.monotonic() - started
        audit = read_back["audit"] = audit_shard_file(path)  # what the file holds, not what was meant
        if not storage.remote:  # beside the stored shard (a scratch copy under a URL is removed)
            sources.write(path)
        if spec.hub.upload_shards and spec.destination and not audit.problems:
            read_back["extra"] = _preupload(context, spec, path, key, plan.num_shards, notes)

    written = storage.store_shard(context.asset_key, key, shard, on_stored=after_stored)
    seconds, audit = read_back["seconds"], read_back["audit"]
    checks = [
        (
            CHECKS.shard_files_are_nifti,
            audit.problems,
            {"cells_checked": audit.cells, "rows": audit.num_rows},
        ),
        (
            CHECKS.shard_row_count_matches_plan,
            audit.problems or row_count_problems(audit, key, plan.range_of(key)),
            {"rows": audit.num_rows},
        ),
    ]
    extra = _qc_mosaic(shard) | read_back["extra"]
    return _BuiltShard(shard, written, seconds, extra, checks, notes)


def _preupload(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    stored: Path,
    key: str,
    num_shards: int,
    notes: list[str],
) -> dict[str, object]:
    """Send a stored shard to the destination ahead of the publish, when it takes one (the Hub).

    Returns the pre-upload's metadata. A failed pre-upload is a note: hub_upload sends the file anyway.
    """
    hf_hub: HubResource = getattr(context.resources, HUB_RESOURCE_KEY)
    try:
        destination = hf_hub.destination(spec, progress=notes.append)
    except DestinationError as exc:
        notes.append(f"no pre-upload; hub_upload will publish the shard: {exc}")
        return {}
    if not destination.supports_preupload:  # a local folder links the stored shards when publishing
        return {}
    try:
        sent = destination.preupload_shard(stored, shard_index(key), num_shards)
    except (DestinationError, HubTransientError) as exc:  # the upload sends it later anyway
        notes.append(f"pre-upload to {destination.url} failed; hub_upload will send it: {exc}")
        sent = 0
    return {"hub_bytes_sent": sent} | _metadata_values(destination.metadata())


def _version_tags(context: dg.AssetExecutionContext, version: str) -> dict[str, str]:
    """A shard partition's data version tags, with the code and input versions Dagster records
    on the materializations it makes itself (what the UI's "stale" badge compares).

    Those come from Dagster's step internals; should they change, the data version (what this
    project's own staleness rule reads) is still recorded.
    """
    tags = {DATA_VERSION_TAG: version, "dagster/data_version_is_user_provided": "true"}
    try:
        from dagster._core.execution.plan import execute_step

        step = context.op_execution_context._step_execution_context  # noqa: SLF001
        provenance = execute_step._get_input_provenance_data(context.asset_key, step)  # noqa: SLF001
        code_version = execute_step._get_code_version(context.asset_key, step)  # noqa: SLF001
        return execute_step._build_data_version_tags(dg.DataVersion(version), code_version, provenance, True)  # noqa: SLF001
    except Exception:  # noqa: BLE001  (an internal API that moved: the data version alone still counts)
        return tags


def _built_in_this_run(context: dg.AssetExecutionContext, keys: list[str]) -> set[str]:
    """Partitions of ``keys`` this run has materialized already (before a retry of its step)."""
    records = context.instance.get_records_for_run(
        context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    wanted = set(keys)
    return {
        event.partition
        for record in records
        if (event := record.event_log_entry.dagster_event) is not None
        and event.asset_key == context.asset_key
        and event.partition in wanted
    }


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, UserError) or (isinstance(exc, dg.Failure) and USER_ERROR in (exc.metadata or {}))


def _range_failure(failures: dict[str, BaseException], num_keys: int) -> dg.Failure:
    """The step failure of a run whose shards ``failures`` failed (the others are materialized).

    Retried (by the retry policy) only when a failure is not the user's input: a retry builds
    only the shards the run has not materialized yet.
    """
    messages = {
        key: (exc.description if isinstance(exc, dg.Failure) else str(exc))
        if _is_user_error(exc)
        else f"{type(exc).__name__}: {exc}"
        for key, exc in failures.items()
    }
    lines = [m if m.startswith(key) else f"{key}: {m}" for key, m in messages.items()]
    user = all(_is_user_error(exc) for exc in failures.values())
    metadata: dict[str, object] = {FAILED_SHARDS: dg.MetadataValue.json(messages)}
    if user:
        metadata[USER_ERROR] = "ShardFilesError"
    description = (
        lines[0]
        if num_keys == 1
        else f"{len(failures)} of {num_keys} shard(s) of the run failed; the others are recorded:\n"
        + "\n".join(lines)
    )
    return dg.Failure(
        description,
        allow_retries=not user,
        metadata=metadata,
    )


def _published_pictures(previews: list[Path], store: Store | None = None) -> dict[str, bytes]:
    """From the built previews: the card's picture (the first thumbnails) and one row per subject.

    With a remote ``store``, ``previews`` are its keys, read through it (their thumbnail columns),
    not copied: the preview files' sha256 is checked when each is copied for its commit, before the
    card and its picture (the last commit).
    """
    if store is not None and store.remote:
        keys = [p.as_posix() for p in previews if store.exists(p.as_posix())]
        existing: Any = _ReadThrough(store, keys)
    else:
        existing = [p for p in previews if p.is_file()]  # a missing one: publish_shards names it
    out: dict[str, bytes] = {}
    card = mosaic(first_thumbnails(read_previews(existing), CARD_THUMBNAILS), max_bytes=CARD_PICTURE_BYTES)
    if card is not None:
        out["card"] = card
    subjects = mosaic(one_per_subject(read_previews(existing), SUBJECT_THUMBNAILS), max_bytes=QC_MOSAIC_BYTES)
    if subjects is not None:
        out["subjects"] = subjects
    return out


class _ReadThrough:
    """The stored files of ``keys``, each opened through ``store`` while it is read (iterable again)."""

    def __init__(self, store: Store, keys: list[str]) -> None:
        self.store, self.keys = store, keys

    def __iter__(self) -> Iterator[Any]:
        for key in self.keys:
            with self.store.open(key) as file:
                yield file


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
        )
        + f" A run builds up to {spec.shards_per_run} partition(s) (shards_per_run), a few at a time; each "
        "shard is recorded on its own partition as it is written, checked, and fails alone.",
        kinds={"parquet"},
        required_resource_keys={IO_MANAGER_KEY, HUB_RESOURCE_KEY},
        retry_policy=SHARD_RETRY,
        # the asset records each partition's materialization itself (one per shard, with its own data
        # version); a ranged run has no single value to output
        output_required=False,
        # UI backfills: shards_per_run partitions a run (one: Dagster's default, a run per partition)
        backfill_policy=(
            dg.BackfillPolicy.multi_run(max_partitions_per_run=spec.shards_per_run)
            if spec.shards_per_run > 1
            else None
        ),
        check_specs=[
            dg.AssetCheckSpec(
                n.checks.shards_of_run_pass_checks,
                asset=n.hub_shards,
                blocking=True,
                description="Every shard the run built passed its own checks (shard_files_are_nifti, "
                "shard_row_count_matches_plan, recorded on each partition).",
            )
        ],
        **common,
    )
    def hub_shards(
        context: dg.AssetExecutionContext, config: ShardRunConfig, hf_dataset: Dataset, bids_index: pa.Table
    ):
        plan = spec.shard_plan(bids_index)  # loaded and planned once for the whole range
        versions = shard_versions(bids_index, plan)
        keys = list(context.partition_keys)
        done = _built_in_this_run(context, keys) if context.retry_number else set()
        if done:
            context.log.info(f"retry: {len(done)} shard(s) of this range were built before the retry: kept")
        todo = [k for k in keys if k not in done]
        storage = getattr(context.resources, IO_MANAGER_KEY)
        threads = default_threads(len(todo), config.threads)
        if len(todo) > 1:
            context.log.info(f"building {len(todo)} shard(s), {threads} at a time")

        def build(key: str, stop: threading.Event) -> _BuiltShard:
            return _build_and_store(context, spec, storage, hf_dataset, bids_index, plan, key, stop)

        failures: dict[str, BaseException] = {}
        check_problems: list[str] = []
        for outcome in build_range(todo, build, threads):
            key = outcome.key
            if not outcome.ok:
                failures[key] = outcome.error
                shown = outcome.error if isinstance(outcome.error, UserError) else repr(outcome.error)
                context.log.error(f"{key}: {shown}")
                continue
            built = outcome.result
            for line in built.notes:
                context.log.info(f"{key}: {line}")
            for warning in built.shard.warnings:
                context.log.warning(f"{key}: {warning}")
            found_once = list(dict.fromkeys(p for _, found, _ in built.checks for p in found))
            problems = [f"{key}: {p}" for p in found_once]
            if not problems:  # a stored file that fails its checks is not recorded as built
                yield dg.AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=key,
                    metadata=built.metadata(),
                    tags=_version_tags(context, versions[key]),
                )
            else:
                failures[key] = UserError(f"the stored shard fails its checks: {'; '.join(found_once)}")
                context.log.error(f"{key}: the stored shard fails its checks")
            check_problems += problems
            for name, found, extra in built.checks:
                context.log_event(
                    AssetCheckEvaluation(
                        asset_key=context.asset_key,
                        check_name=name,
                        passed=not found,
                        metadata=check_metadata(found, **extra),
                        severity=dg.AssetCheckSeverity.ERROR,
                        partition=key,
                        blocking=False,
                    )
                )
        yield dg.AssetCheckResult(
            check_name=n.checks.shards_of_run_pass_checks,
            passed=not check_problems,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=check_metadata(check_problems, shards=len(todo) - len(failures), partitions=len(keys)),
        )
        if failures:  # the first failure's exception is kept as the cause (its class, its traceback)
            raise _range_failure(failures, len(keys)) from next(iter(failures.values()))

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
        store = getattr(hub_shards, "store", None)  # a remote store: its files are copied to scratch
        try:
            destination = hf_hub.destination(spec, progress=context.log.info)
        except UserError as exc:  # an unusable destination: retrying cannot fix it
            raise user_failure(exc) from None
        # the Hub copies a remote store's files to scratch one commit batch at a time; a folder takes them all
        batched = store is not None and store.remote and destination.publishes_from_store
        with contextlib.ExitStack() as copies:  # the copies go when the block ends, also on failure
            try:
                files, preview_files = (
                    (hub_shards, previews)
                    if batched
                    else copies.enter_context(local_shard_files(hub_shards, previews, plan.keys()))
                )
            except UserError as exc:  # a stored file changed or was never recorded: a retry cannot fix it
                raise user_failure(exc) from None
            pictures = _published_pictures(
                [preview_files[k] for k in plan.keys() if k in preview_files] if preview_files else [],
                store if batched else None,
            )
            try:
                result = publish_shards(
                    spec.name,
                    bids_index,
                    plan,
                    files,
                    destination,
                    preview_files=preview_files,
                    preview_png=pictures.get("card"),
                    preview_default=spec.preview.default,
                )
            except UserError as exc:  # an unusable destination, shards not ready: retrying cannot fix these
                raise user_failure(exc) from None
            report = destination.verify_after_publish(result, bids_index)  # its own default: quick or full
            report_files = files if store is not None else hub_shards
            if batched:  # no copies: the report is written in scratch, then stored beside the shards
                scratch = copies.enter_context(scratch_folder())
                report_files = {k: scratch / p for k, p in files.items()}
            kept = _keep_privacy_report(spec, destination, bids_index, report_files)
            if kept is not None and store is not None and not isinstance(destination, LocalFolder):
                # beside the shards in the store, not in the scratch folder that goes now
                folder = Path(next(iter(hub_shards.values()))).parent.parent.as_posix()
                kept = store.upload(kept, f"{folder}/{kept.name}")
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
