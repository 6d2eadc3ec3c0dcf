"""Companion files of BIDS data files: events, bval/bvec, sessions, scans, typed lifts (real files in tmp_path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_hub_dagster.bids.companions import (
    CompanionFinder,
    lift_column,
    lift_type,
    lift_value,
    merge_types,
    nifti_volumes,
    read_all_scans,
    read_all_sessions,
    read_events,
    read_gradients,
    read_scans,
    read_sessions,
    read_tsv,
    schema_kinds,
    unify,
)
from bids_hub_dagster.bids.errors import BidsError
from bids_hub_dagster.bids.layout import BidsFile, scan
from bids_hub_dagster_tests.conftest import example_source


def write(root: Path, rel: str, content: str | bytes | dict) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def nifti(root: Path, rel: str, shape=(4, 4, 4)) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)).to_filename(path)
    return path


def dataset(root: Path) -> Path:
    write(root, "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    return root


def all_relpaths(root: Path) -> list[str]:
    """What the integrator's scanner hands the finder: every file, top-level ones included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def files_of(root: Path) -> dict[str, BidsFile]:
    files, _ = scan(root)
    return {f.relpath: f for f in files}


# --------------------------------------------------------------------------------------------- TSV


def test_read_tsv_types_nulls_bom_and_descriptions(tmp_path):
    path = write(
        tmp_path,
        "t.tsv",
        "\ufeffonset\tduration\ttrial_type\tcode\tscore\tflag\tid\tempty\r\n"
        "1.5\t0.5\tgo\t1\t3\ttrue\t007\tn/a\r\n"
        "3\tn/a\tstop\t2\t4.25\tFalse\t008\t\r\n"
        "\n",
    )
    sidecar = {
        "code": {"Levels": {"1": "a", "2": "b"}, "Description": "a code"},
        "score": {"LongName": "Score"},
    }
    table = read_tsv(path, sidecar, numeric=("onset", "duration"), where="t.tsv")
    assert table.columns == {
        "onset": "float64",
        "duration": "float64",
        "trial_type": "string",
        "code": "string",
        "score": "float64",
        "flag": "bool",
        "id": "string",
        "empty": "string",
    }
    assert table.records == [
        {
            "onset": 1.5,
            "duration": 0.5,
            "trial_type": "go",
            "code": "1",
            "score": 3.0,
            "flag": True,
            "id": "007",
            "empty": None,
        },
        {
            "onset": 3.0,
            "duration": None,
            "trial_type": "stop",
            "code": "2",
            "score": 4.25,
            "flag": False,
            "id": "008",
            "empty": None,
        },
    ]
    assert table.descriptions == {"code": "a code", "score": "Score"}
    assert table.warnings == ()


def test_read_tsv_format_declares_type(tmp_path):
    path = write(tmp_path, "t.tsv", "a\tb\tc\td\n1\t1\t2020-01-01\tx\n2\tn/a\t2020-01-02\ty\n")
    table = read_tsv(
        path,
        {
            "a": {"Format": "number"},
            "b": {"Format": "integer"},
            "c": {"Format": "date"},
            "d": {"Format": "number"},
        },
    )
    assert table.columns == {"a": "float64", "b": "int64", "c": "string", "d": "string"}
    assert table.records[0] == {"a": 1.0, "b": 1, "c": "2020-01-01", "d": "x"}
    assert table.warnings == (
        f"{path} column 'd' is declared Format 'number' but holds 'x': typed from its values",
    )


