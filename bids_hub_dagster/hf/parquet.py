"""Parquet files written whole or not at all: a temporary name, then an atomic rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    num_rows: int
    num_row_groups: int
    size: int  # bytes on disk


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it over ``path``, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_row_groups(path: Path, schema: pa.Schema, groups: Iterable[pa.Table]) -> WrittenFile:
    """Write each table of ``groups`` as one row group (streamed: one group in memory)."""
    rows = count = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in groups:
                if table.num_rows == 0:
                    continue
                writer.write_table(table, row_group_size=table.num_rows)
                rows += table.num_rows
                count += 1
    return WrittenFile(path=path, num_rows=rows, num_row_groups=count, size=path.stat().st_size)


def write_table(path: Path, table: pa.Table) -> WrittenFile:
    """Write a small table (index, dataset of paths) atomically."""
    return write_row_groups(path, table.schema, [table])
