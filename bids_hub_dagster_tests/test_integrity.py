"""Data integrity: a `.nii.gz` whose gzip stream is damaged never reaches a shard or a destination.

The damage is the kind a cheap check cannot see: garbage in the middle of the deflate
stream, same length, gzip header and trailer (CRC-32, ISIZE) untouched. The header check
before embedding passes; the full check on the bytes being embedded (one decompression,
CRC-32 and length) fails the shard naming the file. Also: the audit of stored shards does
the same full check, a valid multi-member (bgzip-style) file still passes, and a dataset
with NIfTI-2 files gets a card that says how to read them.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import dagster as dg
import nibabel
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from bids_hub_dagster.dataset import embed
from bids_hub_dagster.dataset.audit import audit_shard_file
from bids_hub_dagster.dataset.nifti import (
    GzipCheck,
    GzipStreamError,
    NiftiFileError,
    check_file_bytes,
    check_gzip_bytes,
    check_nifti,
    nifti_bytes_problem,
)
from bids_hub_dagster.dataset.parquet import write_row_groups
from bids_hub_dagster.dataset.shards import ShardFilesError, build_shard, read_shard_record
from bids_hub_dagster.dataset.tables import dataset_from_index
from bids_hub_dagster.spec import DatasetSpec
from bids_hub_dagster_tests.conftest import materialize_all, memory_instance
from bids_hub_dagster_tests.test_bad_input import (
    assert_nothing_written_for,
    demo_pipeline,
    error_text,
    files_under,
)

# demo rows: 0 sub-01/ses-1, 1 sub-01/ses-2, 2 sub-02/ses-1, 3 sub-03/ses-1
BOLD_GZ = "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz"  # nibabel's example4d.nii.gz, row 0
T1W_GZ = "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"  # anatomical.nii gzipped, row 1 (shard-00001 of 4)
T1W_SUB02 = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"  # row 2


def corrupt(data: bytes, how: str) -> bytes:
    """Garbage in the middle of the deflate stream; length, gzip header and trailer unchanged.

    ``xor``: 16 bytes flipped (the stream still inflates, to other data: CRC-32 mismatch);
    ``ff``: 64 bytes of 0xFF (for example4d.nii.gz an invalid deflate block: zlib error -3).
    """
    mid = len(data) // 2
    out = bytearray(data)
    if how == "xor":
        out[mid : mid + 16] = bytes(b ^ 0x5A for b in data[mid : mid + 16])
    else:
        out[mid : mid + 64] = b"\xff" * 64
    return bytes(out)


def corrupt_file(path: Path, how: str = "xor") -> str:
    """Damage ``path`` (see :func:`corrupt`); return what gzip says about it."""
    data = path.read_bytes()
    bad = corrupt(data, how)
    assert len(bad) == len(data) and bad[:10] == data[:10] and bad[-8:] == data[-8:]
    with pytest.raises((gzip.BadGzipFile, zlib.error)) as info:
        gzip.decompress(bad)
    said = str(info.value)
    assert said == "CRC check failed" or said.startswith("Error -3 while decompressing data"), said
    path.write_bytes(bad)
    if shutil.which("gzip"):
        assert subprocess.run(["gzip", "-t", str(path)], capture_output=True).returncode != 0
    return said


def multi_member(raw: bytes) -> bytes:
    """``raw`` as three gzip members, an empty member and zero padding, as bgzip and tar leave them."""
    third = len(raw) // 3
    parts = (raw[:third], raw[third : 2 * third], raw[2 * third :], b"")
    return b"".join(gzip.compress(p, mtime=0) for p in parts) + bytes(512)


def build_all(spec: DatasetSpec, out: Path, strategy: str, check: bool = True, **options) -> list[Path]:
    """Build every shard of ``spec`` into ``out`` (core functions, no Dagster)."""
    table = spec.index_table()
    ds = dataset_from_index(table)
    plan = spec.shard_plan(table)
    written = []
    for key in plan.keys():
        shard = build_shard(ds, table, plan, key, shard_strategy=strategy, **options)
        path = out / f"{key}.parquet"
        write_row_groups(path, shard.schema, shard.groups, **shard.write_options)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------
# The check itself
# --------------------------------------------------------------------------------------


def test_gzip_check_decompresses_whole_streams_only(nibabel_data: Path) -> None:
    data = (nibabel_data / "example4d.nii.gz").read_bytes()
    raw = gzip.decompress(data)
    assert check_gzip_bytes(data) == GzipCheck(size=len(raw), members=1)
    pieces: list[bytes] = []
    assert check_gzip_bytes(memoryview(data), pieces.append).size == len(raw)
    assert b"".join(pieces) == raw  # the same pass can feed a preview

    several = multi_member(raw)
    assert gzip.decompress(several) == raw  # Python's gzip reads it
    assert check_gzip_bytes(several) == GzipCheck(size=len(raw), members=4)

    crc = corrupt(data, "xor")
    with pytest.raises(
        GzipStreamError, match="CRC-32 mismatch.*; in the gzip member from byte 0, found by byte"
    ):
        check_gzip_bytes(crc)
    with pytest.raises(GzipStreamError, match="invalid deflate data: invalid code lengths set"):
        check_gzip_bytes(corrupt(data, "ff"))
    wrong_isize = data[:-4] + (len(raw) + 1).to_bytes(4, "little")
    with pytest.raises(GzipStreamError, match="length mismatch"):
        check_gzip_bytes(wrong_isize)
    with pytest.raises(GzipStreamError, match=f"truncated: the data ends \\(at byte {len(data) - 8}\\)"):
        check_gzip_bytes(data[:-8])
    with pytest.raises(GzipStreamError, match=r"4 byte\(s\) after the last gzip member are not gzip data"):
        check_gzip_bytes(data + b"junk")
    with pytest.raises(GzipStreamError, match="no gzip header"):
        check_gzip_bytes(b"<html>404</html>")
    with pytest.raises(GzipStreamError, match="empty"):
        check_gzip_bytes(b"")
    # bounded memory: a stream that inflates 1000x comes out in pieces of at most 4 MiB
    sizes: list[int] = []
    zeros = gzip.compress(bytes(40 * 2**20), compresslevel=1)
    assert check_gzip_bytes(zeros, lambda piece: sizes.append(len(piece))).size == 40 * 2**20
    assert max(sizes) <= 2**22

    # a file's bytes: only .gz names are checked, and the error names the file and what to do
    assert check_file_bytes("/data/x.nii", crc) is None
    with pytest.raises(NiftiFileError) as info:
        check_file_bytes("/data/sub-01_T1w.nii.gz", crc)
    assert info.value.path == "/data/sub-01_T1w.nii.gz"
    assert str(info.value).startswith("/data/sub-01_T1w.nii.gz: not a valid gzip stream (CRC-32 mismatch")
    assert "copy or download it again" in str(info.value)


def test_audit_does_the_full_gzip_check(nibabel_data: Path) -> None:
    data = (nibabel_data / "example4d.nii.gz").read_bytes()
    assert nifti_bytes_problem(data, "sub-01_bold.nii.gz") is None
    for how, what in (("xor", "CRC-32 mismatch"), ("ff", "invalid deflate data")):
        problem = nifti_bytes_problem(corrupt(data, how), "sub-01_bold.nii.gz")
        assert problem is not None and problem.startswith(f"not a valid gzip stream ({what}"), problem
    assert nifti_bytes_problem(multi_member(gzip.decompress(data)), "sub-01_bold.nii.gz") is None
    # the header still comes from the same pass
    not_nifti = gzip.compress(b"\x00" * 600)
    assert nifti_bytes_problem(not_nifti, "x.nii.gz") == "not a NIfTI-1/2 image (no valid header)"


# --------------------------------------------------------------------------------------
# Building shards: the damaged file fails its shard, naming it; no file is left
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["pandas", "arrow"])
@pytest.mark.parametrize(
    ("rel", "how", "what"),
    [
        (BOLD_GZ, "xor", "CRC-32 mismatch"),  # a List(Nifti()) column, row 0: the first row group
        (BOLD_GZ, "ff", "invalid deflate data: invalid code lengths set"),
        (T1W_GZ, "xor", "CRC-32 mismatch"),  # a Nifti() column, row 1: after a row group was written
    ],
)
def test_damaged_gzip_fails_the_shard_as_it_is_embedded(
    demo_spec: DatasetSpec, tmp_path: Path, strategy: str, rel: str, how: str, what: str
) -> None:
    path = demo_spec.bids_root / rel
    corrupt_file(path, how)
    assert check_nifti(path) == path.stat().st_size  # the cheap check before embedding cannot see it
    spec = demo_spec.with_overrides(num_shards=1)
    out = tmp_path / "out"
    with pytest.raises(ShardFilesError) as info:
        build_all(spec, out, strategy, row_group_size=1)  # one row per row group
    text = str(info.value)
    assert text.startswith("shard-00000: 1 file(s) cannot be embedded:")
    assert f"  - {path}: not a valid gzip stream ({what}" in text
    assert "copy or download it again" in text
    [problem] = info.value.problems
    assert problem.path == str(path)
    assert files_under(out) == []  # no shard file, finished or temporary


def test_a_shard_built_without_the_check_fails_its_audit(
    demo_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the stored-shard check (``shard_files_are_nifti``) sees if a damaged file got in."""
    corrupt_file(demo_spec.bids_root / T1W_GZ)
    monkeypatch.setattr(embed, "check_file_bytes", lambda path, data, consume=None: None)
    [shard] = build_all(demo_spec.with_overrides(num_shards=1), tmp_path / "out", "arrow")
    problems = audit_shard_file(shard).problems
    assert len(problems) == 1
    assert problems[0].startswith(
        "row 1 t1w: sub-01_ses-2_T1w.nii.gz: not a valid gzip stream (CRC-32 mismatch"
    )


