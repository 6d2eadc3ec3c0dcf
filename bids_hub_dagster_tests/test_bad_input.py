"""Bad input through Dagster: each problem fails its own run with a message naming the file.

Every run goes through a real Dagster instance and the real parquet IO manager; the
BIDS trees are the demo tree (real nibabel images) or one of the bids-examples vendored in
bids_hub_dagster_tests/data, copied to tmp and then damaged on purpose.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from pathlib import Path

import dagster as dg
import nibabel
import numpy as np
import pytest
from datasets import List, Nifti, load_dataset

from bids_hub_dagster.bids.errors import BidsError
from bids_hub_dagster.bids.index import build_index
from bids_hub_dagster.dataset.nifti import NiftiFileError, check_nifti
from bids_hub_dagster.defs import build_definitions, job_names, names
from bids_hub_dagster.defs.outcomes import failed_check_problems
from bids_hub_dagster.publish.manifest import MANIFEST_NAME, PREVIEW_PNG
from bids_hub_dagster.publish.privacy_report import REPORT_NAME
from bids_hub_dagster.spec import DatasetSpec, spec_for_folder
from bids_hub_dagster_tests.conftest import memory_instance

# The demo tree has four rows; with num_shards=4 each row is one shard.
ROWS = {
    "shard-00000": "sub-01/ses-1",
    "shard-00001": "sub-01/ses-2",
    "shard-00002": "sub-02/ses-1",
    "shard-00003": "sub-03/ses-1",
}
HTML_FROM_PET001 = "pet001/sub-01/ses-01/anat/sub-01_ses-01_T1w.nii"


def error_text(result: dg.ExecuteInProcessResult) -> str:
    """Class names and messages of every step failure, causes and contexts included."""
    parts: list[str] = []
    for event in result.get_step_failure_events():
        stack = [event.step_failure_data.error]
        while stack:
            err = stack.pop()
            if err is None:
                continue
            parts.append(f"{err.cls_name}: {err.message}")
            stack += [err.cause, err.context]
    return "\n".join(parts + failed_check_problems(result.all_events))


class Pipeline:
    """One dataset's three jobs on one Dagster instance and shard storage."""

    def __init__(self, spec: DatasetSpec, storage: Path, instance: dg.DagsterInstance) -> None:
        self.spec = spec
        self.storage = storage
        self.instance = instance
        self.defs = build_definitions([spec], storage_dir=str(storage))
        self.jobs = job_names(spec)

    def _run(self, job: str, **kwargs) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, raise_on_error=False, **kwargs
        )

    def prepare(self) -> dg.ExecuteInProcessResult:
        return self._run(self.jobs.prepare)

    def shard(self, key: str) -> dg.ExecuteInProcessResult:
        return self._run(self.jobs.shards, partition_key=key)

    def upload(self) -> dg.ExecuteInProcessResult:
        return self._run(self.jobs.upload)

    @property
    def keys(self) -> list[str]:
        return self.instance.get_dynamic_partitions(names(self.spec).shard_partitions)

    def materialized_shards(self) -> set[str]:
        return self.instance.get_materialized_partitions(names(self.spec).hub_shards)

    def shard_dir(self) -> Path:
        return self.storage / self.spec.name / "hub_shards"


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` but the lock a publish holds there (``.bids_hub_lock``)."""
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() and p.name != ".bids_hub_lock"
    )


def data_files(num_shards: int) -> list[str]:
    """The data files of a publication of ``num_shards`` shards (the ``default`` config)."""
    return [f"data/train-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]


def preview_files(num_shards: int) -> list[str]:
    """Their previews, one per data file (the ``preview`` config)."""
    return [f"preview/train-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]


def published_folder(num_shards: int) -> list[str]:
    """Every file a local publication of ``num_shards`` shards leaves (as :func:`files_under` lists them):
    the data and preview files, preview.png and the card, the manifest and the privacy report the tool
    keeps beside them (neither published)."""
    return sorted(
        [
            MANIFEST_NAME,
            REPORT_NAME,
            "README.md",
            PREVIEW_PNG,
            *data_files(num_shards),
            *preview_files(num_shards),
        ]
    )


def assert_nothing_written_for(pipe: Pipeline, key: str) -> None:
    """A failed shard leaves no parquet file, finished or temporary, in shard storage."""
    leftovers = [name for name in files_under(pipe.shard_dir()) if key in name or name.endswith(".tmp")]
    assert leftovers == []


def html_page() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>\n"


def nifti_header_bytes() -> bytes:
    """A valid, tiny NIfTI-1 file (header + 8 voxels) written by nibabel."""
    img = nibabel.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), np.eye(4))
    return img.to_bytes()


def make_sparse_nifti(path: Path, size: int) -> None:
    """A NIfTI-1 header followed by a hole: ``size`` bytes that take no disk space."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        fh.write(nifti_header_bytes())
        fh.truncate(size)
    assert path.stat().st_size == size
    if path.stat().st_blocks * 512 > 2**20:
        path.unlink()
        pytest.skip(f"the file system of {path.parent} does not keep files sparse")


def demo_pipeline(demo_spec: DatasetSpec, tmp_path: Path, instance, **overrides) -> Pipeline:
    spec = demo_spec.with_overrides(num_shards=4, **overrides)
    return Pipeline(spec, tmp_path / "storage", instance)


# --------------------------------------------------------------------------------------
# Not a BIDS folder
# --------------------------------------------------------------------------------------


def test_not_a_bids_folder_is_a_clear_error(tmp_path: Path) -> None:
    plain = tmp_path / "holiday_photos"
    (plain / "sub-01" / "anat").mkdir(parents=True)
    (plain / "sub-01" / "anat" / "sub-01_T1w.nii").write_bytes(nifti_header_bytes())
    with pytest.raises(BidsError, match="is not a BIDS dataset: it has no dataset_description.json"):
        build_index(plain)
    with pytest.raises(BidsError, match="is not a folder"):
        build_index(tmp_path / "missing")

    spec = spec_for_folder(plain, destination=str(tmp_path / "published"))
    with memory_instance() as instance:
        pipe = Pipeline(spec, tmp_path / "storage", instance)
        result = pipe.prepare()
        assert not result.success
        assert result.get_failed_step_keys() == {"holiday_photos__bids_index"}
        text = error_text(result)
        failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
        assert failure.metadata["user_error"].value == "BidsError"  # a user error: no retry, the CLI exits 2
        assert f"{plain} is not a BIDS dataset" in text
        assert "dataset_description.json" in text
        assert pipe.keys == []  # no shard was planned
    assert files_under(tmp_path / "storage") == []
    assert not (tmp_path / "published").exists()


# --------------------------------------------------------------------------------------
# Zero-byte and HTML files in one shard: only that shard fails; upload waits; fix; publish
# --------------------------------------------------------------------------------------


def test_bad_files_fail_their_shard_only_and_block_upload_until_fixed(
    demo_spec: DatasetSpec, tmp_path: Path, nibabel_data: Path, bids_example
) -> None:
    root = demo_spec.bids_root
    func = root / "sub-01" / "ses-2" / "func"
    zero = func / "sub-01_ses-2_task-rest_run-1_bold.nii"
    pet_html = func / "sub-01_ses-2_task-rest_run-2_bold.nii"
    own_html = func / "sub-01_ses-2_task-rest_run-3_bold.nii"
    zero.write_bytes(b"")
    pet = bids_example("pet001")
    shutil.copyfile(pet / HTML_FROM_PET001.removeprefix("pet001/"), pet_html)
    assert pet_html.read_bytes().lstrip().startswith(b"<!DOCTYPE html>")
    own_html.write_bytes(html_page())
    dest = Path(demo_spec.destination)

    with memory_instance() as instance:
        pipe = demo_pipeline(demo_spec, tmp_path, instance)
        assert pipe.prepare().success  # indexing only stats files: bad content shows up per shard
        assert pipe.keys == list(ROWS)

        results = {key: pipe.shard(key) for key in pipe.keys}
        assert {k for k, r in results.items() if r.success} == {"shard-00000", "shard-00002", "shard-00003"}
        text = error_text(results["shard-00001"])
        assert "ShardFilesError" in text
        assert "shard-00001: 3 file(s) cannot be embedded" in text
        assert f"{zero}: zero-byte file" in text
        assert f"{pet_html}: not a NIfTI-1/2 image" in text and "looks like HTML" in text
        assert f"{own_html}: not a NIfTI-1/2 image" in text
        assert pipe.materialized_shards() == {"shard-00000", "shard-00002", "shard-00003"}
        assert_nothing_written_for(pipe, "shard-00001")

        # the upload refuses: it names the missing shard and publishes nothing
        upload = pipe.upload()
        assert not upload.success
        text = error_text(upload)
        assert "shards_hold_every_row_once: shard-00001: not built yet" in text
        assert "materialize this hub_shards partition" in text
        assert "shard-00000" not in text and "shard-00002" not in text
        assert [p for p in files_under(dest) if p.endswith((".parquet", ".tmp", ".md", ".png"))] == []

        # fix the files with real images, re-run only the failed shard, then the upload
        shutil.copyfile(nibabel_data / "functional.nii", zero)
        shutil.copyfile(nibabel_data / "reoriented_anat_moved.nii", pet_html)
        shutil.copyfile(nibabel_data / "anatomical.nii", own_html)
        assert pipe.shard("shard-00001").success
        assert pipe.materialized_shards() == set(ROWS)
        upload = pipe.upload()
        assert upload.success, error_text(upload)
        [event] = upload.get_asset_materialization_events()
        meta = event.materialization.metadata
        assert meta["verification"].value.startswith("OK: 4/4 rows, 13 files")

    assert files_under(dest) == published_folder(4)
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features["t1w"] == Nifti() and ds.features["bold"] == List(Nifti())
    assert len(ds) == 4
    raw = ds.with_format("arrow")[:].to_pylist()
    sources = {p.name: p for p in root.rglob("*.nii*")}
    embedded = []
    for row in raw:
        cells = [row["t1w"], row["lesion"], *row["bold"]]
        for cell in cells:
            if cell is None:
                continue
            embedded.append(cell["path"])
            assert cell["bytes"] == sources[cell["path"]].read_bytes(), cell["path"]
    assert sorted(embedded) == sorted(sources)  # every image, each exactly once
    fixed = {r["session_id"]: [c["path"] for c in r["bold"]] for r in raw if r["subject_id"] == "sub-01"}
    assert fixed["ses-2"] == [
        zero.name,
        pet_html.name,
        own_html.name,
        "sub-01_ses-2_task-rest_run-10_bold.nii.gz",
    ]


def test_html_in_the_pet001_example_fails_its_shard(bids_example, tmp_path: Path) -> None:
    root = bids_example("pet001")
    spec = spec_for_folder(root, destination=str(tmp_path / "published"))
    with memory_instance() as instance:
        pipe = Pipeline(spec, tmp_path / "storage", instance)
        assert pipe.prepare().success
        assert pipe.keys == ["shard-00000"]
        result = pipe.shard("shard-00000")
        assert not result.success
        text = error_text(result)
        html = root / "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii"
        assert f"{html}: not a NIfTI-1/2 image: no valid NIfTI header (it looks like HTML or text)" in text
        assert "1 file(s) cannot be embedded" in text  # the real PET image of the same row is fine
        assert_nothing_written_for(pipe, "shard-00000")


# --------------------------------------------------------------------------------------
# One damaged file per case: its shard fails naming the file and what to do
# --------------------------------------------------------------------------------------

T1W_SUB02 = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"  # shard-00002, the only file of its row
T1W_GZ = "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"  # shard-00001, NIfTI-2 gzip


def _broken_symlink(root: Path) -> tuple[Path, str]:
    path = root / T1W_SUB02
    path.unlink()
    target = "../../../.git/annex/objects/Qx/8v/SHA256E-s4636--0123abcd.nii/SHA256E-s4636--0123abcd.nii"
    os.symlink(target, path)
    assert path.is_symlink() and not path.exists()
    return path, "shard-00002"


def _over_2gib(root: Path) -> tuple[Path, str]:
    path = root / T1W_SUB02
    make_sparse_nifti(path, 2**31 + 10)
    return path, "shard-00002"


def _two_files_over_2gib_in_one_column(root: Path) -> tuple[Path, str]:
    func = root / "sub-01/ses-1/func"
    for run in (1, 2):
        for old in func.glob(f"*_run-{run}_bold.nii*"):
            old.unlink()
        make_sparse_nifti(func / f"sub-01_ses-1_task-rest_run-{run}_bold.nii", 1200 * 2**20)
    return root / "sub-01/ses-1", "shard-00000"


def _truncated_nii(root: Path) -> tuple[Path, str]:
    path = root / T1W_SUB02
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "shard-00002"


def _gzip_with_damaged_body(root: Path) -> tuple[Path, str]:
    path = root / T1W_GZ
    data = bytearray(path.read_bytes())
    data[20:2020] = bytes((b * 7 + 13) % 256 for b in data[20:2020])
    path.write_bytes(bytes(data))
    return path, "shard-00001"


def _gzip_cut_short(root: Path) -> tuple[Path, str]:
    path = root / T1W_GZ
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path, "shard-00001"


def _not_gzip(root: Path) -> tuple[Path, str]:
    path = root / T1W_GZ
    path.write_bytes(nifti_header_bytes())  # an uncompressed NIfTI saved as .nii.gz
    return path, "shard-00001"


BREAKAGES = {
    "broken-symlink": (
        _broken_symlink,
        ["broken symlink", "datalad get", "git annex get"],
    ),
    "over-2gib": (_over_2gib, ["2.00 GiB is over the 2 GiB an Arrow binary value can hold"]),
    "column-over-2gib": (
        _two_files_over_2gib_in_one_column,
        ["column 'bold' of row sub-01/ses-1 holds 2.34 GiB", "2 GiB one Arrow binary array can hold"],
    ),
    "truncated-nii": (
        _truncated_nii,
        ["truncated NIfTI-1 file: header promises 4636 bytes", "file has 2318"],
    ),
    "gzip-damaged-body": (_gzip_with_damaged_body, ["not a valid gzip stream", "damaged or truncated"]),
    "gzip-cut-short": (_gzip_cut_short, ["gzip", "truncated"]),
    "not-gzip": (_not_gzip, ["not a valid gzip stream", "Not a gzipped file"]),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_damaged_file_fails_its_shard_naming_it(demo_spec: DatasetSpec, tmp_path: Path, case: str) -> None:
    breaker, expected = BREAKAGES[case]
    path, key = breaker(demo_spec.bids_root)
    with memory_instance() as instance:
        pipe = demo_pipeline(demo_spec, tmp_path, instance)
        prepared = pipe.prepare()
        assert prepared.success
        result = pipe.shard(key)
        assert not result.success
        text = error_text(result)
        assert f"{key}: 1 file(s) cannot be embedded" in text
        assert f"{path}: " in text
        for fragment in expected:
            assert fragment in text, f"{fragment!r} not in:\n{text}"
        assert_nothing_written_for(pipe, key)
        assert pipe.materialized_shards() == set()
        if case == "broken-symlink":
            [index_event] = [
                e for e in prepared.get_asset_materialization_events() if e.asset_key.path[-1] == "bids_index"
            ]
            warnings = index_event.materialization.metadata["warnings"].value
            assert "broken symlinks" in warnings and T1W_SUB02 in warnings


def test_truncated_gzip_is_caught_before_embedding(nibabel_data: Path, tmp_path: Path) -> None:
    """Core check: a .nii.gz cut anywhere, even far past its header, is refused."""
    data = (nibabel_data / "example4d.nii.gz").read_bytes()
    path = tmp_path / "sub-01_bold.nii.gz"
    path.write_bytes(data)
    assert check_nifti(path) == len(data)
    for cut in (100, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(NiftiFileError, match="truncated") as info:
            check_nifti(path)
        assert info.value.path == str(path)
    # a complete stream written in several gzip members (bgzip-style) is fine
    raw = gzip.decompress(data)
    half = len(raw) // 2
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + gzip.compress(b""))
    assert check_nifti(path) == path.stat().st_size


# --------------------------------------------------------------------------------------
# Re-planning: a smaller plan removes the data files of the larger one
# --------------------------------------------------------------------------------------


def test_replanning_to_fewer_shards_leaves_no_stale_data_files(
    demo_spec: DatasetSpec, tmp_path: Path
) -> None:
    dest = Path(demo_spec.destination)
    storage = tmp_path / "storage"
    three = demo_spec.with_overrides(num_shards=3)
    # demo row sizes are ~457 KB, ~480 KB, ~5 KB, ~111 KB: 700 KB fits rows 1-3 in one shard
    two = dataclasses.replace(demo_spec, num_shards=None, max_shard_size=700_000)
    with memory_instance() as instance:
        first = Pipeline(three, storage, instance)
        assert first.prepare().success
        assert first.keys == ["shard-00000", "shard-00001", "shard-00002"]
        assert all(first.shard(k).success for k in first.keys)
        assert first.upload().success
        published_3 = published_folder(3)
        assert files_under(dest) == published_3

        second = Pipeline(two, storage, instance)
        assert second.prepare().success
        assert second.keys == ["shard-00000", "shard-00001"]  # shard-00002 was dropped
        # only one shard rebuilt: the other still holds the old plan's rows, so the upload refuses
        assert second.shard("shard-00000").success
        refused = second.upload()
        assert not refused.success
        text = error_text(refused)
        # its file, built for other rows, was dropped when the plan changed: it must be built again
        assert "1 shard(s) not built yet: shard-00001" in text
        assert files_under(dest) == published_3  # the old publish is untouched

        assert second.shard("shard-00001").success
        upload = second.upload()
        assert upload.success, error_text(upload)
        [event] = upload.get_asset_materialization_events()
        # the old plan's 3 data files and their 3 previews (preview.png is replaced, not removed)
        assert event.materialization.metadata["files_removed"].value == len(data_files(3) + preview_files(3))
        assert event.materialization.metadata["verification"].value.startswith("OK: 4/4 rows")

    assert files_under(dest) == published_folder(2)  # no data or preview file of the 3-shard plan left
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 4
    assert ds["subject_id"] == ["sub-01", "sub-01", "sub-02", "sub-03"]
    # the preview config too holds each row once: no preview file of the old plan is read with it
    preview = load_dataset(str(dest), "preview", split="train", cache_dir=str(tmp_path / "cache"))
    assert preview["subject_id"] == ["sub-01", "sub-01", "sub-02", "sub-03"]
    assert "num_examples: 4" in (dest / "README.md").read_text()
