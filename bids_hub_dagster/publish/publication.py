"""Publish built shard files and the card to a destination, after checking they belong together."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from ..dataset.shards import ShardPlan, read_shard_record, recorded_nifti2, shard_rows
from ..dataset.tables import FILES_COLUMN, IndexInfo
from ..errors import UserError
from .card import CardFacts, config_names, render_card
from .destinations import Destination, DestinationError, LocalFolder, PublishResult
from .digests import check_recorded
from .hub import Backoff, HubOptions, HubRepo, is_hub_url
from .sources import StoredFacts, StoredSource, inspect_all


def parse_destination(
    value: str,
    *,
    hub: HubOptions | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    backoff: Backoff | None = None,
    progress: Callable[[str], None] | None = None,
    sources: Sequence[Path] = (),
    tool_folders: Sequence[Path] = (),
    for_reading: bool = False,
) -> Destination:
    """A destination from its spec string: a local folder path, or ``hf://datasets/ORG/NAME[@branch]``.

    ``hub``, ``token`` and ``endpoint`` apply to Hub destinations only; the token defaults
    to ``huggingface_hub``'s own lookup (``HF_TOKEN``, then the saved login). ``sources``
    are the folders a local destination must neither be, hold, nor lie inside (the BIDS
    root and scope folders); ``tool_folders`` those it must neither be nor lie inside (the
    Dagster instance, the shard storage). ``for_reading`` opens a local folder to verify it,
    without the checks made before writing.
    """
    if is_hub_url(value):
        return HubRepo.from_url(
            value,
            hub or HubOptions(),
            token=token,
            endpoint=endpoint,
            backoff=backoff or Backoff(),
            progress=progress,
        )
    if "://" in value:
        raise DestinationError(f"{value}: destinations are a local folder or hf://datasets/ORG/NAME.")
    return LocalFolder(value, sources=sources, tool_folders=tool_folders, for_reading=for_reading)


@contextlib.contextmanager
def local_shard_files(
    files: Mapping[str, Path],
    preview_files: Mapping[str, Path] | None = None,
    keys: Iterable[str] | None = None,
) -> Iterator[tuple[dict[str, Path], dict[str, Path] | None]]:
    """Local paths of the shards (and previews) to publish, for as long as the block runs.

    ``files`` as the IO manager hands them over: stored files (a local storage folder) are
    given as they are, nothing copied. When ``files`` carries a remote ``store`` (its
    values are keys in that store, see ``defs.io_managers.StoredFiles``), the files of
    ``keys`` (default: all) are copied to scratch (``BIDS_HUB_SCRATCH``), each verified
    against its recorded sha256 as it is copied, and removed when the block ends, also
    on failure or Ctrl-C. Files not stored are left out: :func:`publish_shards` names them.
    A local destination hard-links the copies when the scratch folder is on its file
    system, so removing them afterwards amounts to moving them in. This is for destinations
    that take local files (a folder); a destination that ``publishes_from_store`` (the Hub)
    is given the keys instead, and copies one commit batch at a time.

    Raises:
        storage.StoreError: a stored file has no digest record, or its bytes differ from it.
    """
    wanted = list(files) if keys is None else [k for k in keys if k in files]
    store = getattr(files, "store", None)
    if store is None or not store.remote:
        yield (
            {k: Path(files[k]) for k in wanted},
            {k: Path(preview_files[k]) for k in wanted if k in preview_files}
            if preview_files is not None
            else None,
        )
        return
    names = [Path(files[k]).as_posix() for k in wanted]
    if preview_files is not None:
        names += [Path(preview_files[k]).as_posix() for k in wanted if k in preview_files]
    with store.fetched(names, missing_ok=True) as copies:
        shards = {k: copies[n] for k in wanted if (n := Path(files[k]).as_posix()) in copies}
        previews = (
            {
                k: copies[n]
                for k in wanted
                if k in preview_files and (n := Path(preview_files[k]).as_posix()) in copies
            }
            if preview_files is not None
            else None
        )
        yield shards, previews


class ShardsNotReadyError(UserError):
    """Some shards of the current plan are missing or were built from other data."""


@dataclass(frozen=True)
class ShardFileStats:
    num_rows: int
    download_size: int  # bytes on disk
    dataset_size: int  # uncompressed bytes, as the parquet footer records them


def shard_file_stats(path: Path) -> ShardFileStats:
    meta = pq.ParquetFile(path).metadata
    return ShardFileStats(
        num_rows=meta.num_rows,
        download_size=path.stat().st_size,
        dataset_size=sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
    )


def ordered_shard_files(
    plan: ShardPlan, files: Mapping[str, Path], index_table: pa.Table, what: str = "shard"
) -> list[Path]:
    """The shard files (or their previews: ``what``) in plan order, each checked against the current plan and index.

    Every file must carry a shard record (:func:`..dataset.shards.read_shard_record`) with
    the row range and input fingerprint the current index plans for its partition: a
    preview file carries its data shard's record.

    Raises:
        ShardsNotReadyError: listing every file that is missing, whose stored file changed
            after it was built (sha256 against the digest recorded at write time) or cannot
            be read, or whose recorded row range or input fingerprint differs from what the
            current index plans.
    """
    missing, stale, changed, ordered = [], [], [], []
    for key, (start, stop) in zip(plan.keys(), plan.ranges, strict=True):
        path = files.get(key)
        if path is None or not Path(path).is_file():
            missing.append(key)
            continue
        digest = check_recorded(Path(path))
        if not digest.ok:
            changed.append(f"{key} ({digest.describe(Path(path))})")
            continue
        try:
            record = read_shard_record(pq.read_schema(path))
        except (OSError, pa.ArrowException) as exc:
            changed.append(f"{key} ({path} is not a readable parquet file: {exc})")
            continue
        expected = shard_rows(index_table, start, stop).fingerprint()
        if not record or (record["start"], record["stop"], record["fingerprint"]) != (start, stop, expected):
            stale.append(key)
        ordered.append(Path(path))
    _refuse_unready(missing, stale, changed, what)
    return ordered


def _refuse_unready(missing: list[str], stale: list[str], changed: list[str], what: str) -> None:
    """Raise :class:`ShardsNotReadyError` naming every missing, stale and changed file, if any."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} {what}(s) not built yet: {', '.join(missing)}")
    if stale:
        problems.append(f"{len(stale)} {what}(s) were built from an older index or plan: {', '.join(stale)}")
    if changed:
        problems.append(
            f"{len(changed)} stored {what} file(s) changed after they were built, so their bytes cannot be "
            f"trusted: {'; '.join(changed)}"
        )
    if problems:
        raise ShardsNotReadyError(
            "; ".join(problems)
            + (
                ". Materialize those hub_shards partitions, then publish again."
                if what == "shard"
                else f". Build the {what}s of those partitions again, then publish again."
            )
        )