def test_read_tsv_units_on_text_warns(tmp_path):
    path = write(tmp_path, "t.tsv", "age\n12\nabout 30\n")
    table = read_tsv(path, {"age": {"Units": "year"}}, where="t.tsv")
    assert table.columns == {"age": "string"}
    assert table.warnings == (
        "t.tsv column 'age' has Units (year) but values that are not numbers (e.g. 'about 30'): kept as strings",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("onset\tduration\n1\t2\n3\n", "t.tsv line 3 has 1 tab-separated fields, the header has 2"),
        ("onset\tduration\n1\t2\n\n1\t2\t3\n", "t.tsv line 4 has 3 tab-separated fields, the header has 2"),
        ("onset\tduration\n1\tsoon\n", "t.tsv line 2 column duration: 'soon' is not a number"),
        ("", "t.tsv is empty: a BIDS TSV file needs a header line"),
        ("onset\t\n1\t2\n", "t.tsv: column 2 of the header (line 1) has no name"),
        ("a\ta\n1\t2\n", "names column(s) ['a'] twice"),
    ],
)
def test_read_tsv_errors_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "t.tsv", content)
    with pytest.raises(BidsError) as info:
        read_tsv(path, numeric=("onset", "duration"), where="t.tsv")
    assert message in str(info.value)


def test_read_tsv_not_utf8(tmp_path):
    path = write(tmp_path, "t.tsv", b"a\n\xff\n")
    with pytest.raises(BidsError, match="is not UTF-8 text"):
        read_tsv(path)


def test_merge_types_and_unify(tmp_path):
    assert merge_types("int64", "int64") == "int64"
    assert merge_types("int64", "float64") == "float64"
    assert merge_types("float64", "int64") == "float64"
    assert merge_types("bool", "int64") == "string"
    assert merge_types("string", "float64") == "string"
    a = read_tsv(write(tmp_path, "a.tsv", "x\ty\tz\n1\t1.50\tn/a\n"))
    b = read_tsv(write(tmp_path, "b.tsv", "x\ty\tz\tw\n2.5\tabc\t4\ttrue\n"))
    out = unify({"a": a, "b": b})
    assert out["a"].columns == {"x": "float64", "y": "string", "z": "int64", "w": "bool"}
    assert out["a"].records == [{"x": 1.0, "y": "1.50", "z": None, "w": None}]  # text kept as written
    assert out["b"].records == [{"x": 2.5, "y": "abc", "z": 4, "w": True}]


# -------------------------------------------------------------------------------------- events


def events_tree(root: Path) -> Path:
    dataset(root)
    nifti(root, "sub-01/func/sub-01_task-rest_run-1_bold.nii.gz", (4, 4, 4, 3))
    nifti(root, "sub-01/func/sub-01_task-rest_run-2_bold.nii.gz", (4, 4, 4, 3))
    nifti(root, "sub-02/func/sub-02_task-rest_run-1_bold.nii.gz", (4, 4, 4, 3))
    nifti(root, "sub-02/func/sub-02_task-nback_bold.nii.gz", (4, 4, 4, 3))
    nifti(root, "sub-01/anat/sub-01_T1w.nii.gz")
    # Inherited: applies to every task-rest run that has no events of its own.
    write(root, "task-rest_events.tsv", "onset\tduration\ttrial_type\n0\t10\trest\n")
    write(
        root,
        "task-rest_events.json",
        {"trial_type": {"Description": "kind of block"}, "stim": {"Levels": {"1": "face", "2": "house"}}},
    )
    write(
        root,
        "sub-01/func/sub-01_task-rest_run-1_events.tsv",
        "onset\tduration\ttrial_type\tstim\tresponse_time\n1.5\t0.5\tgo\t1\t0.3\n4\tn/a\tstop\t2\tn/a\n",
    )
    write(
        root,
        "sub-01/func/sub-01_task-rest_run-1_events.json",
        {"response_time": {"Description": "RT", "Units": "s"}},
    )
    return root


