"""Shard planning from real file sizes, and shard building with the bytes embedded.

A shard is a contiguous range of dataset rows. Building one embeds the NIfTI bytes of
exactly its own rows: the slice is broken (pandas round trip) before
``embed_table_storage`` runs, because on ``datasets`` < 5.2 embedding a ``select``/
``shard`` slice with a ``List(Nifti())`` column read every file of the whole dataset
(``ListArray.values`` ignores the slice offset). The bytes stream out in row groups of
about ``row_group_size``: memory holds the group being written and the next one being
read, never a whole shard.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, Features

from ..bids.errors import shown
from ..errors import UserError
from .embed import STRATEGIES, FileHook
from .nifti import ARROW_BINARY_LIMIT, NiftiFileError, inspect_nifti
from .parquet import write_options
from .preview_config import ThumbnailCollector, nifti_paths, preview_features, preview_table
from .tables import FILES_COLUMN, IndexInfo, nifti_columns, row_sizes

SHARD_META_KEY = b"bids_hub_dagster_shard"
DEFAULT_ROW_GROUP_SIZE = 100 * 10**6
PARTITION_PREFIX = "shard-"


def partition_key(index: int) -> str:
    """The Dagster partition key of shard ``index``: ``shard-00042``."""
    return f"{PARTITION_PREFIX}{index:05d}"


def shard_index(key: str) -> int:
    """Inverse of :func:`partition_key`."""
    if not key.startswith(PARTITION_PREFIX) or not key[len(PARTITION_PREFIX) :].isdigit():
        raise ValueError(f"{key!r} is not a shard partition key (expected e.g. shard-00042).")
    return int(key[len(PARTITION_PREFIX) :])


def _greedy_ranges(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Contiguous ranges, each filled with whole items up to ``limit`` bytes.

    An item larger than ``limit`` gets a range of its own; no range is empty.
    """
    ranges: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, size in enumerate(sizes):
        if i > start and acc + size > limit:
            ranges.append((start, i))
            start, acc = i, 0
        acc += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


class ShardPlanError(UserError):
    """A shard the current plan does not have, or inputs of two different plans: re-plan (hf_dataset)."""


@dataclass(frozen=True)
class ShardPlan:
    """Row ranges ``[start, stop)`` of every shard, in row order."""

    ranges: tuple[tuple[int, int], ...]
    sizes: tuple[int, ...]  # bytes of NIfTI files per shard

    @property
    def num_shards(self) -> int:
        return len(self.ranges)

    def keys(self) -> list[str]:
        return [partition_key(i) for i in range(self.num_shards)]

    def range_of(self, key: str) -> tuple[int, int]:
        i = shard_index(key)
        if i >= self.num_shards:
            raise ShardPlanError(
                f"{key} is not in the current shard plan ({self.num_shards} shards, up to "
                f"{partition_key(self.num_shards - 1)}); the dataset was re-planned: materialize hf_dataset "
                "again and drop stale partitions."
            )
        return self.ranges[i]


def plan_shards(sizes: Sequence[int], max_shard_size: int, num_shards: int | None = None) -> ShardPlan:
    """Plan shards from per-row file sizes (bytes on disk, not path strings).

    Args:
        sizes: bytes of NIfTI files of each row, in row order.
        max_shard_size: fill each shard with whole rows up to this many bytes; a row
            larger than that is a shard of its own.
        num_shards: when given, split rows into this many contiguous shards exactly as
            ``Dataset.shard(num_shards, i, contiguous=True)`` does (capped at one row per
            shard), ignoring ``max_shard_size``.
    """
    n = len(sizes)
    if n == 0:
        return ShardPlan(ranges=(), sizes=())
    if num_shards is not None:
        k = min(num_shards, n)
        div, mod = divmod(n, k)
        ranges = []
        for i in range(k):
            start = i * div + min(i, mod)
            ranges.append((start, start + div + (1 if i < mod else 0)))
    else:
        ranges = _greedy_ranges(sizes, max_shard_size)
    return ShardPlan(ranges=tuple(ranges), sizes=tuple(sum(sizes[a:b]) for a, b in ranges))


