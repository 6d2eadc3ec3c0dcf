"""The parquet IO manager (defs/io_managers.py): where it stores what, what it loads, what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from bids_hub_dagster.dataset.shards import SHARD_META_KEY, build_shard, plan_for_index, read_shard_record
from bids_hub_dagster.dataset.tables import dataset_from_index
from bids_hub_dagster.defs.io_managers import BidsHubParquetIOManager
from bids_hub_dagster.defs.outcomes import USER_ERROR
from bids_hub_dagster.pipeline.refresh import StoredShard
from bids_hub_dagster.publish.digests import check_recorded, sidecar_path
from bids_hub_dagster_tests.test_integrity import corrupt_file

INDEX = dg.AssetKey(["demo", "bids_index"])
DATASET = dg.AssetKey(["demo", "hf_dataset"])
SHARDS = dg.AssetKey(["demo", "hub_shards"])
# static here: dynamic ones need an instance to resolve, and the layout does not depend on the kind
PARTITIONS = dg.StaticPartitionsDefinition([f"shard-{i:05d}" for i in range(4)])


@pytest.fixture
def io(tmp_path) -> BidsHubParquetIOManager:
    return BidsHubParquetIOManager(base_dir=str(tmp_path / "storage"))


def store(io, key, obj, partition: str | None = None) -> dg.OutputContext:
    context = dg.build_output_context(
        asset_key=key, partition_key=partition, asset_partitions_def=PARTITIONS if partition else None
    )
    io.handle_output(context, obj)
    return context


def load(io, key, partitions: list[str] | None = None):
    if partitions:
        context = dg.build_input_context(
            asset_key=key,
            asset_partition_key_range=dg.PartitionKeyRange(partitions[0], partitions[-1]),
            asset_partitions_def=dg.StaticPartitionsDefinition(partitions),
        )
    else:
        context = dg.build_input_context(asset_key=key)
    return io.load_input(context)


def test_one_file_per_asset_and_one_per_partition(io, tmp_path):
    base = tmp_path / "storage"
    assert io.asset_path(INDEX) == base / "demo" / "bids_index.parquet"
    assert io.partition_path(SHARDS, "shard-00042") == base / "demo" / "hub_shards" / "shard-00042.parquet"


def test_tables_and_datasets_round_trip(io, demo_spec):
    table = demo_spec.index_table()
    store(io, INDEX, table)
    assert io.asset_path(INDEX).is_file()
    assert load(io, INDEX).equals(table)

    ds = dataset_from_index(table)
    store(io, DATASET, ds)
    back = load(io, DATASET)
    assert isinstance(back, Dataset)  # hf_dataset comes back typed: its Nifti features are kept
    assert back.features == ds.features and len(back) == len(ds)


def test_loading_what_was_never_stored_says_what_to_materialize(io):
    with pytest.raises(
        FileNotFoundError, match=r"demo/bids_index has not been materialized yet .* materialize it"
    ):
        load(io, INDEX)


def test_shards_are_handed_over_as_paths_never_loaded(io):
    keys = ["shard-00000", "shard-00001"]
    assert load(io, SHARDS, keys) == {k: io.partition_path(SHARDS, k) for k in keys}


def test_an_object_it_cannot_store_is_a_type_error_naming_the_asset(io):
    with pytest.raises(TypeError, match=r"demo/bids_index: cannot store a dict as parquet"):
        store(io, INDEX, {"not": "a table"})


def test_a_shard_is_stored_with_its_digest(io, demo_spec):
    table = demo_spec.index_table()
    plan = plan_for_index(table, demo_spec.max_shard_size, 4)
    shard = build_shard(dataset_from_index(table), table, plan, "shard-00001")
    store(io, SHARDS, shard, "shard-00001")
    path = io.partition_path(SHARDS, "shard-00001")
    assert pq.ParquetFile(path).metadata.num_rows == 1
    assert read_shard_record(pq.read_schema(path))["start"] == 1
    assert check_recorded(path).recorded  # recorded as written: what later reuse compares with
    assert io.stored_shard(SHARDS, "shard-00001") == StoredShard(True)
    assert io.stored_shard(SHARDS, "shard-00002") == StoredShard(False)


def test_a_damaged_gzip_found_while_writing_is_a_user_failure_and_leaves_no_file(io, demo_spec):
    gz = demo_spec.bids_root / "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz"
    corrupt_file(gz)  # header and trailer intact: only decompressing the whole stream finds it
    table = demo_spec.index_table()
    plan = plan_for_index(table, demo_spec.max_shard_size, 4)
    shard = build_shard(dataset_from_index(table), table, plan, "shard-00000")  # headers only: fine
    with pytest.raises(dg.Failure) as info:
        store(io, SHARDS, shard, "shard-00000")
    failure = info.value
    assert failure.metadata[USER_ERROR].value == "ShardFilesError"  # no retry; the CLI exits 2
    assert "shard-00000: 1 file(s) cannot be embedded" in failure.description
    assert str(gz) in failure.description
    folder = io.partition_path(SHARDS, "shard-00000").parent
    assert not folder.exists() or list(folder.iterdir()) == []


def write_shard_file(io, key: str, start: int, stop: int) -> Path:
    path = io.partition_path(SHARDS, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "start": start, "stop": stop, "num_shards": 3, "fingerprint": "x"}
    table = pa.table({"row": list(range(start, stop))})
    pq.write_table(table.replace_schema_metadata({SHARD_META_KEY: json.dumps(record).encode()}), path)
    sidecar_path(path).write_text("{}")
    return path


def test_delete_stale_partitions_keeps_matching_shards_only(io):
    kept = write_shard_file(io, "shard-00000", 0, 2)
    moved = write_shard_file(io, "shard-00001", 2, 3)  # the plan now gives it rows 2–3
    dropped = write_shard_file(io, "shard-00002", 4, 5)  # the plan no longer has it
    foreign = io.partition_path(SHARDS, "shard-00003")
    pq.write_table(pa.table({"x": [1]}), foreign)  # no shard record: not kept either

    removed = io.delete_stale_partitions(SHARDS, {"shard-00000": (0, 2), "shard-00001": (2, 4)})

    assert removed == [moved, dropped, foreign]
    assert kept.is_file() and sidecar_path(kept).is_file()
    for path in removed:
        assert not path.exists() and not sidecar_path(path).exists()
    assert io.delete_stale_partitions(SHARDS, {"shard-00000": (0, 2)}) == []


def test_delete_stale_partitions_of_nothing_stored(io):
    assert io.delete_stale_partitions(SHARDS, {"shard-00000": (0, 2)}) == []
