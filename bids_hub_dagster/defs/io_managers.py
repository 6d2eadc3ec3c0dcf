"""Parquet IO managers: one file per asset, one file per shard partition.

Layout under ``base_dir``::

    <dataset>/bids_index.parquet            the index table (paths, entities, sidecars)
    <dataset>/hf_dataset.parquet            the typed dataset (paths, not bytes; HF features in metadata)
    <dataset>/hub_shards/shard-00042.parquet one embedded shard, streamed row group by row group
    <dataset>/hub_shards.preview/shard-00042.parquet   its preview rows (thumbnails), when the spec
                                            makes the preview config
"""

from __future__ import annotations

import os
import time
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
from ..publish.digests import record_digest, sidecar_path
from .outcomes import user_failure


def preview_file(shard: Path) -> Path:
    """``…/hub_shards/shard-00042.parquet`` → ``…/hub_shards.preview/shard-00042.parquet``."""
    return shard.parent.with_name(shard.parent.name + ".preview") / shard.name


def default_storage_dir() -> str:
    """``$BIDS_HUB_STORAGE``, else ``$DAGSTER_HOME/bids_hub_storage``, else ``~/.bids_hub_dagster/storage``."""
    if os.environ.get("BIDS_HUB_STORAGE"):
        return os.environ["BIDS_HUB_STORAGE"]
    if os.environ.get("DAGSTER_HOME"):
        return str(Path(os.environ["DAGSTER_HOME"]) / "bids_hub_storage")
    return str(Path.home() / ".bids_hub_dagster" / "storage")


class BidsHubParquetIOManager(dg.ConfigurableIOManager):
    """Persists index tables, datasets and shards as parquet files under ``base_dir``."""

    base_dir: str

    def _path(self, key: dg.AssetKey, partition: str | None = None) -> Path:
        *prefix, name = key.path
        folder = Path(self.base_dir, *prefix)
        return folder / name / f"{partition}.parquet" if partition else folder / f"{name}.parquet"

    def asset_path(self, key: dg.AssetKey) -> Path:
        """Where an unpartitioned asset (the index, the dataset) is stored."""
        return self._path(key)

    def partition_path(self, key: dg.AssetKey, partition: str) -> Path:
        """Where the file of one partition (a shard) is stored."""
        return self._path(key, partition)

    def preview_path(self, key: dg.AssetKey, partition: str) -> Path:
        """Where the preview rows of a shard are stored (see :func:`preview_file`)."""
        return preview_file(self._path(key, partition))

    def stored_shard(self, key: dg.AssetKey, partition: str) -> StoredShard:
        """Whether a partition's files are stored and intact (``pipeline.refresh.shards_to_build``).

        A shard built with a preview needs its preview file too: a step killed between the
        two writes leaves the shard file alone, which then counts as missing.
        """
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
        """
        folder = self._path(key, "x").parent
        removed = []
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            wanted = planned.get(path.stem)
            if wanted is not None:
                record = read_shard_record(pq.read_schema(path))
                if record and (record.get("start"), record.get("stop")) == wanted:
                    continue
            for stale in (path, preview_file(path)):
                sidecar_path(stale).unlink(missing_ok=True)
                stale.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def store_shard(self, key: dg.AssetKey, partition: str, shard: EmbeddedShard) -> WrittenFile:
        """Write a shard inside the asset body (to pre-upload it before the step ends).

        The asset then outputs the returned WrittenFile, which ``handle_output`` accepts as stored.
        """
        try:
            written = write_row_groups(
                self._path(key, partition), shard.schema, shard.groups, **shard.write_options
            )
        except UserError as exc:  # a damaged file found as its bytes were embedded: no retry
            raise user_failure(exc) from exc
        record_digest(written.path)  # what the cache compares with before it reuses the file
        preview = preview_file(written.path)
        if shard.preview_schema is not None:  # its rows were made as the groups were embedded
            table = (
                pa.concat_tables(shard.preview_tables)
                if shard.preview_tables
                else shard.preview_schema.empty_table()
            )
            record_digest(write_table(preview, table.cast(shard.preview_schema)).path)
        elif preview.exists():  # built before without a preview: that file belongs to no shard now
            sidecar_path(preview).unlink(missing_ok=True)
            preview.unlink()
        return written

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        started = time.monotonic()
        partition = context.partition_key if context.has_asset_partitions else None
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

    def load_input(self, context: dg.InputContext) -> object:
        key = context.asset_key
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