# --------------------------------------------------------------------------------------
# Through Dagster: the shard step fails for good, naming the file; nothing is published
# --------------------------------------------------------------------------------------


def test_damaged_gzip_fails_its_shard_run_and_nothing_is_published(
    demo_spec: DatasetSpec, tmp_path: Path
) -> None:
    path = demo_spec.bids_root / T1W_GZ
    corrupt_file(path)
    dest = Path(demo_spec.destination)
    with memory_instance() as instance:
        pipe = demo_pipeline(demo_spec, tmp_path, instance)
        assert pipe.prepare().success
        results = {key: pipe.shard(key) for key in pipe.keys}
        assert {k for k, r in results.items() if not r.success} == {"shard-00001"}
        failed = results["shard-00001"]
        text = error_text(failed)
        assert "shard-00001: 1 file(s) cannot be embedded" in text
        assert f"{path}: not a valid gzip stream (CRC-32 mismatch" in text
        assert_nothing_written_for(pipe, "shard-00001")
        assert pipe.materialized_shards() == {"shard-00000", "shard-00002", "shard-00003"}

        upload = pipe.upload()
        assert not upload.success
        assert "shard-00001: not built yet" in error_text(upload)
    assert [p for p in files_under(dest) if p.endswith((".parquet", ".tmp", ".md"))] == []
    # a bad file fails for good, as the header checks do (dg.Failure, allow_retries=False): no retry
    assert not any(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in failed.all_events)


