"""Where the files of a publication are read from: local files, or the keys of a remote store.

A destination that publishes in batches (the Hub) asks its :class:`FileSource` for what it
needs of each file: the sha256 and size (to plan which files still need sending, and to
verify the published copies by the Hub's LFS oid), the row count (verification), and local
paths of the files of one commit batch, for as long as that commit takes.

- :data:`LOCAL_FILES`: the files are local paths (a local storage folder, or copies already
  made); everything is read from them, as it always was.
- :class:`StoredSource`: the files are keys of a remote store (``s3://…``), named as
  relative paths. Their sha256 and size are the digest record written when each was stored,
  their row counts and schema come from their parquet footers read through the store's
  file system (:func:`inspect_stored`): nothing is copied to plan, render the card or verify.
  :meth:`StoredSource.local` copies one batch to scratch (``BIDS_HUB_SCRATCH``), each copy
  checked against its recorded sha256 as it is copied, and removes the copies when the
  batch is done, also on failure or Ctrl-C: scratch never holds more than one batch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from ..bids.errors import shown
from .digests import file_digest, was_uploaded

if TYPE_CHECKING:
    from ..storage import Store

#: footers and digest records read at once from a remote store (each is one or two small requests)
INSPECT_THREADS = 8


class FileSource(Protocol):
    """What a destination asks of the files it publishes (see the module docstring)."""

    remote: bool  # the files are keys of a remote store, copied to scratch a batch at a time

    def sha256(self, path: Path) -> str: ...

    def size(self, path: Path) -> int: ...

    def num_rows(self, path: Path) -> int: ...

    def shown(self, path: Path) -> str:
        """The file as named in messages."""

    def was_uploaded(self, path: Path, target: str) -> bool:
        """Whether an earlier pre-upload already sent the file's bytes to ``target``."""

    def local(self, paths: Sequence[Path]) -> contextlib.AbstractContextManager[dict[Path, Path]]:
        """Local paths holding the bytes of ``paths`` while the block runs (removed afterwards if copies)."""


class LocalFiles:
    """Local files, read where they are (nothing copied)."""

    remote = False

    def sha256(self, path: Path) -> str:
        return file_digest(Path(path))

    def size(self, path: Path) -> int:
        return Path(path).stat().st_size

    def num_rows(self, path: Path) -> int:
        return pq.ParquetFile(path).metadata.num_rows

    def shown(self, path: Path) -> str:
        return shown(path)

    def was_uploaded(self, path: Path, target: str) -> bool:
        return was_uploaded(Path(path), target)

    @contextlib.contextmanager
    def local(self, paths: Sequence[Path]) -> Iterator[dict[Path, Path]]:
        yield {Path(p): Path(p) for p in paths}


LOCAL_FILES = LocalFiles()


@dataclass(frozen=True)
class StoredFacts:
    """What a publication needs of a stored parquet file, read without copying it."""

    sha256: str  # as recorded when it was stored
    size: int
    num_rows: int
    dataset_size: int  # uncompressed bytes, as the footer records them
    schema: pa.Schema  # with its metadata (the shard record, the HF features)


def inspect_stored(store: Store, key: str) -> StoredFacts | str | None:
    """The facts of ``key`` from its digest record and its parquet footer (a HEAD and a few small GETs).

    Returns None when ``key`` is not stored (absent, or without the digest record that marks a
    complete upload), a message when its bytes cannot be trusted (changed since stored, not a
    readable parquet file), else its :class:`StoredFacts`.
    """
    state = store.state(key)
    if not state.exists or state.recorded is None:
        return None
    if state.changed is not None:
        return state.changed
    try:
        meta = store.footer(key)
    except (OSError, pa.ArrowException) as exc:
        return f"{store.url(key)} is not a readable parquet file: {exc}"
    return StoredFacts(
        sha256=state.recorded.sha256,
        size=state.recorded.size,
        num_rows=meta.num_rows,
        dataset_size=sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
        schema=meta.schema.to_arrow_schema(),
    )


def inspect_all(store: Store, keys: Iterable[str]) -> dict[str, StoredFacts | str | None]:
    """:func:`inspect_stored` of every key, a few at a time (each is a few small requests).

    On Ctrl-C or a failure, the keys not started yet are dropped: only those in flight are awaited.
    """
    keys = list(dict.fromkeys(keys))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=INSPECT_THREADS)
    try:
        return dict(zip(keys, pool.map(lambda k: inspect_stored(store, k), keys), strict=True))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StoredSource:
    """Files of a remote store, named by their keys as relative paths (see the module docstring)."""

    remote = True

    def __init__(self, store: Store, facts: Mapping[str, StoredFacts]) -> None:
        self.store = store
        self.facts = dict(facts)

    def _facts(self, path: Path) -> StoredFacts:
        return self.facts[Path(path).as_posix()]

    def sha256(self, path: Path) -> str:
        return self._facts(path).sha256

    def size(self, path: Path) -> int:
        return self._facts(path).size

    def num_rows(self, path: Path) -> int:
        return self._facts(path).num_rows

    def shown(self, path: Path) -> str:
        return shown(self.store.url(Path(path).as_posix()))

    def was_uploaded(self, path: Path, target: str) -> bool:
        return False  # a pre-upload marks its scratch copy, gone since; the Hub skips bytes it holds

    @contextlib.contextmanager
    def local(self, paths: Sequence[Path]) -> Iterator[dict[Path, Path]]:
        """Copies of ``paths`` in a fresh scratch folder, each checked against the sha256 recorded when
        it was stored, and against the one the publication was planned with; removed afterwards.

        Raises:
            storage.StoreError: a file is missing, has no digest record, its bytes differ from the
                record, or it was stored again since the publication was planned.
        """
        from ..storage import StoreError

        if not paths:
            yield {}
            return
        keys = [Path(p).as_posix() for p in paths]
        with self.store.fetched(keys) as copies:
            for key in keys:
                if file_digest(copies[key]) != self.facts[key].sha256:  # recorded as copied: no hashing
                    raise StoreError(
                        f"{self.store.url(key)} was stored again while it was being published; publish again."
                    )
            yield {Path(p): copies[k] for p, k in zip(paths, keys, strict=True)}