def test_events_nearest_file_and_inherited_json(tmp_path):
    root = events_tree(tmp_path)
    files = files_of(root)
    finder = CompanionFinder(root, all_relpaths(root))

    own = read_events(root, files["sub-01/func/sub-01_task-rest_run-1_bold.nii.gz"], finder)
    assert own is not None
    assert own.path == "sub-01/func/sub-01_task-rest_run-1_events.tsv"
    assert own.columns == {
        "onset": "float64",
        "duration": "float64",
        "trial_type": "string",
        "stim": "string",  # Levels in the top-level task-rest_events.json
        "response_time": "float64",
    }
    assert own.records == [
        {"onset": 1.5, "duration": 0.5, "trial_type": "go", "stim": "1", "response_time": 0.3},
        {"onset": 4.0, "duration": None, "trial_type": "stop", "stim": "2", "response_time": None},
    ]
    assert own.descriptions == {"trial_type": "kind of block", "response_time": "RT"}

    inherited = read_events(root, files["sub-01/func/sub-01_task-rest_run-2_bold.nii.gz"], finder)
    assert inherited is not None and inherited.path == "task-rest_events.tsv"
    assert inherited.records == [{"onset": 0.0, "duration": 10.0, "trial_type": "rest"}]
    # The run-1 JSON does not apply to the top-level events file: only the top-level JSON does.
    assert inherited.descriptions == {"trial_type": "kind of block"}
    other = read_events(root, files["sub-02/func/sub-02_task-rest_run-1_bold.nii.gz"], finder)
    assert other is not None and other.path == "task-rest_events.tsv"

    assert read_events(root, files["sub-02/func/sub-02_task-nback_bold.nii.gz"], finder) is None
    assert read_events(root, files["sub-01/anat/sub-01_T1w.nii.gz"], finder) is None

    # Records of different files have different columns; unify types them alike when asked.
    both = unify({"a": own, "b": inherited})
    assert both["b"].records == [
        {"onset": 0.0, "duration": 10.0, "trial_type": "rest", "stim": None, "response_time": None}
    ]


def test_events_ambiguous_and_missing_onset(tmp_path):
    root = dataset(tmp_path)
    nifti(root, "sub-01/func/sub-01_task-a_run-1_bold.nii.gz", (2, 2, 2, 2))
    write(root, "sub-01/func/sub-01_task-a_events.tsv", "onset\tduration\n1\t1\n")
    write(root, "sub-01/func/sub-01_run-1_events.tsv", "onset\tduration\n1\t1\n")
    file = files_of(root)["sub-01/func/sub-01_task-a_run-1_bold.nii.gz"]
    with pytest.raises(BidsError, match="several events.tsv files apply to it equally"):
        read_events(root, file, CompanionFinder(root, all_relpaths(root)))
    (root / "sub-01/func/sub-01_run-1_events.tsv").unlink()
    write(root, "sub-01/func/sub-01_task-a_events.tsv", "trial_type\ngo\n")
    with pytest.raises(BidsError, match=r"^sub-01/func/sub-01_task-a_events.tsv has no onset column"):
        read_events(root, file, CompanionFinder(root, all_relpaths(root)))


def test_finder_is_given_relpaths_and_never_walks(tmp_path):
    root = events_tree(tmp_path)
    file = files_of(root)["sub-01/func/sub-01_task-rest_run-1_bold.nii.gz"]
    # Only the top-level file listed: the run-1 events file on disk is not considered.
    finder = CompanionFinder(root, ["task-rest_events.tsv", "task-rest_events.json"])
    assert finder.find(file, "events", ".tsv") == "task-rest_events.tsv"
    assert CompanionFinder(root, []).find(file, "events", ".tsv") is None
    finder = CompanionFinder(root, all_relpaths(root))
    assert finder.sources(file, "events", ".tsv") == [
        "task-rest_events.tsv",
        "sub-01/func/sub-01_task-rest_run-1_events.tsv",
    ]


def test_events_of_bids_example_ds001():
    root = example_source("ds001")
    finder = CompanionFinder(root, all_relpaths(root))
    tables = {}
    for rel, file in files_of(root).items():
        if file.suffix == "bold":
            tables[rel] = read_events(root, file, finder)
    assert tables and all(t is not None for t in tables.values())
    t = tables["sub-01/func/sub-01_task-balloonanalogrisktask_run-01_bold.nii.gz"]
    assert t.columns["onset"] == "float64" and t.columns["trial_type"] == "string"
    assert t.columns["cash_demean"] == "float64"
    assert all(isinstance(r["onset"], float) for r in t.records)