def stored_shard_files(
    plan: ShardPlan,
    files: Mapping[str, Path],
    index_table: pa.Table,
    facts: Mapping[str, StoredFacts | str | None],
    what: str = "shard",
) -> list[Path]:
    """:func:`ordered_shard_files` for the files of a remote store, from what :func:`.sources.inspect_all`
    found of each key (``facts``: its digest record and parquet footer), without copying any.

    The files are given as their keys (relative paths), in plan order. A key without an object
    or without its digest record (an upload never completed) is not built yet; one whose object
    changed since it was stored, or whose footer cannot be read, is changed.

    Raises:
        ShardsNotReadyError: as :func:`ordered_shard_files` does.
    """
    missing, stale, changed, ordered = [], [], [], []
    for key, (start, stop) in zip(plan.keys(), plan.ranges, strict=True):
        path = files.get(key)
        found = facts.get(Path(path).as_posix()) if path is not None else None
        if found is None:
            missing.append(key)
            continue
        if isinstance(found, str):
            changed.append(f"{key} ({found})")
            continue
        record = read_shard_record(found.schema)
        expected = shard_rows(index_table, start, stop).fingerprint()
        if not record or (record["start"], record["stop"], record["fingerprint"]) != (start, stop, expected):
            stale.append(key)
        ordered.append(Path(path))
    _refuse_unready(missing, stale, changed, what)
    return ordered


