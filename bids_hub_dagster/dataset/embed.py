"""Embedding strategies: turn a group of rows holding NIfTI paths into rows holding their bytes.

Both take a ``Dataset`` that may be an Arrow slice of a larger one and read the files of
that slice only; both give the same table. Both check the bytes of each ``.gz`` file they
read, in memory, once (``nifti.check_file_bytes``: the whole gzip stream, every member's
CRC-32 and length); a damaged file raises ``NiftiFileError`` naming it. A caller may
look at each file's bytes while they are in memory (``on_file``: the previews do).

- ``pandas`` (default): the seed workaround. The NIfTI path columns, and only they, make
  a pandas round trip, which gives a fresh table that shares nothing with the parent (its
  offsets start at zero); then the bytes are embedded as ``arrow`` does. The round trip
  is what made embedding safe on ``datasets`` < 5.2, where ``embed_table_storage`` on a
  slice with a ``List(Nifti())`` column read every file of the parent table. Other columns
  (ids, phenotype, ``Json`` sidecars) never go through pandas: it would give every
  ``Json`` object the keys of the other rows as nulls.
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
from typing import Protocol

import datasets as hf_datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features

from ..bids.errors import shown
from .nifti import CHECK_THREADS, check_file_bytes
from .tables import nifti_columns

#: Called with each file's path and bytes while they are in memory. For a ``.gz`` file it may
#: return a consumer of the decompressed pieces, fed by the one pass of the integrity check.
FileHook = Callable[[str, memoryview], Callable[[bytes], object] | None]


class Embedder(Protocol):
    def __call__(self, part: Dataset, features: Features, on_file: FileHook | None = None) -> pa.Table: ...


class _FileChecks:
    """Checks files' bytes (``check_file_bytes``) on a few threads while the next files are read.

    ``wait`` raises the error of the first damaged file, in the order they were given.
    """

    def __init__(self, on_file: FileHook | None = None) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._on_file = on_file

    def submit(self, path: str, data: memoryview) -> None:
        consume = self._on_file(path, data) if self._on_file is not None else None
        if not path.lower().endswith(".gz"):  # only gzip streams have anything to check
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="gzip-check")
        self._pending.append(self._pool.submit(_check_then_close, path, data, consume))

    def wait(self) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)


def _check_then_close(path: str, data: memoryview, consume: Callable[[bytes], object] | None) -> object:
    """Check a file's bytes feeding ``consume``; then let it finish its work on this same thread
    (its ``close``, e.g. a thumbnail's encoding), in parallel with the other files' checks."""
    checked = check_file_bytes(path, data, consume)
    close = getattr(consume, "close", None)
    if close is not None:
        close()
    return checked


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    was_enabled = hf_datasets.is_progress_bar_enabled()
    hf_datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            hf_datasets.enable_progress_bars()


def _nifti_structs(column: pa.ChunkedArray, many: bool) -> pa.StructArray:
    """The ``{bytes, path}`` structs of a NIfTI column, one per file (lists flattened)."""
    if many:
        return column.combine_chunks().flatten()  # flatten() honours a slice; .values does not
    return column.combine_chunks()


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


def _embed_struct_array(structs: pa.StructArray, on_file: FileHook | None = None) -> pa.StructArray:
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
    checks = _FileChecks(on_file)
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


def _embed_columns(table: pa.Table, features: Features, on_file: FileHook | None) -> pa.Table:
    """``table`` (paths) with the bytes of every NIfTI column's files embedded, slice-safe."""
    columns = []
    nifti = nifti_columns(features)
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if nifti.get(name) is False:
            column = _embed_struct_array(column, on_file)
        elif nifti.get(name):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            offsets = np.zeros(len(column) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            child = _embed_struct_array(
                column.flatten(), on_file
            )  # flatten() honours the slice; .values does not
            column = pa.ListArray.from_arrays(pa.array(offsets), child, mask=pc.invert(column.is_valid()))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def embed_rows_arrow(part: Dataset, features: Features, on_file: FileHook | None = None) -> pa.Table:
    """Embed the bytes of ``part``'s files by building the Arrow structs directly."""
    table = part.with_format("arrow")[:]  # applies any indices mapping; a zero-copy slice otherwise
    embedded = _embed_columns(table.select(list(features)), features, on_file)
    return embedded.cast(features.arrow_schema)


def embed_rows_pandas(part: Dataset, features: Features, on_file: FileHook | None = None) -> pa.Table:
    """Embed the bytes of ``part``'s files after breaking any Arrow slice (pandas round trip).

    Only the NIfTI path columns make the round trip; the other columns are taken as
    they are (a ``Json`` column through pandas comes back with other rows' keys as nulls).
    """
    nifti = list(nifti_columns(features))
    table = part.with_format("arrow")[:]
    if nifti:
        paths = part.select_columns(nifti)
        with _quiet_datasets():
            fresh = Dataset.from_pandas(paths.to_pandas(), preserve_index=False).cast(
                Features({n: features[n] for n in nifti})
            )
        embedded = _embed_columns(fresh._data.table.combine_chunks(), features, on_file)
        for name in nifti:
            table = table.set_column(table.column_names.index(name), name, embedded.column(name))
    return table.select(list(features)).cast(features.arrow_schema)


STRATEGIES: dict[str, Embedder] = {"pandas": embed_rows_pandas, "arrow": embed_rows_arrow}