# ---------------------------------------------------------------------------------- gradients


def dwi_tree(root: Path) -> Path:
    dataset(root)
    nifti(root, "sub-01/dwi/sub-01_dwi.nii.gz", (4, 4, 4, 6))
    nifti(root, "sub-02/dwi/sub-02_dwi.nii.gz", (4, 4, 4, 6))
    nifti(root, "sub-03/dwi/sub-03_acq-b0_dwi.nii.gz", (4, 4, 4))
    # Top-level pair applies to all subjects without their own.
    write(root, "dwi.bval", "0 1000 1000\t1000 1000 1000 \n\n")
    write(root, "dwi.bvec", "0 1 0 0 0.5 1\n0\t0 1 0 0.5 0\n0 0 0 1 0 0  \n")
    write(root, "sub-02/dwi/sub-02_dwi.bval", "0\n2000\n2000\n2000\n2000\n2000\n")
    write(root, "sub-02/dwi/sub-02_dwi.bvec", "1 0 0 1 0 0\n0 1 0 0 1 0\n0 0 1 0 0 1\n")
    return root


def test_gradients_inherited_and_own(tmp_path):
    root = dwi_tree(tmp_path)
    files = files_of(root)
    finder = CompanionFinder(root, all_relpaths(root))
    f1 = files["sub-01/dwi/sub-01_dwi.nii.gz"]
    assert nifti_volumes(f1.path) == 6
    assert read_gradients(root, f1, finder, nifti_volumes(f1.path)) == (
        [0.0, 1000.0, 1000.0, 1000.0, 1000.0, 1000.0],
        [[0.0, 1.0, 0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]],
    )
    f2 = files["sub-02/dwi/sub-02_dwi.nii.gz"]
    bval, bvec = read_gradients(root, f2, finder, 6)
    assert bval == [0.0, 2000.0, 2000.0, 2000.0, 2000.0, 2000.0]
    assert bvec[0] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # A 3D image has one volume: the inherited 6-entry pair does not fit it.
    f3 = files["sub-03/dwi/sub-03_acq-b0_dwi.nii.gz"]
    assert nifti_volumes(f3.path) == 1
    with pytest.raises(
        BidsError, match=r"^dwi.bval has 6 b-values but sub-03/dwi/sub-03_acq-b0_dwi.nii.gz has 1 volumes"
    ):
        read_gradients(root, f3, finder, 1)


def test_gradients_none_for_other_files(tmp_path):
    root = events_tree(tmp_path)
    file = files_of(root)["sub-01/anat/sub-01_T1w.nii.gz"]
    assert read_gradients(root, file, CompanionFinder(root, all_relpaths(root)), 1) is None