def card_facts(
    name: str,
    index_table: pa.Table,
    stats: list[ShardFileStats],
    load_id: str,
    nifti2_files: Mapping[str, int] | None = None,
    *,
    preview_stats: Sequence[ShardFileStats] = (),
    preview_features: Features | None = None,
    preview_default: bool = False,
    has_preview_png: bool = False,
) -> CardFacts:
    """What the card says; ``nifti2_files`` (column -> NIfTI-2 files) as the shards recorded it.

    ``preview_features`` (the preview files' features; None: no preview config) and
    ``preview_stats`` (one per preview file) describe the ``preview`` config.
    """
    info = IndexInfo.of(index_table)
    files_per_column = {c: 0 for c in info.columns}
    bytes_per_column = {c: 0 for c in info.columns}
    subjects = index_table.column("subject_id").to_pylist()
    sessions = set()  # from the files' entities, so that rows per subject still count sessions
    for subject, row in zip(subjects, index_table.column(FILES_COLUMN).to_pylist(), strict=True):
        for f in row:
            files_per_column[f["column"]] += 1
            bytes_per_column[f["column"]] += f["size"]
            ses = json.loads(f["entities"]).get("ses")
            if ses is not None:
                sessions.add((subject, ses))
    return CardFacts(
        name=name,
        row=info.row,
        description=info.description,
        features=info.features(),
        num_rows=index_table.num_rows,
        num_subjects=len(set(subjects)),
        num_sessions=len(sessions),
        files_per_column=files_per_column,
        bytes_per_column=bytes_per_column,
        num_shards=len(stats),
        download_size=sum(s.download_size for s in stats),
        dataset_size=sum(s.dataset_size for s in stats),
        load_id=load_id,
        phenotype_descriptions=info.phenotype_descriptions,
        nifti2_files=dict(nifti2_files or {}),
        preview_features=preview_features,
        preview_num_bytes=sum(s.dataset_size for s in preview_stats),
        preview_download_size=sum(s.download_size for s in preview_stats),
        preview_default=preview_default and preview_features is not None,
        has_preview_png=has_preview_png,
        session_columns=tuple(info.sessions),
        scans_columns=tuple(info.scans),
        defaced_affirmed=bool((info.privacy.get("policy") or {}).get("defaced")),
    )


def preview_features_of(preview_files: Sequence[Path]) -> Features:
    """The features of the preview files (the HF metadata in their schema), which must all be the same.

    Raises:
        ShardsNotReadyError: when a preview file carries no features, or two carry different ones.
    """
    return _features_of((path, pq.read_schema(path)) for path in preview_files)


def _features_of(schemas: Iterable[tuple[Path | str, pa.Schema]]) -> Features:
    """:func:`preview_features_of` from each preview file's name and arrow schema."""
    found: Features | None = None
    for path, schema in schemas:
        if b"huggingface" not in (schema.metadata or {}):
            raise ShardsNotReadyError(
                f"{path} carries no Hugging Face features in its parquet schema; write the preview with "
                "the features' arrow schema (Features.arrow_schema). Materialize it again, then publish again."
            )
        features = Features.from_arrow_schema(schema)
        if found is None:
            found = features
        elif features != found:
            raise ShardsNotReadyError(
                f"the preview files have different features ({path} differs from the first one); "
                "materialize them again, then publish again."
            )
    if found is None:
        raise ValueError("no preview files")
    return found