# --------------------------------------------------------------------------------------
# A valid multi-member gzip file passes every check and is published byte for byte
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["pandas", "arrow"])
def test_multi_member_gzip_is_published(demo_spec: DatasetSpec, tmp_path: Path, strategy: str) -> None:
    path = demo_spec.bids_root / BOLD_GZ
    raw = gzip.decompress(path.read_bytes())
    data = multi_member(raw)
    path.write_bytes(data)
    assert check_nifti(path) == len(data)
    assert check_file_bytes(path, data) == GzipCheck(size=len(raw), members=4)
    spec = demo_spec.with_overrides(shard_strategy=strategy)
    materialize_all(spec, tmp_path / "storage")  # shard checks (the audit) and the sha256 verify pass
    published = sorted((Path(spec.destination) / "data").glob("*.parquet"))
    cells = [c for p in published for row in pq.read_table(p).column("bold").to_pylist() for c in row or []]
    [cell] = [c for c in cells if c["path"] == path.name]
    assert cell["bytes"] == data
    assert "## NIfTI-2 images" not in (Path(spec.destination) / "README.md").read_text()


# --------------------------------------------------------------------------------------
# NIfTI-2: the card says how to read such cells, and what it says works
# --------------------------------------------------------------------------------------


def test_card_says_how_to_read_nifti2_cells(
    demo_spec: DatasetSpec, tmp_path: Path, nibabel_data: Path
) -> None:
    root = demo_spec.bids_root
    nifti2_gz = (nibabel_data / "example_nifti2.nii.gz").read_bytes()
    (root / T1W_SUB02).unlink()
    (root / (T1W_SUB02 + ".gz")).write_bytes(nifti2_gz)  # a Nifti() column, row 2
    # a List(Nifti()) column, row 1: an uncompressed NIfTI-2 image made with nibabel
    bold = root / "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.nii"
    volume = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3)
    bold.write_bytes(nibabel.Nifti2Image(volume, np.eye(4)).to_bytes())

    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    records = [read_shard_record(pq.read_schema(p)) for p in sorted((dest / "data").glob("*.parquet"))]
    assert sum(r.get("nifti2", {}).get("t1w", 0) for r in records) == 1
    assert sum(r.get("nifti2", {}).get("bold", 0) for r in records) == 1
    readme = (dest / "README.md").read_text()
    assert "## NIfTI-2 images" in readme
    assert "files per column: `t1w` (1), `bold` (1)" in readme
    assert 'ds = ds.cast_column("t1w", Nifti(decode=False))' in readme
    assert 'ds = ds.cast_column("bold", List(Nifti(decode=False)))' in readme
    assert "nibabel.Nifti2Image" in readme

    # run the card's own code, then read the NIfTI-2 cells with it
    code = re.search(r"## NIfTI-2 images.*?```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # loads the published folder, decodes row 0 (NIfTI-1 cells)
    assert isinstance(namespace["t1w"], nibabel.Nifti1Image)
    to_image, ds = namespace["to_image"], namespace["ds"]
    t1w = to_image(ds[2]["t1w"])
    assert isinstance(t1w, nibabel.Nifti2Image)
    assert np.array_equal(t1w.get_fdata(), nibabel.load(root / (T1W_SUB02 + ".gz")).get_fdata())
    bolds = [to_image(c) for c in ds[1]["bold"]]
    assert [type(b).__name__ for b in bolds].count("Nifti2Image") == 1
    [made] = [b for b in bolds if isinstance(b, nibabel.Nifti2Image)]
    assert np.array_equal(np.asanyarray(made.dataobj), volume)
    # the streaming variant the card names reads the same cells undecoded
    streamed = load_dataset(str(dest), split="train", streaming=True).decode(False)
    row = next(r for i, r in enumerate(streamed) if i == 2)
    assert isinstance(to_image(row["t1w"]), nibabel.Nifti2Image)
    # and the default Nifti() cannot read it: what the card is for
    with pytest.raises(Exception, match="data code"):
        load_dataset(str(dest), split="train")[2]
