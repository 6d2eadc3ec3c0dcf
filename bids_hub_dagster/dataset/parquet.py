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
from datasets import Features

from .tables import nifti_columns

#: The values of a spec's ``compression``: one codec for every NIfTI bytes column, or
#: ``auto``, which picks one per column (see :func:`write_options`).
COMPRESSIONS = ("auto", "none", "snappy", "lz4", "zstd")
#: Below this share of gzip-compressed bytes, a NIfTI column is compressed with zstd:
#: measured on brain-like int16 volumes, zstd level 1 shrinks ``.nii`` 2.8× and
#: ``.nii.gz`` not at all (see BENCHMARKS.md).
GZIP_SHARE_FOR_NO_COMPRESSION = 0.5


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


def nifti_leaves(features: Features) -> dict[str, tuple[str, str]]:
    """Parquet leaf paths of each NIfTI column: ``{column: (bytes leaf, path leaf)}``."""
    return {
        name: (f"{name}.list.element.bytes", f"{name}.list.element.path")
        if many
        else (f"{name}.bytes", f"{name}.path")
        for name, many in nifti_columns(features).items()
    }


def _leaf_paths(path: str, kind: pa.DataType) -> list[str]:
    """The parquet leaf columns of an Arrow field (ParquetWriter options name leaves, not fields)."""
    if isinstance(kind, pa.ExtensionType):
        kind = kind.storage_type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _leaf_paths(f"{path}.list.element", kind.value_type)
    if pa.types.is_struct(kind):
        return [
            leaf
            for i in range(kind.num_fields)
            for leaf in _leaf_paths(f"{path}.{kind.field(i).name}", kind.field(i).type)
        ]
    return [path]


def write_options(features: Features, gzip_share: dict[str, float], compression: str = "auto") -> dict:
    """ParquetWriter options for a shard.

    NIfTI bytes columns get no dictionary and no statistics (min/max of whole images
    would bloat the footer), and a codec: ``auto`` gives zstd (level 1) to columns that
    hold mostly uncompressed ``.nii`` bytes and none to columns of ``.nii.gz`` files,
    which no codec shrinks further. Other columns are small: zstd with dictionaries.

    Args:
        features: the dataset's features.
        gzip_share: per NIfTI column, the share of its bytes in gzip-compressed files.
        compression: ``auto``, or the one codec of every NIfTI bytes column.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}.")
    leaves = nifti_leaves(features)
    codecs: dict[str, str] = {}
    for name, (bytes_leaf, path_leaf) in leaves.items():
        chosen = compression
        if compression == "auto":
            chosen = "none" if gzip_share.get(name, 1.0) >= GZIP_SHARE_FOR_NO_COMPRESSION else "zstd"
        codecs[bytes_leaf] = chosen
        codecs[path_leaf] = "zstd"
    others = [
        leaf for f in features.arrow_schema if f.name not in leaves for leaf in _leaf_paths(f.name, f.type)
    ]
    for leaf in others:
        codecs[leaf] = "zstd"
    small = others + [p for _, p in leaves.values()]
    return {
        # pages as large as an image: fewer, bigger writes (measured faster than 1 MiB pages)
        "data_page_size": 64 * 2**20,
        "compression": codecs,
        "compression_level": {leaf: 1 for leaf, c in codecs.items() if c == "zstd"},
        "use_dictionary": small,
        "write_statistics": small,
    }


def write_row_groups(path: Path, schema: pa.Schema, groups: Iterable[pa.Table], **options) -> WrittenFile:
    """Write each table of ``groups`` as one row group (streamed: one group in memory).

    ``options`` go to ``pyarrow.parquet.ParquetWriter`` (see :func:`write_options`).
    """
    rows = count = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, **options) as writer:
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
