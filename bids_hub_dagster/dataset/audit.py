"""Checks of built shard files, read back from disk: what Dagster's asset checks run.

- every NIfTI cell holds bytes with a NIfTI-1/2 header (no zero-byte or foreign file), and
  a ``.gz`` cell a gzip stream that decompresses whole with matching CRC-32 and length;
- a shard holds exactly the rows its plan gives it;
- the shards together hold every row of the dataset exactly once.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Features

from .nifti import CHECK_THREADS, nifti_bytes_problem
from .shards import read_shard_record
from .tables import nifti_columns

_BATCH_ROWS = 8  # rows read at a time: a row can hold hundreds of MB of images


@dataclass
class ShardAudit:
    path: Path
    num_rows: int = 0
    cells: int = 0  # NIfTI cells looked at
    record: dict | None = None  # key, start, stop, fingerprint written with the shard
    problems: list[str] = field(default_factory=list)


def audit_shard_file(path: Path | str, check_cells: bool = True) -> ShardAudit:
    """Read a shard file back and list what is wrong with it (empty list: nothing)."""
    audit = ShardAudit(Path(path))
    if not audit.path.is_file():
        audit.problems.append(f"{audit.path} does not exist")
        return audit
    parquet = pq.ParquetFile(audit.path)
    audit.num_rows = parquet.metadata.num_rows
    audit.record = read_shard_record(parquet.schema_arrow)
    if audit.record is None:
        audit.problems.append(f"{audit.path.name} has no shard record: it was not written by this tool")
    if not check_cells:
        return audit
    columns = nifti_columns(Features.from_arrow_schema(parquet.schema_arrow))
    row = 0
    # a .gz cell is decompressed whole (CRC-32 and length): cells are checked on a few threads
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="audit") as pool:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns)):
            where: list[str] = []
            checks = []
            for values in zip(*(batch.column(c).to_pylist() for c in columns), strict=True):
                for (name, many), value in zip(columns.items(), values, strict=True):
                    cells = (value or []) if many else ([] if value is None else [value])
                    for cell in cells:
                        label = cell.get("path") or "?"
                        where.append(f"row {row} {name}: {label}")
                        checks.append(pool.submit(nifti_bytes_problem, cell.get("bytes"), label))
                row += 1
            audit.cells += len(checks)
            for place, check in zip(where, checks, strict=True):
                if problem := check.result():
                    audit.problems.append(f"{place}: {problem}")
    return audit


def row_count_problems(audit: ShardAudit, key: str, planned: tuple[int, int]) -> list[str]:
    """A shard must hold exactly the planned rows ``[start, stop)``, as its record says too."""
    start, stop = planned
    problems = []
    if audit.num_rows != stop - start:
        problems.append(
            f"{key} holds {audit.num_rows} rows; the plan gives it {stop - start} (rows {start}–{stop - 1})"
        )
    if audit.record and (audit.record.get("start"), audit.record.get("stop")) != (start, stop):
        problems.append(
            f"{key} was built for rows {audit.record.get('start')}–{audit.record.get('stop', 0) - 1}; "
            f"the plan now gives it rows {start}–{stop - 1}: rebuild it"
        )
    return problems


@dataclass
class Coverage:
    """How the shards cover the dataset's rows: errors (a row twice, a shard of another plan) and gaps."""

    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # shards not built yet: normal while a backfill runs


def shard_coverage(
    audits: Mapping[str, ShardAudit], num_rows: int, planned: Mapping[str, tuple[int, int]]
) -> Coverage:
    """Every row ``0 … num_rows-1`` in exactly one shard, each shard holding its ``planned`` rows."""
    coverage = Coverage()
    owner: list[list[str]] = [[] for _ in range(num_rows)]
    for key, audit in sorted(audits.items()):
        if audit.record is None:
            if audit.path.is_file():
                coverage.errors.append(f"{key}: not a shard of this tool (no record); materialize it again")
            else:
                coverage.missing.append(f"{key}: not built yet; materialize this hub_shards partition")
            continue
        start, stop = audit.record["start"], audit.record["stop"]
        if key in planned and (start, stop) != planned[key]:
            want = planned[key]
            coverage.errors.append(
                f"{key}: built for rows {start}–{stop - 1}, the plan now gives it rows {want[0]}–{want[1] - 1}; "
                "materialize this hub_shards partition again"
            )
        if stop - start != audit.num_rows:
            coverage.errors.append(f"{key}: records rows {start}–{stop - 1} but holds {audit.num_rows}")
        for i in range(max(start, 0), min(stop, num_rows)):
            owner[i].append(key)
        if stop > num_rows:
            coverage.errors.append(
                f"{key}: rows {max(start, num_rows)}–{stop - 1} are beyond the dataset's {num_rows}"
            )
    for i, keys in enumerate(owner):
        if len(keys) > 1:
            coverage.errors.append(f"row {i} is in {len(keys)} shards: {', '.join(keys)}")
    uncovered = [i for i, keys in enumerate(owner) if not keys]
    if uncovered and not coverage.missing:  # rows no planned shard covers: the plan itself is wrong
        shown = ", ".join(map(str, uncovered[:20])) + (" …" if len(uncovered) > 20 else "")
        coverage.errors.append(f"{len(uncovered)} row(s) in no shard: {shown}")
    return coverage
