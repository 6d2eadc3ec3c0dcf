"""Shard planning, slice isolation when embedding, and row groups of written shards."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import nibabel
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, List, Nifti

from bids_hub_dagster.bids.columns import ColumnRule
from bids_hub_dagster.bids.index import build_index
from bids_hub_dagster.dataset.parquet import write_row_groups
from bids_hub_dagster.dataset.shards import (
    ShardPlanError,
    build_shard,
    partition_key,
    plan_for_index,
    plan_shards,
    read_shard_record,
    shard_index,
)
from bids_hub_dagster.dataset.tables import FILES_COLUMN, dataset_from_index, index_to_table, row_sizes

# --------------------------------------------------------------------------------------
# Files opened, seen through the "open" audit event. Audit hooks cannot be removed, so
# one hook is installed for the whole module and switched on only while it is needed.
# --------------------------------------------------------------------------------------

_RECORDING = False
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open":
        target = args[0]
        if isinstance(target, (str, bytes, os.PathLike)):
            _OPENED.append(os.fsdecode(target))


sys.addaudithook(_audit)


class record_opens:
    """Context manager: the NIfTI paths (real paths) opened inside the block."""

    def __enter__(self) -> set[str]:
        global _RECORDING
        _OPENED.clear()
        self.paths: set[str] = set()
        _RECORDING = True
        return self.paths

    def __exit__(self, *exc: object) -> None:
        global _RECORDING
        _RECORDING = False
        self.paths.update(os.path.realpath(p) for p in _OPENED if ".nii" in os.path.basename(p))
        _OPENED.clear()


# --------------------------------------------------------------------------------------
# plan_shards
# --------------------------------------------------------------------------------------


def _check_cover(ranges: tuple[tuple[int, int], ...], n: int) -> None:
    """Ranges are contiguous, non-empty, in order and cover rows 0..n exactly."""
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for left, right in zip(ranges, ranges[1:], strict=False):
        assert left[1] == right[0]
    assert all(b > a for a, b in ranges)


def test_plan_fills_shards_with_whole_rows_in_order() -> None:
    plan = plan_shards([3, 3, 3, 3, 3], max_shard_size=7)
    assert plan.ranges == ((0, 2), (2, 4), (4, 5))
    assert plan.sizes == (6, 6, 3)
    # a shard may be filled exactly to the limit
    assert plan_shards([2, 3, 5, 5], max_shard_size=5).ranges == ((0, 2), (2, 3), (3, 4))
    # everything fits in one shard
    assert plan_shards([1, 2, 3], max_shard_size=100).ranges == ((0, 3),)


def test_plan_puts_a_row_over_the_limit_in_a_shard_of_its_own() -> None:
    plan = plan_shards([1, 1, 50, 1, 60, 70, 2, 2], max_shard_size=10)
    assert plan.ranges == ((0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8))
    assert plan.sizes == (2, 50, 1, 60, 70, 4)
    # first row alone over the limit
    assert plan_shards([11, 1], max_shard_size=10).ranges == ((0, 1), (1, 2))


def test_plan_greedy_invariants_on_random_sizes() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        n = rng.randint(1, 40)
        sizes = [rng.choice([0, rng.randint(1, 100), rng.randint(100, 400)]) for _ in range(n)]
        limit = rng.randint(1, 300)
        plan = plan_shards(sizes, max_shard_size=limit)
        _check_cover(plan.ranges, n)
        assert sum(plan.sizes) == sum(sizes)
        for (a, b), size in zip(plan.ranges, plan.sizes, strict=True):
            assert size == sum(sizes[a:b])
            assert size <= limit or b - a == 1, (sizes, limit, plan)
            if b < n:  # greedy: the next row would not have fit
                assert size + sizes[b] > limit, (sizes, limit, plan)


def test_plan_of_no_rows_has_no_shards() -> None:
    plan = plan_shards([], max_shard_size=10)
    assert plan.num_shards == 0 and plan.keys() == []
    assert plan_shards([], max_shard_size=10, num_shards=3).num_shards == 0


@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 23])
def test_plan_num_shards_matches_datasets_contiguous_shard(n: int) -> None:
    ds = Dataset.from_dict({"i": list(range(n))})
    sizes = [10**9] * n  # huge rows: num_shards must ignore sizes and max_shard_size
    for k in range(1, n + 1):
        plan = plan_shards(sizes, max_shard_size=1, num_shards=k)
        expected = []
        for i in range(k):
            ids = ds.shard(num_shards=k, index=i, contiguous=True)["i"]
            assert ids == list(range(ids[0], ids[-1] + 1))
            expected.append((ids[0], ids[-1] + 1))
        assert plan.ranges == tuple(expected), (n, k)
        assert plan.num_shards == k


def test_plan_num_shards_over_row_count_is_one_row_per_shard() -> None:
    # datasets itself cannot split 3 rows into 8 shards; the plan caps at one row per shard
    plan = plan_shards([5, 5, 5], max_shard_size=1, num_shards=8)
    assert plan.ranges == ((0, 1), (1, 2), (2, 3))
    assert plan.keys() == ["shard-00000", "shard-00001", "shard-00002"]


def test_partition_keys() -> None:
    plan = plan_shards([1] * 12, max_shard_size=1)
    assert plan.keys()[:3] == ["shard-00000", "shard-00001", "shard-00002"]
    assert plan.keys()[-1] == "shard-00011"
    assert partition_key(42) == "shard-00042"
    assert all(shard_index(k) == i for i, k in enumerate(plan.keys()))
    assert plan.range_of("shard-00011") == (11, 12)
    with pytest.raises(ShardPlanError, match="shard-00012 is not in the current shard plan"):
        plan.range_of("shard-00012")
    for bad in ("shard-", "shard-1a", "part-00001", "00001"):
        with pytest.raises(ValueError, match="not a shard partition key"):
            shard_index(bad)


# --------------------------------------------------------------------------------------
# A BIDS tree of real nibabel images, every file with distinct bytes
# --------------------------------------------------------------------------------------

# subject -> (T1w image, [bold images]) ; some subjects have no bold run (empty list)
TREE = {
    "01": ("anatomical.nii", ["functional.nii", "example4d.nii.gz", "reoriented_anat_moved.nii"]),
    "02": ("resampled_anat_moved.nii", []),
    "03": ("example_nifti2.nii.gz", ["functional.nii", "standard.nii.gz"]),
    "04": ("anatomical.nii", []),
    "05": ("standard.nii.gz", ["resampled_anat_moved.nii"]),
    "06": ("resampled_anat_moved.nii", ["example_nifti2.nii.gz", "functional.nii"]),
    "07": ("reoriented_anat_moved.nii", []),
}
COLUMNS = (
    ColumnRule.from_mapping("t1w", {"datatype": "anat", "suffix": "T1w"}),
    ColumnRule.from_mapping("bold", {"datatype": "func", "suffix": "bold", "many": True}),
)


def _save_unique(source: Path, dest: Path, tag: str) -> None:
    """Re-save a real nibabel image with its own ``descrip`` so no two files share bytes."""
    img = nibabel.load(source)
    img.header["descrip"] = tag.encode()[:79]
    dest.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(img, dest)


@pytest.fixture
def multi_tree(tmp_path: Path, nibabel_data: Path) -> Path:
    root = tmp_path / "multi"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "multi", "BIDSVersion": "1.10.0"}))
    for sub, (t1w, bolds) in TREE.items():
        ext = ".nii.gz" if t1w.endswith(".gz") else ".nii"
        _save_unique(nibabel_data / t1w, root / f"sub-{sub}/anat/sub-{sub}_T1w{ext}", f"sub-{sub} T1w")
        for run, image in enumerate(bolds, start=1):
            ext = ".nii.gz" if image.endswith(".gz") else ".nii"
            name = f"sub-{sub}/func/sub-{sub}_task-rest_run-{run}_bold{ext}"
            _save_unique(nibabel_data / image, root / name, f"sub-{sub} run-{run}")
    return root


def _index(root: Path):
    table = index_to_table(build_index(root, list(COLUMNS)))
    return table, dataset_from_index(table)


def _shard_files(table, start: int, stop: int) -> set[str]:
    root = Path(json.loads(table.schema.metadata[b"bids_hub_dagster"])["root"])
    rows = table.column(FILES_COLUMN).to_pylist()[start:stop]
    return {os.path.realpath(root / f["relpath"]) for row in rows for f in row}


def test_multi_tree_is_what_the_tests_assume(multi_tree: Path) -> None:
    table, ds = _index(multi_tree)
    assert ds.features["bold"] == List(Nifti()) and ds.features["t1w"] == Nifti()
    assert table.column("subject_id").to_pylist() == [f"sub-{s}" for s in TREE]
    bold = table.column("bold").to_pylist()
    assert [len(b) for b in bold] == [len(v[1]) for v in TREE.values()]
    files = sorted(p for p in multi_tree.rglob("*.nii*"))
    contents = {p.read_bytes() for p in files}
    assert len(files) == len(TREE) + sum(len(v[1]) for v in TREE.values())
    assert len(contents) == len(files)  # every file has its own bytes


# --------------------------------------------------------------------------------------
# Slice isolation: building shard i embeds only shard i's files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["pandas", "arrow"])
@pytest.mark.parametrize("row_group_size", [10**9, 1], ids=["one-group", "row-per-group"])
@pytest.mark.parametrize("num_shards", [2, 3, 4, 7])
def test_building_a_shard_opens_only_its_own_files(
    multi_tree: Path, num_shards: int, row_group_size: int, strategy: str
) -> None:
    table, ds = _index(multi_tree)
    plan = plan_for_index(table, max_shard_size=1, num_shards=num_shards)
    all_files = _shard_files(table, 0, table.num_rows)
    seen: set[str] = set()
    for key, (start, stop) in zip(plan.keys(), plan.ranges, strict=True):
        expected = _shard_files(table, start, stop)
        with record_opens() as checked:
            shard = build_shard(ds, table, plan, key, row_group_size=row_group_size, shard_strategy=strategy)
        # the header checks look at this shard's files only
        assert checked == expected, key
        with record_opens() as opened:
            groups = list(shard.groups)
        assert opened == expected, (
            f"{key} rows {start}-{stop} opened other shards' files: {sorted(opened - expected)}; "
            f"missing: {sorted(expected - opened)}"
        )
        assert not opened & (all_files - expected)
        seen |= opened

        # the embedded bytes are exactly the source files, row by row, in order
        got = [row for g in groups for row in g.to_pylist()]
        assert len(got) == stop - start
        relpaths = table.slice(start, stop - start)
        for row, sub, t1w, bolds in zip(
            got,
            relpaths.column("subject_id").to_pylist(),
            relpaths.column("t1w").to_pylist(),
            relpaths.column("bold").to_pylist(),
            strict=True,
        ):
            assert row["subject_id"] == sub
            assert row["t1w"]["bytes"] == (multi_tree / t1w).read_bytes()
            assert row["t1w"]["path"] == Path(t1w).name
            assert [c["path"] for c in row["bold"]] == [Path(p).name for p in bolds]
            assert [c["bytes"] for c in row["bold"]] == [(multi_tree / p).read_bytes() for p in bolds]
    assert seen == all_files  # every file is embedded by exactly the shards that own it


@pytest.mark.parametrize("strategy", ["pandas", "arrow"])
def test_a_middle_slice_of_rows_with_empty_lists_embeds_only_its_rows(
    multi_tree: Path, strategy: str
) -> None:
    """Rows 1-3 (sub-02 empty, sub-03 two runs, sub-04 empty) between rows with many runs."""
    table, ds = _index(multi_tree)
    sizes = row_sizes(table)
    # plan by size so that shard 1 is exactly rows 1..4
    plan = plan_shards(sizes, max_shard_size=sum(sizes[1:4]), num_shards=None)
    assert plan.range_of("shard-00000") == (0, 1) and plan.range_of("shard-00001") == (1, 4), plan
    shard = build_shard(ds, table, plan, "shard-00001", shard_strategy=strategy)
    with record_opens() as opened:
        rows = [r for g in shard.groups for r in g.to_pylist()]
    assert opened == _shard_files(table, 1, 4)
    assert [r["subject_id"] for r in rows] == ["sub-02", "sub-03", "sub-04"]
    assert [len(r["bold"]) for r in rows] == [0, 2, 0]


# --------------------------------------------------------------------------------------
# Row groups of a written shard
# --------------------------------------------------------------------------------------


def _nifti_bytes(row: dict) -> int:
    return len(row["t1w"]["bytes"]) + sum(len(c["bytes"]) for c in row["bold"])


@pytest.mark.parametrize("row_group_size", [1, 150_000, 400_000])
def test_shard_file_row_groups_stay_under_the_limit(
    multi_tree: Path, tmp_path: Path, row_group_size: int
) -> None:
    table, ds = _index(multi_tree)
    plan = plan_shards(row_sizes(table), max_shard_size=10**9)
    assert plan.num_shards == 1
    shard = build_shard(ds, table, plan, "shard-00000", row_group_size=row_group_size)
    path = tmp_path / "out" / "shard-00000.parquet"
    written = write_row_groups(path, shard.schema, shard.groups)

    pf = pq.ParquetFile(path)
    assert written.num_rows == pf.metadata.num_rows == table.num_rows
    assert written.num_row_groups == pf.metadata.num_row_groups > 1
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary left behind
    sizes = shard.rows.sizes
    offset = 0
    for i in range(pf.metadata.num_row_groups):
        group = pf.read_row_group(i).to_pylist()
        n = len(group)
        recorded = sum(sizes[offset : offset + n])
        assert n == 1 or recorded <= row_group_size, (i, n, recorded)
        assert sum(_nifti_bytes(r) for r in group) == recorded
        offset += n
    assert offset == table.num_rows
    if row_group_size == 1:
        assert pf.metadata.num_row_groups == table.num_rows

    schema = pq.read_schema(path)
    assert b"huggingface" in schema.metadata
    features = Features.from_arrow_schema(schema)
    assert features["t1w"] == Nifti()
    assert features["bold"] == List(Nifti())
    assert features == ds.features
    record = read_shard_record(schema)
    assert record["key"] == "shard-00000" and (record["start"], record["stop"]) == (0, table.num_rows)
    assert record["fingerprint"] == shard.rows.fingerprint()


def test_written_shard_loads_back_with_datasets(multi_tree: Path, tmp_path: Path) -> None:
    table, ds = _index(multi_tree)
    plan = plan_for_index(table, max_shard_size=1, num_shards=2)
    shard = build_shard(ds, table, plan, "shard-00001", row_group_size=100_000)
    path = tmp_path / "s.parquet"
    write_row_groups(path, shard.schema, shard.groups)
    loaded = Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "cache"))
    assert loaded.features["bold"] == List(Nifti())
    start, stop = plan.range_of("shard-00001")
    assert loaded["subject_id"] == table.column("subject_id").to_pylist()[start:stop]
    raw = loaded.with_format("arrow")[:].to_pylist()
    for row, t1w in zip(raw, table.column("t1w").to_pylist()[start:stop], strict=True):
        assert row["t1w"]["bytes"] == (multi_tree / t1w).read_bytes()


# --------------------------------------------------------------------------------------
# Strategies and codecs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("row_group_size", [1, 150_000, 10**9])
def test_pandas_and_arrow_strategies_write_identical_parquet_content(
    multi_tree: Path, tmp_path: Path, row_group_size: int
) -> None:
    table, ds = _index(multi_tree)
    plan = plan_for_index(table, max_shard_size=1, num_shards=3)
    for key in plan.keys():
        written = {}
        for strategy in ("pandas", "arrow"):
            shard = build_shard(ds, table, plan, key, row_group_size=row_group_size, shard_strategy=strategy)
            path = tmp_path / strategy / f"{key}.parquet"
            write_row_groups(path, shard.schema, shard.groups, **shard.write_options)
            written[strategy] = pq.read_table(path)
        pandas_rows, arrow_rows = written["pandas"], written["arrow"]
        assert pandas_rows.schema == arrow_rows.schema
        assert pandas_rows.equals(arrow_rows), key
        meta = [pq.ParquetFile(tmp_path / s / f"{key}.parquet").metadata for s in ("pandas", "arrow")]
        assert meta[0].num_row_groups == meta[1].num_row_groups


def test_arrow_strategy_reads_through_an_indices_mapping(multi_tree: Path) -> None:
    """A non-contiguous selection (indices mapping) embeds the selected rows, in that order."""
    from bids_hub_dagster.dataset.embed import embed_rows_arrow, embed_rows_pandas

    table, ds = _index(multi_tree)
    picked = ds.select([5, 0, 2])
    arrow = embed_rows_arrow(picked, ds.features)
    assert arrow.column("subject_id").to_pylist() == ["sub-06", "sub-01", "sub-03"]
    assert arrow.equals(embed_rows_pandas(picked, ds.features))


def test_auto_codec_compresses_nii_columns_only(tmp_path: Path, nibabel_data: Path) -> None:
    root = tmp_path / "codec"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "codec", "BIDSVersion": "1.10.0"}))
    for sub in ("01", "02"):
        _save_unique(nibabel_data / "anatomical.nii", root / f"sub-{sub}/anat/sub-{sub}_T1w.nii", sub)
        _save_unique(
            nibabel_data / "example4d.nii.gz", root / f"sub-{sub}/func/sub-{sub}_task-x_bold.nii.gz", sub
        )
    table = index_to_table(build_index(root))
    ds = dataset_from_index(table)
    plan = plan_for_index(table, max_shard_size=10**9, num_shards=None)
    codecs = {}
    for choice in ("auto", "none", "zstd"):
        shard = build_shard(ds, table, plan, "shard-00000", compression=choice)
        path = tmp_path / f"{choice}.parquet"
        write_row_groups(path, shard.schema, shard.groups, **shard.write_options)
        group = pq.ParquetFile(path).metadata.row_group(0)
        columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
        codecs[choice] = {name: col.compression for name, col in columns.items()}
        assert not columns["t1w.bytes"].is_stats_set  # no min/max of whole images in the footer
        assert pq.read_table(path).equals(pq.read_table(tmp_path / "auto.parquet"))  # same content
    assert codecs["auto"]["t1w.bytes"] == "ZSTD"  # .nii: zstd pays
    assert codecs["auto"]["bold.bytes"] == "UNCOMPRESSED"  # .nii.gz: nothing to gain
    assert codecs["none"]["t1w.bytes"] == "UNCOMPRESSED"
    assert codecs["zstd"]["bold.bytes"] == "ZSTD"
    assert (tmp_path / "auto.parquet").stat().st_size < (tmp_path / "none.parquet").stat().st_size