def plan_for_index(index_table: pa.Table, max_shard_size: int, num_shards: int | None) -> ShardPlan:
    return plan_shards(row_sizes(index_table), max_shard_size, num_shards)


@dataclass
class ShardRows:
    """What the index says about one shard's rows: ids, files, sizes."""

    labels: list[str]  # "sub-01/ses-1" per row
    files: list[list[dict]]  # per row: the _bids_files records
    root: Path

    @property
    def sizes(self) -> list[int]:
        return [sum(f["size"] for f in row) for row in self.files]

    @property
    def num_files(self) -> int:
        return sum(len(row) for row in self.files)

    def gzip_share(self) -> dict[str, float]:
        """Per column, the share of its bytes that sit in gzip-compressed (``.gz``) files."""
        total: dict[str, int] = {}
        gz: dict[str, int] = {}
        for row in self.files:
            for f in row:
                total[f["column"]] = total.get(f["column"], 0) + f["size"]
                if f["relpath"].lower().endswith(".gz"):
                    gz[f["column"]] = gz.get(f["column"], 0) + f["size"]
        return {c: gz.get(c, 0) / t if t else 1.0 for c, t in total.items()}

    def fingerprint(self) -> str:
        """Changes whenever a row, a file, its size or its mtime changes."""
        h = hashlib.sha256()
        for label, files in zip(self.labels, self.files, strict=True):
            h.update(label.encode())
            for f in files:
                h.update(json.dumps([f["column"], f["relpath"], f["size"], f["mtime_ns"]]).encode())
        return h.hexdigest()


def shard_rows(index_table: pa.Table, start: int, stop: int) -> ShardRows:
    part = index_table.slice(start, stop - start)
    subs = part.column("subject_id").to_pylist()
    sess = part.column("session_id").to_pylist()
    return ShardRows(
        labels=[s if t is None else f"{s}/{t}" for s, t in zip(subs, sess, strict=True)],
        files=part.column(FILES_COLUMN).to_pylist(),
        root=IndexInfo.of(index_table).root,
    )


@dataclass
class ShardCheck:
    problems: list[NiftiFileError]  # files that cannot be embedded
    nifti2: list[str]  # NIfTI-2 files: embedded exactly, but datasets decodes NIfTI-1 only
    nifti2_columns: dict[str, int] = field(default_factory=dict)  # column -> NIfTI-2 files in it


def check_shard_files(rows: ShardRows) -> ShardCheck:
    """Check every file of a shard (header, size, symlink) before any byte is embedded.

    Also checks that no row puts over 2 GiB into one column, which one Arrow binary
    array cannot hold. Reports every problem found, not only the first.
    """
    problems: list[NiftiFileError] = []
    nifti2: list[str] = []
    nifti2_columns: dict[str, int] = {}
    for label, files in zip(rows.labels, rows.files, strict=True):
        per_column: dict[str, int] = {}
        for f in files:
            path = rows.root / f["relpath"]
            try:
                info = inspect_nifti(path)
            except NiftiFileError as exc:
                problems.append(exc)
                continue
            if info.version == "NIfTI-2":
                nifti2.append(f["relpath"])
                nifti2_columns[f["column"]] = nifti2_columns.get(f["column"], 0) + 1
            per_column[f["column"]] = per_column.get(f["column"], 0) + info.size
        for column, total in per_column.items():
            if total > ARROW_BINARY_LIMIT:
                problems.append(
                    NiftiFileError(
                        f"{rows.root}/{label}",
                        f"column {column!r} of row {label} holds {total / 2**30:.2f} GiB, over the 2 GiB one "
                        "Arrow binary array can hold; split the column (e.g. by run or task)",
                    )
                )
    return ShardCheck(problems=problems, nifti2=nifti2, nifti2_columns=nifti2_columns)


