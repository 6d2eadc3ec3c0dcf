"""The index's fast paths give what the plain ones gave: the gate's one-pass header read finds what
``nibabel.load`` found, name keys equal full parses, a column rule looks only at the files its
scope, datatype and suffix allow, and sidecars found once per folder are those found per file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_hub_dagster.bids import privacy
from bids_hub_dagster.bids.columns import ColumnRule, infer_columns
from bids_hub_dagster.bids.entities import name_key, parse_filename
from bids_hub_dagster.bids.index import _assign, _buckets, _candidates, build_index
from bids_hub_dagster.bids.layout import scan
from bids_hub_dagster.bids.sidecars import SidecarResolver, read_bytes


def _loaded_header(path: Path):
    """What the gate read before: nibabel.load's header (a CIFTI image's NIfTI-2 header)."""
    try:
        img = nib.load(path)
    except Exception:
        return None
    header = getattr(img, "nifti_header", None)
    return img.header if header is None else header


def _image(kind, endian: str = "<"):
    data = np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3)
    header = kind.header_class()
    if endian == ">":
        header = header.as_byteswapped(">")
    header["descrip"] = b"acquired 2023-05-06 by John Smith"
    header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient Jane Doe, born 1970-01-02"))
    return kind(data, np.eye(4), header=header)


@pytest.mark.parametrize(
    "name, kind, endian",
    [
        ("one.nii", nib.Nifti1Image, "<"),
        ("one.nii.gz", nib.Nifti1Image, "<"),
        ("big.nii", nib.Nifti1Image, ">"),
        ("two.nii", nib.Nifti2Image, "<"),
        ("two.nii.gz", nib.Nifti2Image, "<"),
    ],
)
def test_the_header_read_once_is_the_header_nibabel_loads(tmp_path, name, kind, endian):
    path = tmp_path / name
    nib.save(_image(kind, endian), path)
    fast, loaded = privacy._read_header(path), _loaded_header(path)
    assert type(fast) is type(loaded)
    assert fast.endianness == loaded.endianness
    for field in privacy.HEADER_FIELDS:
        assert privacy._header_text(fast, field) == privacy._header_text(loaded, field)
    assert [(e.get_code(), e.get_content()) for e in fast.extensions] == [
        (e.get_code(), e.get_content()) for e in loaded.extensions
    ]
    findings = privacy.scan_nifti_header(path, name)
    assert {f.field for f in findings} == {"descrip", "extension[0]"}
    assert all(f.severity == "block" for f in findings)


def test_a_cifti_files_xml_extension_is_read_as_nibabel_reads_it(tmp_path):
    from nibabel import cifti2

    axes = (
        cifti2.ScalarAxis(["thickness"]),
        cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 2), dtype=bool), affine=np.eye(4)),
    )
    path = tmp_path / "sub-01_thickness.dscalar.nii"
    nib.save(cifti2.Cifti2Image(np.zeros((1, 8), np.float32), cifti2.Cifti2Header.from_axes(axes)), path)
    fast, loaded = privacy._read_header(path), _loaded_header(path)
    assert type(fast) is nib.Nifti2Header and isinstance(loaded, nib.Nifti2Header)  # nibabel's subclass
    assert [e.get_code() for e in fast.extensions] == [e.get_code() for e in loaded.extensions] == [32]
    assert [privacy._extension_bytes(e) for e in fast.extensions] == [
        privacy._extension_bytes(e) for e in loaded.extensions
    ]


@pytest.mark.parametrize(
    "content",
    # mtime=0: the same bytes, so the same test id, in every pytest-xdist worker
    [b"", b"\x1f\x8bnot gzip at all", gzip.compress(b"\x00" * 10, mtime=0), b"\x00\x01\x02\x03" * 100],
    ids=["empty", "gzip-magic-only", "gzip-of-zeros", "binary"],
)
def test_what_is_no_nifti_header_gives_none_as_before(tmp_path, content):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    assert privacy._read_header(path) is None and _loaded_header(path) is None
    assert privacy.scan_nifti_header(path, "broken.nii.gz") == []


@pytest.mark.parametrize(
    "filename",
    [
        "sub-01_ses-1_task-rest_run-1_bold.json",
        "task-rest_bold.json",
        "sub-01_acq-x_foo-bar_T1w.nii.gz",
        "sub-01_run-1",
        "sub-01_junk_T1w.json",
        "sub-01_sub-02_T1w.json",
        "sub-01__T1w.json",
        "sub-01_ses-1_task-a-b_bold.json",
        "sub-01_T1w.dlabel.nii",
    ],
)
def test_a_name_key_is_the_full_parse(filename):
    name = parse_filename(filename)
    assert name_key(filename) == (name.suffix, name.extension, frozenset(name.all_entities().items()))


def _tree(root: Path) -> Path:
    """A raw tree and a derivative scope: anat, func (with inherited and per-run sidecars), dwi."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}))
    for sub in ("01", "02"):
        for ses in ("1", "2"):
            base = root / f"sub-{sub}" / f"ses-{ses}"
            (base / "anat").mkdir(parents=True)
            (base / "func").mkdir()
            (base / "dwi").mkdir()
            (base / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz").write_bytes(b"x")
            (base / "anat" / f"sub-{sub}_ses-{ses}_acq-fast_T1w.nii").write_bytes(b"x")
            (base / "dwi" / f"sub-{sub}_ses-{ses}_dwi.nii.gz").write_bytes(b"x")
            (base / f"sub-{sub}_ses-{ses}_task-rest_bold.json").write_text(json.dumps({"EchoTime": 0.03}))
            for run in (1, 2, 10):
                stem = f"sub-{sub}_ses-{ses}_task-rest_run-{run}_bold"
                (base / "func" / f"{stem}.nii.gz").write_bytes(b"x")
                (base / "func" / f"{stem}.json").write_text(json.dumps({"SliceTiming": [run]}))
    deriv = root / "derivatives" / "masks" / "sub-01" / "ses-1" / "anat"
    deriv.mkdir(parents=True)
    (deriv / "sub-01_ses-1_desc-brain_mask.nii.gz").write_bytes(b"x")
    return root


def test_a_rule_matches_the_same_files_through_the_buckets(tmp_path):
    root = _tree(tmp_path / "ds")
    files = scan(root, ["", "derivatives/masks"]).files
    rules = infer_columns(files, "session") + [
        ColumnRule(name="fast", datatype="anat", suffix="T1w", entities={"acq": ("fast",)}),
        ColumnRule(name="anything", many=True),
        ColumnRule(name="mask", scope="derivatives/masks", suffix="mask"),
        ColumnRule(name="no_datatype", datatype="", many=True),
    ]
    buckets = _buckets(files)
    place = {id(f): i for i, f in enumerate(files)}
    for rule in rules:
        candidates = _candidates(rule, buckets)  # a superset, in scan order: matches() decides
        assert [place[id(f)] for f in candidates] == sorted(place[id(f)] for f in candidates)
        assert [f for f in candidates if rule.matches(f)] == [f for f in files if rule.matches(f)]
        try:
            direct = _assign(rule, files, "session")
        except Exception as exc:  # noqa: BLE001 - the same error either way
            with pytest.raises(type(exc)):
                _assign(rule, _candidates(rule, buckets), "session")
            continue
        assert _assign(rule, _candidates(rule, buckets), "session") == direct


def test_sidecars_found_per_folder_are_those_found_per_file(tmp_path):
    root = _tree(tmp_path / "ds")
    scanned = scan(root, [""])
    resolver = SidecarResolver(root, scanned.jsons)
    for f in scanned.files:
        parts = f.relpath.split("/")[:-1]
        ents = f.name.all_entities().items()
        expected = sorted(
            (depth, len(cand), rel)
            for depth in range(len(parts) + 1)
            for rel, cand in resolver._by_dir.get(("/".join(parts[:depth]), f.suffix), ())
            if cand <= ents
        )
        assert resolver.sources(f) == [rel for _, _, rel in expected]
    bold = next(
        f for f in scanned.files if f.relpath.endswith("ses-2/func/sub-02_ses-2_task-rest_run-10_bold.nii.gz")
    )
    assert resolver.resolve(bold) == {
        "RepetitionTime": 2.0,
        "TaskName": "rest",
        "EchoTime": 0.03,
        "SliceTiming": [10],
    }
    index = build_index(root)
    assert index.sidecars[bold.relpath] == resolver.resolve(bold)


def test_read_bytes_reads_a_whole_file(tmp_path):
    path = tmp_path / "big.json"
    data = json.dumps({"x": "y" * 200_000}).encode()
    path.write_bytes(data)
    assert read_bytes(str(path)) == data
    (tmp_path / "empty.json").write_bytes(b"")
    assert read_bytes(str(tmp_path / "empty.json")) == b""


def test_a_files_shape_worked_out_per_folder_is_its_shape(tmp_path):
    """On every file of the vendored bids-examples and on names that leave the usual pattern."""
    from bids_hub_dagster.bids.validation import shape, shape_in
    from bids_hub_dagster_tests.conftest import BIDS_EXAMPLE_NAMES, example_source

    paths = [
        "sub-01/sub-01_sessions.tsv",
        "sub-01/ses-1/sub-01_ses-1_scans.tsv",
        "sub-01/ses-1/anat/sub-01_ses-2_T1w.nii.gz",  # a name of another session: kept as written
        "sub-01/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-01/ses-1/anat/sub-S_ses-T_T1w.nii.gz",  # the placeholders themselves
        "sub-01/anat/sub-01_T1w.nii",
        "sub-01/ses-/anat/sub-01_ses-_T1w.nii",
        "sub-01/ses-1/anat/extra/sub-01_ses-1_T1w.nii",
        "sub-01/ses-xyz",
        "sub-01/x",
        "sub-01/ses-1/T1w.nii",
        "README",
        "derivatives/x/sub-01/anat/sub-01_T1w.nii",
    ]
    for example in BIDS_EXAMPLE_NAMES:
        root = example_source(example)
        paths += [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert len(paths) > 1000
    for path in paths:
        folder, _, name = path.rpartition("/")
        assert shape_in(folder, name) == shape(path), path
