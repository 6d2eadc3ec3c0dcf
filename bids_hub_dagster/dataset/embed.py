"""Embedding strategies: turn a group of rows holding NIfTI paths into rows holding their bytes.

Both take a ``Dataset`` that may be an Arrow slice of a larger one and read the files of
that slice only; both give the same table. Both check the bytes of each ``.gz`` file they
read, in memory, once (``nifti.check_file_bytes``: the whole gzip stream, every member's
CRC-32 and length); a damaged file raises ``NiftiFileError`` naming it.

- ``pandas`` (default): the seed workaround. A pandas round trip makes a fresh table that
  shares nothing with the parent, then ``datasets.table.embed_table_storage`` reads the
  files. Safe on every ``datasets`` version, including those before 5.2 where embedding a
  slice with a ``List(Nifti())`` column read every file of the parent table.
- ``arrow``: builds the ``{bytes, path}`` structs directly. Paths are read through
  offset-aware accessors (``flatten``, ``struct_field``), never ``.values``/``.field()``
  which ignore a slice; each file is read with one sequential ``readinto`` straight into
  the Arrow buffer of its column, so the bytes are copied once, from the page cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterator

import datasets as hf_datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features
from datasets.table import embed_table_storage

from ..bids.errors import shown
from .nifti import CHECK_THREADS, check_file_bytes
from .tables import nifti_columns

Embedder = Callable[[Dataset, Features], pa.Table]


class _FileChecks:
    """Checks files' bytes (``check_file_bytes``) on a few threads while the next files are read.

    ``wait`` raises the error of the first damaged file, in the order they were given.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []

    def submit(self, path: str, data: object) -> None:
        if not path.lower().endswith(".gz"):  # only gzip streams have anything to check
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="gzip-check")
        self._pending.append(self._pool.submit(check_file_bytes, path, data))

    def wait(self) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    was_enabled = hf_datasets.is_progress_bar_enabled()
    hf_datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            hf_datasets.enable_progress_bars()


def embed_rows_pandas(part: Dataset, features: Features) -> pa.Table:
    """Embed the bytes of ``part``'s files after breaking any Arrow slice (pandas round trip)."""
    with _quiet_datasets():
        fresh = Dataset.from_pandas(part.to_pandas(), preserve_index=False).cast(features)
    table = fresh._data.table.combine_chunks()
    embedded = embed_table_storage(table)
    _check_read_files(table, embedded, features)
    return embedded


def _nifti_structs(column: pa.ChunkedArray, many: bool) -> pa.StructArray:
    """The ``{bytes, path}`` structs of a NIfTI column, one per file (lists flattened)."""
    if many:
        return column.combine_chunks().flatten()  # flatten() honours a slice; .values does not
    return column.combine_chunks()


def _check_read_files(before: pa.Table, after: pa.Table, features: Features) -> None:
    """Check the bytes of every file ``embed_table_storage`` read, naming it by its full path.

    ``before`` is the table of paths that was embedded (its paths are whole; the embedded
    ones keep the file name only), ``after`` the embedded table, in the same shape.
    """
    checks = _FileChecks()
    for name, many in nifti_columns(features).items():
        source = _nifti_structs(before.column(name), many)
        embedded = _nifti_structs(after.column(name), many)
        paths = pc.struct_field(source, "path")
        given = pc.struct_field(source, "bytes")
        data = pc.struct_field(embedded, "bytes")
        for path, had, cell in zip(paths, given, data, strict=True):
            if path.is_valid and not had.is_valid and cell.is_valid:  # read from the file now
                checks.submit(path.as_py(), cell.as_buffer())
    checks.wait()


class FileChangedError(OSError):
    """A file's size changed while it was being read."""


def _read_into(path: str, view: memoryview) -> None:
    """Fill ``view`` with the whole file at ``path`` (sequential reads, no extra copy)."""
    with open(path, "rb", buffering=0) as fh:
        pos = 0
        while pos < len(view):
            n = fh.readinto(view[pos:])
            if not n:
                raise FileChangedError(
                    f"{shown(path)}: file shrank while being read ({pos} of {len(view)} bytes)"
                )
            pos += n
        if fh.read(1):
            raise FileChangedError(f"{shown(path)}: file grew while being read (more than {len(view)} bytes)")


def _embed_struct_array(structs: pa.StructArray) -> pa.StructArray:
    """``{bytes: null, path: "/abs/x.nii"}`` → ``{bytes: <file>, path: "x.nii"}``, slice-safe."""
    n = len(structs)
    paths = pc.struct_field(structs, "path").to_pylist()
    given = pc.struct_field(structs, "bytes").to_pylist()
    valid = structs.is_valid().to_numpy(zero_copy_only=False)
    sizes = np.zeros(n, dtype=np.int64)
    todo: list[tuple[int, str]] = []
    for i in range(n):
        if not valid[i]:
            continue
        if given[i] is not None:
            sizes[i] = len(given[i])
        elif paths[i] is not None:
            sizes[i] = os.stat(paths[i]).st_size
            todo.append((i, paths[i]))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(
            f"{offsets[-1]} bytes in one column of one row group: over Arrow's 2 GiB binary limit"
        )
    data = pa.allocate_buffer(int(offsets[-1]))
    view = memoryview(data).cast("B")
    for i in range(n):
        if given[i] is not None and valid[i]:
            view[offsets[i] : offsets[i + 1]] = given[i]
    checks = _FileChecks()
    for i, path in todo:
        _read_into(path, view[offsets[i] : offsets[i + 1]])
        checks.submit(path, view[offsets[i] : offsets[i + 1]])  # checked while the next file is read
    checks.wait()
    has_bytes = valid & np.array(
        [g is not None or p is not None for g, p in zip(given, paths, strict=True)], dtype=bool
    )
    bitmap = pa.array(has_bytes, type=pa.bool_()).buffers()[1]
    bytes_array = pa.Array.from_buffers(
        pa.binary(),
        n,
        [bitmap, pa.py_buffer(offsets.astype(np.int32)), data],
        null_count=int(n - has_bytes.sum()),
    )
    # as Nifti.embed_storage does: local paths keep their file name only
    names = [None if p is None else (p if "://" in p else os.path.basename(p)) for p in paths]
    path_array = pa.array(names, type=pa.string())
    return pa.StructArray.from_arrays(
        [bytes_array, path_array], ["bytes", "path"], mask=pc.invert(structs.is_valid())
    )


def embed_rows_arrow(part: Dataset, features: Features) -> pa.Table:
    """Embed the bytes of ``part``'s files by building the Arrow structs directly."""
    table = part.with_format("arrow")[:]  # applies any indices mapping; a zero-copy slice otherwise
    columns = []
    nifti = nifti_columns(features)
    for name in features:
        column = table.column(name).combine_chunks()
        if nifti.get(name) is False:
            column = _embed_struct_array(column)
        elif nifti.get(name):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            offsets = np.zeros(len(column) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            child = _embed_struct_array(column.flatten())  # flatten() honours the slice; .values does not
            column = pa.ListArray.from_arrays(pa.array(offsets), child, mask=pc.invert(column.is_valid()))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=features.arrow_schema)


STRATEGIES: dict[str, Embedder] = {"pandas": embed_rows_pandas, "arrow": embed_rows_arrow}