class ShardFilesError(UserError):
    """One or more files of a shard cannot be embedded; the message lists them all."""

    def __init__(self, key: str, problems: list[NiftiFileError]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{key}: {len(problems)} file(s) cannot be embedded:\n{lines}")


@dataclass
class EmbeddedShard:
    """A shard ready to be written: its schema and a lazy stream of embedded row groups."""

    key: str
    start: int
    stop: int
    num_shards: int
    rows: ShardRows
    schema: pa.Schema
    groups: Iterator[pa.Table] = field(repr=False)
    write_options: dict = field(default_factory=dict)  # for pyarrow's ParquetWriter
    warnings: list[str] = field(default_factory=list)
    #: the preview config's schema, when the shard makes one; its rows fill ``preview_tables``
    #: as ``groups`` are consumed (thumbnails made from the bytes being embedded)
    preview_schema: pa.Schema | None = None
    preview_tables: list[pa.Table] = field(default_factory=list, repr=False)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        return sum(self.rows.sizes)


def shard_schema(
    features: Features,
    key: str,
    start: int,
    stop: int,
    num_shards: int,
    fp: str,
    nifti2: Mapping[str, int] | None = None,
    preview: bool = False,
) -> pa.Schema:
    """The features' Arrow schema (HF metadata included) plus this shard's own record.

    ``nifti2`` (column -> number of NIfTI-2 files) is recorded only when there are any,
    so that the card can say how to read those columns (see :func:`recorded_nifti2`).
    """
    schema = features.arrow_schema
    meta = dict(schema.metadata or {})
    record: dict = {"key": key, "start": start, "stop": stop, "num_shards": num_shards, "fingerprint": fp}
    if nifti2:
        record["nifti2"] = dict(sorted(nifti2.items()))
    if preview:
        record["preview"] = True  # a preview file was written with it: the shard needs both
    meta[SHARD_META_KEY] = json.dumps(record).encode()
    return schema.with_metadata(meta)


def _both(first: FileHook, then: FileHook | None) -> FileHook:
    """A file hook that calls ``first``, then ``then`` (whose answer, a consumer of the
    decompressed bytes or None, is the hook's)."""

    def hook(path: str, data: memoryview):
        first(path, data)
        return then(path, data) if then is not None else None

    return hook


def build_shard(
    dataset: Dataset,
    index_table: pa.Table,
    plan: ShardPlan,
    key: str,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    shard_strategy: str = "pandas",
    compression: str = "auto",
    prefetch: bool = True,
    on_file: FileHook | None = None,
) -> EmbeddedShard:
    """Prepare shard ``key``: check its files, then stream its embedded row groups lazily.

    Args:
        row_group_size: embed and write about this many bytes of files at a time (a
            row larger than that is a group of its own); peak memory follows it.
        shard_strategy: ``pandas`` (the workaround, default) or ``arrow`` (see ``dataset.embed``).
        compression: the codec of the NIfTI bytes columns, or ``auto`` (chosen per file type).
        prefetch: embed the next row group while the current one is written.
        on_file: also called with each file's path and bytes as they are embedded (e.g.
            ``publish.digests.SourceDigests``, which records each source's sha256 for the
            verification); it returns nothing.

    Raises:
        ShardFilesError: when any file of the shard is missing, empty, not NIfTI, a
            broken symlink or too large; nothing is read beyond the headers then. Also
            raised while the groups stream, by the first ``.nii.gz`` file whose gzip
            stream does not decompress whole with matching CRC-32 and length (checked on
            the bytes being embedded); the writer then leaves no file.
    """
    if len(dataset) != index_table.num_rows:
        raise ShardPlanError(
            f"dataset has {len(dataset)} rows but the index has {index_table.num_rows}: both must come "
            "from the same materialization; materialize hf_dataset again."
        )
    if shard_strategy not in STRATEGIES:
        raise ValueError(f"shard_strategy must be one of {', '.join(STRATEGIES)}, not {shard_strategy!r}.")
    embed = STRATEGIES[shard_strategy]
    start, stop = plan.range_of(key)
    rows = shard_rows(index_table, start, stop)
    checked = check_shard_files(rows)
    if checked.problems:
        raise ShardFilesError(key, checked.problems)
    warnings = []
    if checked.nifti2:
        warnings.append(
            f"{len(checked.nifti2)} NIfTI-2 file(s) (e.g. {shown(checked.nifti2[0])}): embedded byte for byte, but "
            "datasets decodes cells with Nifti1Image.from_bytes, which reads NIfTI-1 only; readers need "
            "Nifti(decode=False) and nibabel.Nifti2Image.from_bytes (after gzip.decompress for .nii.gz) "
            "for them, as the dataset card shows"
        )
    features = dataset.features
    info = IndexInfo.of(index_table)
    fingerprint = rows.fingerprint()
    schema = shard_schema(
        features,
        key,
        start,
        stop,
        plan.num_shards,
        fingerprint,
        nifti2=checked.nifti2_columns,
        preview=info.preview,
    )
    shard = dataset.select(range(start, stop))
    collector = ThumbnailCollector() if info.preview else None
    hook = collector if on_file is None else _both(on_file, collector)
    previews: list[pa.Table] = []
    preview_schema = (
        shard_schema(preview_features(info), key, start, stop, plan.num_shards, fingerprint)
        if info.preview
        else None
    )

    def embed_group(bounds: tuple[int, int]) -> pa.Table:
        part = shard.select(range(*bounds))
        try:
            table = embed(part, features, hook).cast(schema)
        except NiftiFileError as exc:  # a damaged gzip stream, found as its bytes were embedded
            raise ShardFilesError(key, [exc]) from None
        if collector is not None:  # the group's thumbnails, from the bytes just embedded
            paths = nifti_paths(part.with_format("arrow")[:], nifti_columns(features))
            rows_part = index_table.slice(start + bounds[0], bounds[1] - bounds[0])
            previews.append(preview_table(rows_part, paths, info, collector.take).cast(preview_schema))
        return table

    def groups() -> Iterator[pa.Table]:
        # The next group is read while the caller writes this one: reading and writing
        # overlap (both release the GIL), and at most two groups are in memory.
        ranges = _greedy_ranges(rows.sizes, row_group_size)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed") as pool:
            pending = pool.submit(embed_group, ranges[0]) if ranges and prefetch else None
            for i, bounds in enumerate(ranges):
                table = pending.result() if pending is not None else embed_group(bounds)
                pending = (
                    pool.submit(embed_group, ranges[i + 1]) if prefetch and i + 1 < len(ranges) else None
                )
                yield table
                del table

    return EmbeddedShard(
        key=key,
        start=start,
        stop=stop,
        num_shards=plan.num_shards,
        rows=rows,
        schema=schema,
        groups=groups(),
        write_options=write_options(features, rows.gzip_share(), compression),
        warnings=warnings,
        preview_schema=preview_schema,
        preview_tables=previews,
    )


def read_shard_record(schema: pa.Schema) -> dict | None:
    """The shard record (key, range, fingerprint) stored in a shard file's schema."""
    raw = (schema.metadata or {}).get(SHARD_META_KEY)
    return json.loads(raw) if raw else None


def recorded_nifti2(records: Iterable[dict | None]) -> dict[str, int]:
    """Column -> NIfTI-2 files, summed over shard records (shards built before this was recorded: none)."""
    total: dict[str, int] = {}
    for record in records:
        for column, count in ((record or {}).get("nifti2") or {}).items():
            total[column] = total.get(column, 0) + int(count)
    return total