@pytest.mark.parametrize(
    ("bval", "bvec", "message"),
    [
        (
            "0 1000 1000 1000 1000\n",
            "1 0 0 1 0 0\n0 1 0 0 1 0\n0 0 1 0 0 1\n",
            "sub-01/dwi/sub-01_dwi.bval has 5 b-values but sub-01/dwi/sub-01_dwi.nii.gz has 6 volumes",
        ),
        (
            "0 1 1 1 1 1\n",
            "1 0 0 1 0 0\n0 1 0 0 1 0\n",
            "sub-01/dwi/sub-01_dwi.bvec has 2 non-empty lines; a .bvec file needs exactly 3",
        ),
        (
            "0 1 1 1 1 1\n",
            "1 0 0 1 0 0\n0 1 0 0 1\n0 0 1 0 0 1\n",
            "sub-01/dwi/sub-01_dwi.bvec: its 3 rows have different lengths (6, 5, 6)",
        ),
        (
            "0 1 1 1 1 1\n",
            "1 0 0 1 0\n0 1 0 0 1\n0 0 1 0 0\n",
            "sub-01/dwi/sub-01_dwi.bvec has 5 directions per row but sub-01/dwi/sub-01_dwi.nii.gz has 6 volumes",
        ),
        (
            "0 1 1 x 1 1\n",
            "1 0 0 1 0 0\n0 1 0 0 1 0\n0 0 1 0 0 1\n",
            "sub-01/dwi/sub-01_dwi.bval line 1: 'x' is not a number",
        ),
        (
            "0 1 1 1 1 1\n",
            "1 0 0 1 0 0\n0 1 0 nan 1 0\n0 0 1 0 0 1\n",
            "sub-01/dwi/sub-01_dwi.bvec line 2: 'nan' is not a number",
        ),
        (
            "0 1 1 1 1 1\n",
            "1 0 0\n0 1 0\n0 0 1\n1 0 0\n0 1 0\n0 0 1\n",
            "has 6 non-empty lines; a .bvec file needs exactly 3 (it looks transposed",
        ),
    ],
)
def test_gradient_errors_name_the_file(tmp_path, bval, bvec, message):
    root = dataset(tmp_path)
    nifti(root, "sub-01/dwi/sub-01_dwi.nii.gz", (4, 4, 4, 6))
    write(root, "sub-01/dwi/sub-01_dwi.bval", bval)
    write(root, "sub-01/dwi/sub-01_dwi.bvec", bvec)
    file = files_of(root)["sub-01/dwi/sub-01_dwi.nii.gz"]
    with pytest.raises(BidsError) as info:
        read_gradients(root, file, CompanionFinder(root, all_relpaths(root)), nifti_volumes(file.path))
    assert message in str(info.value)


def test_gradients_half_a_pair(tmp_path):
    root = dataset(tmp_path)
    nifti(root, "sub-01/dwi/sub-01_dwi.nii.gz", (4, 4, 4, 2))
    write(root, "sub-01/dwi/sub-01_dwi.bval", "0 1000\n")
    file = files_of(root)["sub-01/dwi/sub-01_dwi.nii.gz"]
    with pytest.raises(
        BidsError,
        match=r"^sub-01/dwi/sub-01_dwi.nii.gz: sub-01/dwi/sub-01_dwi.bval applies to it but no .bvec file does",
    ):
        read_gradients(root, file, CompanionFinder(root, all_relpaths(root)), 2)


def test_nifti_volumes_unreadable(tmp_path):
    path = write(tmp_path, "x.nii.gz", b"not a nifti")
    with pytest.raises(BidsError, match="x.nii.gz: its NIfTI header cannot be read"):
        nifti_volumes(path)


# ---------------------------------------------------------------------------- sessions, scans


def sessions_tree(root: Path) -> Path:
    dataset(root)
    write(
        root,
        "sessions.json",
        {"group": {"Levels": {"1": "control", "2": "patient"}}, "weight": {"Description": "kg"}},
    )
    write(
        root,
        "sub-01/sub-01_sessions.tsv",
        "session_id\tage\tweight\tgroup\tnote\nses-1\t30\t70\t1\tn/a\nses-2\t31\t72\t2\tn/a\n",
    )
    write(root, "sub-02/sub-02_sessions.tsv", "session_id\tage\tweight\tgroup\tnote\n1\t40.5\t80\t1\tok\n")
    write(root, "sub-02/sub-02_sessions.json", {"weight": {"Description": "body weight, kg"}})
    return root


def test_read_sessions_one_subject(tmp_path):
    root = sessions_tree(tmp_path)
    s1 = read_sessions(root, "01")
    assert s1 is not None and s1.subject == "sub-01"
    assert s1.columns == {"age": "int64", "weight": "int64", "group": "string", "note": "string"}
    assert s1.records == {
        "ses-1": {"age": 30, "weight": 70, "group": "1", "note": None},
        "ses-2": {"age": 31, "weight": 72, "group": "2", "note": None},
    }
    assert s1.descriptions == {"weight": "kg"}
    s2 = read_sessions(root, "sub-02")
    assert s2 is not None
    assert s2.records == {"ses-1": {"age": 40.5, "weight": 80, "group": "1", "note": "ok"}}  # "1" → "ses-1"
    assert s2.descriptions == {"weight": "body weight, kg"}  # the subject's own JSON overrides sessions.json
    assert read_sessions(root, "03") is None


