"""End to end through Dagster: index → dataset → shard partitions → upload → load_dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Nifti, load_dataset

from bids_hub_dagster.bids import AmbiguousColumnError
from bids_hub_dagster.dataset.shards import read_shard_record
from bids_hub_dagster.defs import build_definitions, job_names, names
from bids_hub_dagster.defs.outcomes import failure_message
from bids_hub_dagster.spec import spec_for_folder
from bids_hub_dagster_tests.conftest import materialize_all, memory_instance


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_round_trips_byte_for_byte(demo_spec, tmp_path):
    storage = tmp_path / "storage"
    with memory_instance() as instance:
        keys = materialize_all(demo_spec, storage, instance)
        assert keys == ["shard-00000", "shard-00001", "shard-00002"]

        # every asset was materialized, each shard partition once
        for name in ("bids_index", "hf_dataset", "hub_upload"):
            assert instance.get_latest_materialization_event(dg.AssetKey(["demo", name])) is not None
        shards_key = dg.AssetKey(["demo", "hub_shards"])
        assert instance.get_materialized_partitions(shards_key) == set(keys)
        upload = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        meta = upload.asset_materialization.metadata
        assert meta["verification"].value.startswith("OK: 4/4 rows, 12 files")
        assert meta["dagster/row_count"].value == 4

    # intermediate parquet where the IO manager says, with features in the schema
    for key in keys:
        path = storage / "demo" / "hub_shards" / f"{key}.parquet"
        schema = pq.read_schema(path)
        assert Features.from_arrow_schema(schema)["bold"] == List(Nifti())
        assert read_shard_record(schema)["key"] == key
    assert (storage / "demo" / "bids_index.parquet").is_file()
    assert (storage / "demo" / "hf_dataset.parquet").is_file()

    dest = Path(demo_spec.destination)
    assert sorted(p.name for p in (dest / "data").iterdir()) == [
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    assert (dest / "README.md").is_file()

    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features["t1w"] == Nifti()
    assert ds.features["bold"] == List(Nifti())
    assert ds.features["lesion"] == Nifti()
    raw = ds.cast_column("t1w", Nifti(decode=False)).cast_column("lesion", Nifti(decode=False))
    raw = raw.cast_column("bold", List(Nifti(decode=False)))
    root = demo_spec.bids_root
    rows = {(r["subject_id"], r["session_id"]): r for r in raw}
    assert list(rows) == [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1"), ("sub-03", "ses-1")]

    def digest(cell):
        return hashlib.sha256(cell["bytes"]).hexdigest()

    r = rows[("sub-01", "ses-2")]
    assert digest(r["t1w"]) == sha(root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
    assert r["t1w"]["path"] == "sub-01_ses-2_T1w.nii.gz"
    # run-10 after run-2: entities order numbers numerically
    assert [c["path"] for c in r["bold"]] == [
        "sub-01_ses-2_task-rest_run-1_bold.nii",
        "sub-01_ses-2_task-rest_run-2_bold.nii",
        "sub-01_ses-2_task-rest_run-10_bold.nii.gz",
    ]
    for cell in r["bold"]:
        assert digest(cell) == sha(root / "sub-01/ses-2/func" / cell["path"])
    assert r["lesion"] is None
    r = rows[("sub-02", "ses-1")]
    assert r["bold"] == []  # no functional runs: an empty list, not a missing row
    assert r["age"] is None and r["sex"] == "M" and r["group"] == "2"
    r = rows[("sub-01", "ses-1")]
    assert digest(r["lesion"]) == sha(
        root / "derivatives/lesion_masks/sub-01/ses-1/anat/sub-01_ses-1_desc-lesion_mask.nii.gz"
    )
    assert r["age"] == 54.0

    # decoding works too, on every row: nibabel images with the sources' shapes
    shapes = [
        (r["t1w"].shape, [img.shape for img in r["bold"]], r["lesion"] and r["lesion"].shape) for r in ds
    ]
    assert shapes == [
        ((33, 41, 25), [(17, 21, 3, 20), (128, 96, 24, 2)], (4, 5, 7)),
        ((33, 41, 25), [(17, 21, 3, 20), (21, 26, 22), (128, 96, 24, 2)], None),
        ((17, 21, 3), [], None),
        ((33, 41, 25), [(17, 21, 3, 20)], (4, 5, 7)),
    ]


def test_rerun_with_smaller_plan_removes_stale_partitions_and_files(demo_spec, tmp_path):
    storage = tmp_path / "storage"
    with memory_instance() as instance:
        assert len(materialize_all(demo_spec, storage, instance)) == 3
        bigger = demo_spec.with_overrides(max_shard_size="10MB")
        assert materialize_all(bigger, storage, instance) == ["shard-00000"]
        assert instance.get_dynamic_partitions(names(bigger).shard_partitions) == ["shard-00000"]
        # the stored files of dropped partitions are removed with them
        # (with the sidecars that record the shard's sha256 and its sources' sha256)
        assert sorted(p.name for p in (storage / "demo" / "hub_shards").iterdir()) == [
            "shard-00000.parquet",
            "shard-00000.parquet.sha256.json",
            "shard-00000.parquet.sources.json",
        ]
    dest = Path(demo_spec.destination)
    assert [p.name for p in (dest / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert len(load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "c"))) == 4


def test_upload_refuses_shards_built_for_another_plan(demo_spec, tmp_path):
    """A shard file left from an older plan (same key, other rows) is never published."""
    storage = tmp_path / "storage"
    with memory_instance() as instance:
        materialize_all(demo_spec, storage, instance)
        two = demo_spec.with_overrides(num_shards=2)
        defs = build_definitions([two], storage_dir=str(storage))
        jobs = job_names(two)
        assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
        result = defs.resolve_job_def(jobs.upload).execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        text = failure_message(result.all_events)
        # re-planning dropped the files built for other rows: both shards must be built again
        assert "2 shard(s) not built yet: shard-00000, shard-00001" in text
        assert not (storage / "demo" / "hub_shards" / "shard-00000.parquet").exists()
        assert not result.get_asset_materialization_events()  # the blocking check stopped the upload
    # the earlier, complete publication is untouched
    assert len(list((Path(demo_spec.destination) / "data").iterdir())) == 3


def test_one_row_per_subject_zero_config(demo_spec, tmp_path):
    spec = spec_for_folder(demo_spec.bids_root, row="subject", destination=str(tmp_path / "out"))
    with memory_instance() as instance:
        materialize_all(spec, tmp_path / "storage", instance)
    ds = load_dataset(spec.destination, split="train", cache_dir=str(tmp_path / "c"))
    assert ds["subject_id"] == ["sub-01", "sub-02", "sub-03"]
    assert ds["session_id"] == [None, None, None]
    assert ds.features["t1w"] == List(Nifti())  # two sessions' T1w in one subject row
    assert [len(x) for x in ds.with_format("arrow")["t1w"].to_pylist()] == [2, 1, 1]
    assert "lesion" not in ds.features  # derivatives are not read without a scope


def test_single_file_column_per_subject_names_the_session(demo_spec):
    with pytest.raises(AmbiguousColumnError, match=r"sub-01.*'ses'"):
        demo_spec.with_overrides(row="subject").build_index()


def test_nifti2_files_are_embedded_with_a_warning(demo_spec, tmp_path, nibabel_data):
    """datasets decodes NIfTI-1 only: a NIfTI-2 file is embedded exactly, and the shard says so."""
    target = demo_spec.bids_root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"
    target.unlink()
    (target.parent / "sub-02_ses-1_T1w.nii.gz").write_bytes(
        (nibabel_data / "example_nifti2.nii.gz").read_bytes()
    )
    with memory_instance() as instance:
        materialize_all(demo_spec, tmp_path / "storage", instance)
        events = instance.fetch_materializations(dg.AssetKey(["demo", "hub_shards"]), limit=10).records
        warnings = [e.asset_materialization.metadata["warnings"].value for e in events]
    assert (
        sum("1 NIfTI-2 file(s) (e.g. sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz)" in w for w in warnings) == 1
    )
    assert sum(w == "none" for w in warnings) == 2