def publish_shards(
    name: str,
    index_table: pa.Table,
    plan: ShardPlan,
    files: Mapping[str, Path],
    destination: Destination,
    *,
    preview_files: Mapping[str, Path] | None = None,
    preview_png: bytes | None = None,
    preview_default: bool = False,
) -> PublishResult:
    """Check the shards (and previews), render the card, and publish them to ``destination``.

    ``preview_files`` maps the same partition keys as ``files`` to each shard's preview
    parquet file (the ``preview`` config: written and digest-recorded like a shard, with its
    shard's record in the schema); ``preview_png`` is published as ``preview.png`` beside the
    card, which shows it; with ``preview_default``, ``load_dataset(repo)`` and the Hub's viewer
    open the preview (the full data is then the config ``full``). Without them the publication
    has no preview, and one an earlier publication made is removed.

    ``files`` (and ``preview_files``) may be the keys of a remote store (``defs.io_managers.
    StoredFiles``: a ``store`` attribute) when the destination publishes from a store
    (``publishes_from_store``, the Hub): nothing is copied to check them or render the card
    (their digest records and parquet footers say all it needs), and the destination copies
    them to scratch one commit batch at a time. Other destinations take local files
    (:func:`local_shard_files`).
    """
    store = getattr(files, "store", None)
    if store is not None and store.remote:
        return _publish_stored(
            name,
            index_table,
            plan,
            files,
            destination,
            preview_files=preview_files,
            preview_png=preview_png,
            preview_default=preview_default,
        )
    ordered = ordered_shard_files(plan, files, index_table)
    previews = ordered_shard_files(plan, preview_files, index_table, "preview") if preview_files else []
    stats = [shard_file_stats(p) for p in ordered]
    nifti2 = recorded_nifti2(read_shard_record(pq.read_schema(p)) for p in ordered)
    facts = card_facts(
        name,
        index_table,
        stats,
        destination.load_id,
        nifti2_files=nifti2,
        preview_stats=[shard_file_stats(p) for p in previews],
        preview_features=preview_features_of(previews) if previews else None,
        preview_default=preview_default,
        has_preview_png=preview_png is not None,
    )
    card = render_card(facts)
    if previews or preview_png is not None:
        result = destination.publish(ordered, card, preview_files=previews, preview_png=preview_png)
    else:  # exactly the call of a publication without previews
        result = destination.publish(ordered, card)
    result.shard_files, result.card = ordered, card
    result.preview_files, result.preview_png = previews, preview_png
    result.configs = config_names(facts)
    return result


def _publish_stored(
    name: str,
    index_table: pa.Table,
    plan: ShardPlan,
    files: Mapping[str, Path],
    destination: Destination,
    *,
    preview_files: Mapping[str, Path] | None,
    preview_png: bytes | None,
    preview_default: bool,
) -> PublishResult:
    """:func:`publish_shards` from the keys of a remote store (``files.store``), copying none to plan."""
    store = files.store  # type: ignore[attr-defined]
    if not getattr(destination, "publishes_from_store", False):
        raise ValueError(
            f"{destination.url} takes local files: copy the stored files with local_shard_files() first."
        )
    keys = [Path(files[k]).as_posix() for k in plan.keys() if k in files]
    if preview_files:
        keys += [Path(preview_files[k]).as_posix() for k in plan.keys() if k in preview_files]
    found = inspect_all(store, keys)  # digest records and footers: a few KB a file
    ordered = stored_shard_files(plan, files, index_table, found)
    previews = stored_shard_files(plan, preview_files, index_table, found, "preview") if preview_files else []
    facts = {p.as_posix(): found[p.as_posix()] for p in [*ordered, *previews]}
    stats = [_stored_stats(facts[p.as_posix()]) for p in ordered]
    nifti2 = recorded_nifti2(read_shard_record(facts[p.as_posix()].schema) for p in ordered)
    card_input = card_facts(
        name,
        index_table,
        stats,
        destination.load_id,
        nifti2_files=nifti2,
        preview_stats=[_stored_stats(facts[p.as_posix()]) for p in previews],
        preview_features=(
            _features_of((store.url(p.as_posix()), facts[p.as_posix()].schema) for p in previews)
            if previews
            else None
        ),
        preview_default=preview_default,
        has_preview_png=preview_png is not None,
    )
    card = render_card(card_input)
    source = StoredSource(store, facts)  # type: ignore[arg-type]
    result = destination.publish(  # type: ignore[call-arg]
        ordered, card, preview_files=previews, preview_png=preview_png, source=source
    )
    result.shard_files, result.card, result.source = ordered, card, source
    result.preview_files, result.preview_png = previews, preview_png
    result.configs = config_names(card_input)
    return result


def _stored_stats(facts: StoredFacts | str | None) -> ShardFileStats:
    assert isinstance(facts, StoredFacts)
    return ShardFileStats(num_rows=facts.num_rows, download_size=facts.size, dataset_size=facts.dataset_size)