def test_read_all_sessions_types_alike(tmp_path):
    root = sessions_tree(tmp_path)
    tables = read_all_sessions(root, ["01", "02", "03"])
    assert set(tables) == {"sub-01", "sub-02"}
    columns = {"age": "float64", "weight": "int64", "group": "string", "note": "string"}
    assert tables["sub-01"].columns == columns and tables["sub-02"].columns == columns
    assert tables["sub-01"].records["ses-1"] == {"age": 30.0, "weight": 70, "group": "1", "note": None}
    assert isinstance(tables["sub-01"].records["ses-1"]["age"], float)
    assert tables["sub-02"].records["ses-1"] == {"age": 40.5, "weight": 80, "group": "1", "note": "ok"}


def test_sessions_errors(tmp_path):
    root = dataset(tmp_path)
    write(root, "sub-01/sub-01_sessions.tsv", "session\tage\nses-1\t3\n")
    with pytest.raises(BidsError, match=r"^sub-01/sub-01_sessions.tsv has no session_id column"):
        read_sessions(root, "01")
    write(root, "sub-01/sub-01_sessions.tsv", "session_id\tage\nses-1\t3\n1\t4\n")
    with pytest.raises(BidsError, match=r"^sub-01/sub-01_sessions.tsv lists ses-1 twice \(line 3\)"):
        read_sessions(root, "01")


def test_read_scans(tmp_path):
    root = dataset(tmp_path)
    write(root, "scans.json", {"acq_time": {"Description": "when"}, "quality": {"Levels": {"1": "good"}}})
    write(
        root,
        "sub-01/ses-1/sub-01_ses-1_scans.tsv",
        "filename\tacq_time\tmotion\tquality\n"
        "anat/sub-01_ses-1_T1w.nii.gz\t2020-01-01T10:00:00\t1\t1\n"
        "func/sub-01_ses-1_task-rest_bold.nii.gz\tn/a\t2\t1\n",
    )
    write(
        root,
        "sub-01/ses-2/sub-01_ses-2_scans.tsv",
        "filename\tacq_time\tmotion\nanat/sub-01_ses-2_T1w.nii.gz\t2020-02-01T10:00:00\t0.5\n",
    )
    write(root, "sub-02/sub-02_scans.tsv", "filename\tacq_time\nanat/sub-02_T1w.nii\t2020-03-01T09:30:00\n")
    one = read_scans(root, "01")
    assert one.columns == {"acq_time": "string", "motion": "float64", "quality": "string"}
    assert one.records == {
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz": {
            "acq_time": "2020-01-01T10:00:00",
            "motion": 1.0,
            "quality": "1",
        },
        "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz": {
            "acq_time": None,
            "motion": 2.0,
            "quality": "1",
        },
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz": {
            "acq_time": "2020-02-01T10:00:00",
            "motion": 0.5,
            "quality": None,
        },
    }
    assert one.descriptions == {"acq_time": "when"}
    everyone = read_all_scans(root, ["sub-01", "sub-02", "sub-03"])
    assert everyone.columns == one.columns
    assert everyone.records["sub-02/anat/sub-02_T1w.nii"] == {
        "acq_time": "2020-03-01T09:30:00",
        "motion": None,
        "quality": None,
    }
    assert len(everyone.records) == 4
    assert read_scans(root, "03").records == {}


def test_scans_filename_outside_folder(tmp_path):
    root = dataset(tmp_path)
    write(root, "sub-01/sub-01_scans.tsv", "filename\tacq_time\n../sub-02/anat/sub-02_T1w.nii.gz\tn/a\n")
    with pytest.raises(
        BidsError,
        match=r"^sub-01/sub-01_scans.tsv lists ../sub-02/anat/sub-02_T1w.nii.gz, which is not inside sub-01",
    ):
        read_scans(root, "01")


