"""Parquet IO managers: one file per asset, one file per shard partition.

Layout under ``base_dir``::

    <dataset>/bids_index.parquet            the index table (paths, entities, sidecars)
    <dataset>/hf_dataset.parquet            the typed dataset (paths, not bytes; HF features in metadata)
    <dataset>/hub_shards/shard-00042.parquet one embedded shard, streamed row group by row group
    <dataset>/hub_shards.preview/shard-00042.parquet   its preview rows (thumbnails), when the spec
                                            makes the preview config

``base_dir`` is a local folder or a fsspec URL (``s3://bucket/prefix``, ``gs://…``): with a
URL the same layout lives under the URL as keys, written through local scratch and
uploaded whole, each with a ``<key>.sha256`` digest sidecar (see :mod:`..storage`).
Callers that read a stored file use :meth:`BidsHubParquetIOManager.read_table` and
:meth:`BidsHubParquetIOManager.local_shard`, which work for both.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset
from datasets.table import InMemoryTable

from ..dataset.parquet import WrittenFile, write_row_groups, write_table
from ..dataset.shards import EmbeddedShard, read_shard_record
from ..errors import UserError
from ..pipeline.refresh import StoredShard, stored_shard_file
from ..publish.digests import record_digest, sidecar_path, sources_path
from ..storage import Store, is_remote, open_store, scratch_folder
from .outcomes import user_failure


def preview_file(shard: Path) -> Path:
    """``…/hub_shards/shard-00042.parquet`` → ``…/hub_shards.preview/shard-00042.parquet``."""
    return shard.parent.with_name(shard.parent.name + ".preview") / shard.name


class StoredFiles(dict):
    """What ``load_input`` hands over for shard partitions of a remote store: partition key →
    the file's key in ``store`` (as a relative path). No byte is read here: a Hub publication
    copies them to scratch one commit batch at a time (``publish.sources.StoredSource``), a
    local folder all at once (``publish.publication.local_shard_files``)."""

    def __init__(self, files: dict[str, Path], store: Store) -> None:
        super().__init__(files)
        self.store = store


def default_storage_dir() -> str:
    """``$BIDS_HUB_STORAGE`` (a folder or a fsspec URL), else ``$DAGSTER_HOME/bids_hub_storage``, else ``~/.bids_hub_dagster/storage``."""
    if os.environ.get("BIDS_HUB_STORAGE"):
        return os.environ["BIDS_HUB_STORAGE"]
    if os.environ.get("DAGSTER_HOME"):
        return str(Path(os.environ["DAGSTER_HOME"]) / "bids_hub_storage")
    return str(Path.home() / ".bids_hub_dagster" / "storage")


def _write_shard(path: Path, shard: EmbeddedShard) -> tuple[WrittenFile, str, str | None]:
    """Write ``shard`` at ``path`` and its preview rows beside it (:func:`preview_file`), each atomically
    with its sha256 recorded (what a later reuse compares with); the file, its digest, the preview's.

    Raises dg.Failure (no retry) for a damaged file found as its bytes were embedded.
    """
    try:
        written = write_row_groups(path, shard.schema, shard.groups, **shard.write_options)
    except UserError as exc:
        raise user_failure(exc) from exc
    digest = record_digest(written.path)
    if shard.preview_schema is None:
        return written, digest, None
    # its rows were made as the groups were embedded
    table = (
        pa.concat_tables(shard.preview_tables) if shard.preview_tables else shard.preview_schema.empty_table()
    )
    preview = write_table(preview_file(written.path), table.cast(shard.preview_schema))
    return written, digest, record_digest(preview.path)


class BidsHubParquetIOManager(dg.ConfigurableIOManager):
    """Persists index tables, datasets and shards as parquet files under ``base_dir``."""

    base_dir: str

    @property
    def remote(self) -> bool:
        """Whether ``base_dir`` is a URL: files go through scratch (see :mod:`..storage`)."""
        return is_remote(self.base_dir)

    @property
    def store(self) -> Store:
        return open_store(self.base_dir)

    @staticmethod
    def _key(key: dg.AssetKey, partition: str | None = None) -> str:
        """The store key of an asset (or partition): ``_path``'s layout, relative to ``base_dir``."""
        *prefix, name = key.path
        return "/".join(
            [*prefix, name, f"{partition}.parquet"] if partition else [*prefix, f"{name}.parquet"]
        )

    def _local_only(self, what: str) -> None:
        if self.remote:
            raise ValueError(
                f"{what}: the storage {self.base_dir} is not a local folder; use read_table() or "
                "local_shard() of the IO manager, which copy a stored file to scratch."
            )

    def _path(self, key: dg.AssetKey, partition: str | None = None) -> Path:
        *prefix, name = key.path
        folder = Path(self.base_dir, *prefix)
        return folder / name / f"{partition}.parquet" if partition else folder / f"{name}.parquet"

    def asset_path(self, key: dg.AssetKey) -> Path:
        """Where an unpartitioned asset (the index, the dataset) is stored (a local folder only)."""
        self._local_only(f"asset_path({key.to_user_string()})")
        return self._path(key)

    def partition_path(self, key: dg.AssetKey, partition: str) -> Path:
        """Where the file of one partition (a shard) is stored (a local folder only)."""
        self._local_only(f"partition_path({key.to_user_string()}, {partition})")
        return self._path(key, partition)

    def preview_path(self, key: dg.AssetKey, partition: str) -> Path:
        """Where the preview rows of a shard are stored (see :func:`preview_file`; a local folder only)."""
        self._local_only(f"preview_path({key.to_user_string()}, {partition})")
        return preview_file(self._path(key, partition))

    def location(self, key: dg.AssetKey, partition: str | None = None) -> str:
        """Where a file is stored, as shown to users: a path, or a URL under a remote ``base_dir``."""
        return self.store.url(self._key(key, partition)) if self.remote else str(self._path(key, partition))

    @contextlib.contextmanager
    def local_shard(self, key: dg.AssetKey, partition: str, preview: bool = False) -> Iterator[Path]:
        """A readable local path of a partition's file (its preview file with ``preview``).

        The stored file itself under a local ``base_dir``; under a URL a scratch copy (its sha256
        verified as it is copied), removed afterwards. A file not stored gives a path that does
        not exist, as a local folder would.
        """
        if not self.remote:
            path = self._path(key, partition)
            yield preview_file(path) if preview else path
            return
        name = self._key(key, partition)
        if preview:
            name = preview_file(Path(name)).as_posix()
        store = self.store
        with scratch_folder() as scratch:
            yield store.fetch(name, scratch) if store.exists(name) else scratch / name

    def read_table(self, key: dg.AssetKey) -> pa.Table:
        """The stored table of an unpartitioned asset (the index, the dataset).

        Raises:
            FileNotFoundError: the asset has not been materialized yet.
        """
        if not self.remote:
            path = self._path(key)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{key.to_user_string()} has not been materialized yet ({path} is missing); "
                    "materialize it first."
                )
            return pq.read_table(path)
        store, name = self.store, self._key(key)
        if not store.exists(name):
            raise FileNotFoundError(
                f"{key.to_user_string()} has not been materialized yet ({store.url(name)} is missing); "
                "materialize it first."
            )
        with store.fetched([name]) as copies:
            return pq.read_table(copies[name])

    def _stored_object(self, store: Store, name: str) -> StoredShard:
        """A remote file's state: stored only with its digest record; changed when its size or ETag differs."""
        state = store.state(name)
        if not state.exists or state.recorded is None:
            return StoredShard(exists=False)
        # the object's ETag stands for the sha256 found: it tells two changed versions apart
        return StoredShard(True, state.changed, state.etag) if state.changed else StoredShard(True)

    def _stored_remote_shard(self, key: dg.AssetKey, partition: str) -> StoredShard:
        store, name = self.store, self._key(key, partition)
        stored = self._stored_object(store, name)
        if not stored.exists or stored.changed:
            return stored
        try:
            with store.open(name) as fh:  # the footer only
                record = read_shard_record(pq.read_schema(fh)) or {}
        except (OSError, pa.ArrowException):
            return StoredShard(True, f"{store.url(name)} is not a readable parquet file")
        if record.get("preview"):
            return self._stored_object(store, preview_file(Path(name)).as_posix())
        return stored

    def stored_shard(self, key: dg.AssetKey, partition: str) -> StoredShard:
        """Whether a partition's files are stored and intact (``pipeline.refresh.shards_to_build``).

        A shard built with a preview needs its preview file too: a step killed between the
        two writes leaves the shard file alone, which then counts as missing. Under a URL, a
        file counts as stored when its object and its digest sidecar are both there.
        """
        if self.remote:
            return self._stored_remote_shard(key, partition)
        path = self._path(key, partition)
        stored = stored_shard_file(path)
        if not stored.exists or stored.changed:
            return stored
        try:
            record = read_shard_record(pq.read_schema(path)) or {}
        except (OSError, pa.ArrowException):
            return StoredShard(True, f"{path} is not a readable parquet file")
        if record.get("preview"):
            return stored_shard_file(preview_file(path))
        return stored

    def delete_stale_partitions(self, key: dg.AssetKey, planned: dict[str, tuple[int, int]]) -> list[Path]:
        """Remove stored shard files that the plan no longer has, or that hold other rows than planned.

        A plan that shrank leaves files of removed partitions; a plan that moved its row
        ranges leaves files built for other rows. Neither can be published, so neither is kept.
        Under a URL the removed files are given as their keys (relative paths).
        """
        if self.remote:
            return self._delete_stale_remote(key, planned)
        folder = self._path(key, "x").parent
        removed = []
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            wanted = planned.get(path.stem)
            if wanted is not None:
                record = read_shard_record(pq.read_schema(path))
                if record and (record.get("start"), record.get("stop")) == wanted:
                    continue
            sources_path(path).unlink(missing_ok=True)
            for stale in (path, preview_file(path)):
                sidecar_path(stale).unlink(missing_ok=True)
                stale.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def _delete_stale_remote(self, key: dg.AssetKey, planned: dict[str, tuple[int, int]]) -> list[Path]:
        store = self.store
        folder = self._key(key, "x").rsplit("/", 1)[0]
        removed = []
        for name in store.list(folder):
            wanted = planned.get(Path(name).stem)
            if wanted is not None:
                try:
                    with store.open(name) as fh:
                        record = read_shard_record(pq.read_schema(fh))
                except (OSError, pa.ArrowException):
                    record = None
                if record and (record.get("start"), record.get("stop")) == wanted:
                    continue
            for stale in (name, preview_file(Path(name)).as_posix()):
                store.delete(stale)
            removed.append(Path(name))
        return removed

    def store_shard(
        self,
        key: dg.AssetKey,
        partition: str,
        shard: EmbeddedShard,
        on_stored: Callable[[Path], None] | None = None,
    ) -> WrittenFile:
        """Write a shard (and its preview rows) from the asset body, where each shard of a range is stored
        as it is built; ``handle_output`` stores a shard output the same way.

        ``on_stored`` is called with a local path of the stored shard once it is stored (the
        file itself; under a URL its scratch copy, removed after the call): the pre-upload's hook.
        """
        if self.remote:
            return self._store_remote_shard(key, partition, shard, on_stored)
        written = self._store_local_shard(key, partition, shard)
        if on_stored is not None:
            on_stored(written.path)
        return written

    def _store_remote_shard(
        self,
        key: dg.AssetKey,
        partition: str,
        shard: EmbeddedShard,
        on_stored: Callable[[Path], None] | None,
    ) -> WrittenFile:
        """Write the shard (and preview) to scratch, digest them, upload them whole, remove the copies."""
        store, name = self.store, self._key(key, partition)
        preview_name = preview_file(Path(name)).as_posix()
        with scratch_folder() as scratch:
            written, digest, preview_digest = _write_shard(scratch.joinpath(*name.split("/")), shard)
            store.put(written.path, name, digest)  # the shard first: alone, it counts as missing
            if preview_digest is not None:
                store.put(preview_file(written.path), preview_name, preview_digest)
            else:  # built before without a preview: that file belongs to no shard now
                store.delete(preview_name)
            if on_stored is not None:
                on_stored(written.path)
        return WrittenFile(Path(name), written.num_rows, written.num_row_groups, written.size)

    def _put_table(self, name: str, table: pa.Table) -> WrittenFile:
        """Store a small table under a remote ``base_dir``: through scratch, with its digest."""
        with scratch_folder() as scratch:
            written = write_table(scratch.joinpath(*name.split("/")), table)
            self.store.put(written.path, name, record_digest(written.path))
        return WrittenFile(Path(name), written.num_rows, written.num_row_groups, written.size)

    def _store_local_shard(self, key: dg.AssetKey, partition: str, shard: EmbeddedShard) -> WrittenFile:
        written, _, preview_digest = _write_shard(self._path(key, partition), shard)
        preview = preview_file(written.path)
        if (
            preview_digest is None and preview.exists()
        ):  # built before without a preview: that file belongs to no shard now
            sidecar_path(preview).unlink(missing_ok=True)
            preview.unlink()
        return written

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        started = time.monotonic()
        partition = context.partition_key if context.has_asset_partitions else None
        if self.remote:
            self._handle_remote_output(context, obj, partition, started)
            return
        path = self._path(context.asset_key, partition)
        if isinstance(obj, EmbeddedShard):
            written = self.store_shard(context.asset_key, partition, obj)
        elif isinstance(obj, WrittenFile) and obj.path == path:  # stored already, by store_shard
            written = obj
        elif isinstance(obj, Dataset):
            written = write_table(path, obj.data.table)
        elif isinstance(obj, pa.Table):
            written = write_table(path, obj)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: cannot store a {type(obj).__name__} as parquet."
            )
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "file_bytes": written.size,
                "row_groups": written.num_row_groups,
                # a shard's embedding happens here, as its row groups are written
                "write_duration_s": round(time.monotonic() - started, 2),
            }
        )

    def _handle_remote_output(
        self, context: dg.OutputContext, obj: object, partition: str | None, started: float
    ) -> None:
        name = self._key(context.asset_key, partition)
        if isinstance(obj, EmbeddedShard):
            written = self.store_shard(context.asset_key, partition, obj)
        elif isinstance(obj, WrittenFile) and obj.path == Path(name):  # stored already, by store_shard
            written = obj
        elif isinstance(obj, Dataset):
            written = self._put_table(name, obj.data.table)
        elif isinstance(obj, pa.Table):
            written = self._put_table(name, obj)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: cannot store a {type(obj).__name__} as parquet."
            )
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.url(self.store.url(name)),
                "file_bytes": written.size,
                "row_groups": written.num_row_groups,
                "write_duration_s": round(time.monotonic() - started, 2),
            }
        )

    def load_input(self, context: dg.InputContext) -> object:
        key = context.asset_key
        if context.has_asset_partitions and self.remote:
            # the keys only: hub_upload copies them to scratch a batch at a time
            return StoredFiles({k: Path(self._key(key, k)) for k in context.asset_partition_keys}, self.store)
        if self.remote:
            table = self.read_table(key)
            return Dataset(InMemoryTable(table)) if key.path[-1] == "hf_dataset" else table
        if context.has_asset_partitions:
            # Shards are handed over as file paths: the bytes are never loaded whole.
            keys = context.asset_partition_keys
            return {k: self._path(key, k) for k in keys}
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(
                f"{key.to_user_string()} has not been materialized yet ({path} is missing); materialize it first."
            )
        table = pq.read_table(path)
        if key.path[-1] == "hf_dataset":
            return Dataset(InMemoryTable(table))
        return table