def test_sessions_and_scans_of_bids_example_synthetic():
    root = example_source("synthetic")
    subjects = sorted(p.name for p in root.glob("sub-*"))
    sessions = read_all_sessions(root, subjects)
    assert set(sessions) == set(subjects)
    assert all(set(t.records) == {"ses-01", "ses-02"} for t in sessions.values())
    scans = read_all_scans(root, subjects)
    assert scans.records and all(rel.startswith("sub-") and (root / rel).exists() for rel in scans.records)


# --------------------------------------------------------------------------------- typed lifts


def test_schema_kinds():
    assert schema_kinds("RepetitionTime") == {"float64"}
    assert schema_kinds("EchoTime") == {"float64", "json"}  # a number, or an array (multi-echo)
    assert schema_kinds("SliceTiming") == {"json"}
    assert schema_kinds("TaskName") == {"string"}
    assert schema_kinds("NotABidsField") is None


def test_lift_types():
    assert lift_type("RepetitionTime", [2, 2.5, None]) == "float64"
    assert lift_type("RepetitionTime", [2, 3]) == "float64"  # the schema says number: ints become floats
    assert lift_type("RepetitionTime", [None]) == "float64"
    assert lift_type("EchoTime", [0.03, 0.035]) == "float64"
    assert lift_type("EchoTime", [[0.01, 0.02], [0.01, 0.03]]) == "json"
    assert lift_type("EchoTime", [0.03, [0.01, 0.02]]) == "json"  # mixed: number and array
    assert lift_type("EchoTime", []) == "json"  # several types allowed, nothing to choose by
    assert lift_type("SliceTiming", [[0.0, 0.5, 1.0]]) == "json"
    assert lift_type("TaskName", ["rest", None]) == "string"
    assert lift_type("MyField", [1, 2]) == "int64"  # unknown: from the values
    assert lift_type("MyField", [True, False]) == "bool"
    assert lift_type("MyField", [1, "a"]) == "json"  # mixed
    assert lift_type("MyField", [None]) == "string"


def test_lift_values():
    assert lift_column("RepetitionTime", [2, 2.5, None]) == ("float64", [2.0, 2.5, None])
    kind, values = lift_column("RepetitionTime", [2])
    assert kind == "float64" and isinstance(values[0], float)
    assert lift_column("SliceTiming", [[0.0, 0.5], None]) == ("json", ["[0.0, 0.5]", None])
    assert lift_column("MyField", [1, "a"]) == ("json", ["1", '"a"'])
    assert lift_column("TaskName", ["naïve"]) == ("string", ["naïve"])
    assert lift_value(3, "int64") == 3
    assert lift_value(True, "bool") is True
    with pytest.raises(BidsError, match=r"^TaskName of sub-01/func/x_bold.json: 3 is not a string value"):
        lift_value(3, "string", "TaskName", "sub-01/func/x_bold.json")
    with pytest.raises(BidsError):
        lift_value(True, "float64", "RepetitionTime")  # a bool is not a number
    assert math.isnan(lift_value(float("nan"), "float64"))


def test_index_says_which_dwi_images_lack_gradients_and_which_session_rows_have_no_data(tmp_path):
    import json

    import nibabel
    import numpy as np

    from bids_hub_dagster.bids.index import build_index

    root = tmp_path / "ds"
    (root / "sub-01/ses-1/dwi").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "w", "BIDSVersion": "1.10.0"}))
    image = nibabel.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4))
    image.to_filename(root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz")
    (root / "sub-01/sub-01_sessions.tsv").write_text("session_id\tweeks\nses-1\t2\nses-9\t5\n")
    index = build_index(root)
    assert any(
        "1 dwi image(s) have no .bval/.bvec" in w and "sub-01_ses-1_dwi.nii.gz" in w for w in index.warnings
    )
    assert any(
        "sessions.tsv row(s) name a session with no row of data" in w and "sub-01/ses-9" in w
        for w in index.warnings
    )
    assert index.rows[0].sessions == {"weeks": 2}
