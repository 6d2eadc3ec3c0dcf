"""build_index on real BIDS layouts (the vendored bids-examples) and on small trees built here."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from bids_hub_dagster.bids import (
    AmbiguousColumnError,
    BidsError,
    BidsIndex,
    ColumnRule,
    build_index,
    infer_columns,
)
from bids_hub_dagster.bids.columns import ABSENT
from bids_hub_dagster.bids.entities import natural_key, parse_filename
from bids_hub_dagster.bids.layout import scan
from bids_hub_dagster.bids.participants import read_participants
from bids_hub_dagster.demo import DEMO_FILES, build_demo_bids
from bids_hub_dagster_tests.conftest import BIDS_EXAMPLE_NAMES, BIDS_EXAMPLES, example_source

# Named, not listed from the folder: if the data is missing these tests fail, they do not vanish.
EXAMPLES = list(BIDS_EXAMPLE_NAMES)
EXAMPLES_WITHOUT_NIFTI = ["eeg_cbm"]
EXAMPLES_WITH_NIFTI = [n for n in EXAMPLES if n not in EXAMPLES_WITHOUT_NIFTI]


def _has_nifti(folder: Path) -> bool:
    return any(f.endswith((".nii", ".nii.gz")) for _, _, files in os.walk(folder) for f in files)


DESCRIPTION = {"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw"}


# --- helpers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Like conftest's ``bids_example``, but one copy per module: for tests that only read the tree.

    ds000117 alone has ~2,800 entries; copying it for every test made this file I/O bound.
    Tests that change their copy use ``bids_example`` instead.
    """
    copies: dict[str, Path] = {}

    def copy(name: str) -> Path:
        if name not in copies:
            src = example_source(name)
            copies[name] = tmp_path_factory.mktemp("examples") / name
            shutil.copytree(src, copies[name], symlinks=True)
        return copies[name]

    return copy


def make_bids(root: Path, files, description: dict | None = DESCRIPTION) -> Path:
    """A BIDS tree at ``root``: ``files`` is a list of relpaths (empty files) or a mapping
    relpath → content (str/bytes) or an existing Path to copy."""
    root.mkdir(parents=True, exist_ok=True)
    if description is not None:
        (root / "dataset_description.json").write_text(json.dumps(description))
    items = files.items() if isinstance(files, dict) else ((f, b"") for f in files)
    for rel, content in items:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, path)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


def rules(**columns: dict) -> list[ColumnRule]:
    return [ColumnRule.from_mapping(name, raw) for name, raw in columns.items()]


def cell_names(index: BidsIndex, column: str) -> dict[str, list[str]]:
    """Row label → filenames in one column."""
    return {r.label: [f.filename for f in r.cells[column]] for r in index.rows}


def all_cell_paths(index: BidsIndex) -> list[str]:
    return [f.relpath for r in index.rows for c in index.columns for f in r.cells[c.name]]


def make_writable(root: Path) -> None:
    """An examples folder may be read-only and copytree keeps modes; let a test edit its copy."""
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(folder, name)
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    root.chmod(root.stat().st_mode | stat.S_IWUSR)


# An independent walker: os.walk plus a small gitignore subset implemented here (not pathspec),
# so that the index is checked against a second reading of the same tree.


def _bidsignore_patterns(root: Path) -> list[str]:
    path = root / ".bidsignore"
    if not path.is_file():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _ignored(name: str, is_dir: bool, patterns: list[str]) -> bool:
    for pat in patterns:
        if pat.endswith("/") and "/" not in pat[:-1]:
            if is_dir and fnmatch.fnmatchcase(name, pat[:-1]):
                return True
        elif pat.startswith("**/") and "/" not in pat[3:]:
            if fnmatch.fnmatchcase(name, pat[3:]):
                return True
        elif "/" not in pat:
            if fnmatch.fnmatchcase(name, pat):
                return True
        else:  # pragma: no cover - fail loudly if the examples grow a pattern this walker can't read
            raise AssertionError(f"test walker does not understand .bidsignore pattern {pat!r}")
    return False


def raw_nifti_files(root: Path) -> tuple[set[str], set[str]]:
    """(NIfTI relpaths under sub-* of the raw tree not ignored, those the .bidsignore drops)."""
    patterns = _bidsignore_patterns(root)
    kept: set[str] = set()
    dropped: set[str] = set()
    for top in sorted(os.listdir(root)):
        if not (top.startswith("sub-") and (root / top).is_dir()):
            continue
        for folder, dirs, files in os.walk(root / top):
            rel = Path(folder).relative_to(root).as_posix()
            for d in list(dirs):
                if d.startswith("."):
                    dirs.remove(d)
                elif _ignored(d, True, patterns):
                    dirs.remove(d)
                    for f2, _, fs2 in os.walk(Path(folder, d)):
                        r2 = Path(f2).relative_to(root).as_posix()
                        dropped |= {f"{r2}/{f}" for f in fs2 if f.lower().endswith((".nii", ".nii.gz"))}
            for f in files:
                if f.startswith(".") or not f.lower().endswith((".nii", ".nii.gz")):
                    continue
                (dropped if _ignored(f, False, patterns) else kept).add(f"{rel}/{f}")
    return kept, dropped


# --- the example corpus ------------------------------------------------------------------------------


def test_the_example_corpus_is_there():
    # every named example is on disk, and the NIfTI split above matches its files
    for name in EXAMPLES:
        assert _has_nifti(example_source(name)) == (name in EXAMPLES_WITH_NIFTI), name
    assert "eeg_cbm" not in EXAMPLES_WITH_NIFTI
    assert len(EXAMPLES_WITH_NIFTI) >= 9


@pytest.mark.parametrize("name", EXAMPLES_WITH_NIFTI)
def test_every_raw_nifti_lands_in_exactly_one_cell(example, name):
    root = example(name)
    index = build_index(root)
    expected, dropped = raw_nifti_files(root)
    assert expected, f"{name}: the independent walk found no NIfTI"

    cells = all_cell_paths(index)
    assert len(cells) == len(set(cells)), "a file appears in two cells"
    assert set(cells) == expected
    assert not set(cells) & dropped

    # each file sits in the row of its subject/session and in a column whose rule matches it
    for row in index.rows:
        for column in index.columns:
            for f in row.cells[column.name]:
                assert column.matches(f)
                assert f"sub-{f.subject}" == row.subject_id
                assert row.session_id == (None if f.session is None else f"ses-{f.session}")
                assert f.is_nifti and f.scope == ""
                assert f.path.is_file()
    # columns: unique identifiers, raw tree, many where some row has > 1 file
    names = [c.name for c in index.columns]
    assert len(names) == len(set(names))
    for column in index.columns:
        assert column.scope == ""
        assert column.many == any(len(r.cells[column.name]) > 1 for r in index.rows)
    assert not (set(names) & {"subject_id", "session_id"})
    # rows sorted by subject then session, numbers numerically; no empty rows
    keys = [(r.subject_id, r.session_id) for r in index.rows]
    assert keys == sorted(keys, key=lambda k: (natural_key(k[0]), natural_key(k[1] or "")))
    assert len(keys) == len(set(keys))
    assert all(r.files for r in index.rows)
    # one sidecar entry per indexed file
    assert set(index.sidecars) == set(cells)


@pytest.mark.parametrize("name", EXAMPLES_WITH_NIFTI)
def test_inferred_columns_are_one_per_datatype_suffix_pair(example, name):
    root = example(name)
    files, _ = scan(root)
    pairs = {(f.datatype, f.suffix) for f in files if f.scope == ""}
    columns = infer_columns(files, "session")
    assert {(c.datatype or None, c.suffix or None) for c in columns} == pairs
    assert len(columns) == len(pairs)
    suffix_datatypes: dict[str | None, set] = {}
    for dt, sx in pairs:
        suffix_datatypes.setdefault(sx, set()).add(dt)
    for c in columns:
        base = (c.suffix or "file").lower()
        if len(suffix_datatypes[c.suffix or None]) == 1:
            assert c.name == base
        else:
            assert c.name == f"{c.datatype}_{base}"


def test_bidsignore_examples_exclude_their_ignored_files(example):
    with_ignore = [n for n in EXAMPLES_WITH_NIFTI if (BIDS_EXAMPLES / n / ".bidsignore").is_file()]
    assert "ds000117" in with_ignore

    root = example("ds000117")
    index = build_index(root)
    flash = {p.relative_to(root).as_posix() for p in root.glob("sub-*/ses-mri/anat/*_FLASH.nii.gz")}
    assert len(flash) == 16 * 14  # 16 subjects x 2 runs x 7 echoes, all ignored
    _, dropped = raw_nifti_files(root)
    assert dropped == flash
    indexed = set(all_cell_paths(index))
    assert not indexed & flash
    assert "FLASH" not in {c.suffix for c in index.columns}
    assert "flash" not in [c.name for c in index.columns]


def test_bidsignore_in_the_fmriprep_example_drops_boldrefs(example):
    root = example("ds000001-fmriprep")
    index = build_index(root)
    boldrefs = {p.relative_to(root).as_posix() for p in root.glob("sub-*/func/*_boldref.nii.gz")}
    assert boldrefs
    assert not boldrefs & set(all_cell_paths(index))
    assert "boldref" not in [c.name for c in index.columns]


def test_bidsignore_patterns_on_a_built_tree(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-01/anat/sub-01_acq-bad_T1w.nii.gz",
            "sub-01/anat/extra/sub-01_T1w.nii.gz",
            "sub-02/anat/sub-02_T1w.nii.gz",
            "sub-03/anat/sub-03_T1w.nii",
            "sub-03/anat/.sub-03_T1w.nii",  # hidden: never indexed
            "sub-03/.git/sub-03_T1w.nii",
        ],
    )
    (root / ".bidsignore").write_text("# comment\nsub-02/\n*_acq-bad_*\nextra/\n")
    index = build_index(root)
    assert sorted(all_cell_paths(index)) == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-03/anat/sub-03_T1w.nii"]
    assert [r.subject_id for r in index.rows] == ["sub-01", "sub-03"]
    assert [c.name for c in index.columns] == ["t1w"]
    assert index.columns[0].many is False


# --- rows and sessions on the examples ----------------------------------------------------------------


def test_ds001_has_no_sessions(example):
    index = build_index(example("ds001"))
    assert [r.subject_id for r in index.rows] == [f"sub-{i:02d}" for i in range(1, 17)]
    assert all(r.session_id is None for r in index.rows)
    assert index.sessions == 0
    assert [r.label for r in index.rows][:2] == ["sub-01", "sub-02"]
    assert [(c.name, c.datatype, c.suffix, c.many) for c in index.columns] == [
        ("t1w", "anat", "T1w", False),
        ("inplanet2", "anat", "inplaneT2", False),
        ("bold", "func", "bold", True),
    ]
    assert cell_names(index, "bold")["sub-01"] == [
        f"sub-01_task-balloonanalogrisktask_run-0{i}_bold.nii.gz" for i in (1, 2, 3)
    ]
    assert index.participants.columns == {"sex": "string", "age": "int64"}
    assert index.rows[0].phenotype == {"sex": "F", "age": 26}
    assert index.description["BIDSVersion"]


def test_7t_trt_one_row_per_session(example):
    index = build_index(example("7t_trt"))
    assert len(index.rows) == 44
    assert index.sessions == 44
    assert len(index.subjects) == 22
    assert [(r.subject_id, r.session_id) for r in index.rows[:4]] == [
        ("sub-01", "ses-1"),
        ("sub-01", "ses-2"),
        ("sub-02", "ses-1"),
        ("sub-02", "ses-2"),
    ]
    by_name = {c.name: c for c in index.columns}
    assert set(by_name) == {"t1w", "t1map", "magnitude1", "magnitude2", "phasediff", "bold"}
    assert by_name["bold"].many and by_name["phasediff"].many
    assert not by_name["t1w"].many
    # bold: acq before run in the schema; absent run sorts first within an acq
    assert cell_names(index, "bold")["sub-01/ses-1"] == [
        "sub-01_ses-1_task-rest_acq-fullbrain_run-1_bold.nii.gz",
        "sub-01_ses-1_task-rest_acq-fullbrain_run-2_bold.nii.gz",
        "sub-01_ses-1_task-rest_acq-prefrontal_bold.nii.gz",
    ]
    # T1w only in session 1: the session-2 row has an empty cell, not a missing key
    t1w = cell_names(index, "t1w")
    assert t1w["sub-01/ses-1"] == ["sub-01_ses-1_T1w.nii.gz"]
    assert t1w["sub-01/ses-2"] == []
    # a session row carries its subject's phenotype
    assert index.rows[0].phenotype == index.rows[1].phenotype
    assert index.participants.columns["sex"] == "string"  # Levels
    assert index.participants.columns["age_at_first_scan_years"] == "int64"


def test_7t_trt_one_row_per_subject(example):
    index = build_index(example("7t_trt"), row="subject")
    assert len(index.rows) == 22
    assert all(r.session_id is None for r in index.rows)
    bold = cell_names(index, "bold")["sub-01"]
    assert len(bold) == 6
    assert [parse_filename(b).entities["ses"] for b in bold] == ["1", "1", "1", "2", "2", "2"]
    # T1w exists once per subject, so it stays a single-file column at subject level
    assert {c.name: c.many for c in index.columns}["t1w"] is False


def test_ds000117_sessions_without_nifti_give_no_row(example):
    index = build_index(example("ds000117"))
    assert len(index.rows) == 16
    assert {r.session_id for r in index.rows} == {"ses-mri"}  # ses-meg holds no NIfTI
    assert [r.subject_id for r in index.rows] == [f"sub-{i:02d}" for i in range(1, 17)]
    bold = cell_names(index, "bold")["sub-01/ses-mri"]
    assert bold == [f"sub-01_ses-mri_task-facerecognition_run-{i:02d}_bold.nii.gz" for i in range(1, 10)]
    # sub-emptyroom is in participants.tsv but has no data: no row; n/a → None
    assert "sub-emptyroom" in index.participants.records
    assert index.participants.records["sub-emptyroom"] == {"age": None, "sex": None, "first_ses": None}
    assert "sub-emptyroom" not in index.subjects
    assert index.participants.columns == {"age": "int64", "sex": "string", "first_ses": "string"}
    # CRLF line endings in participants.tsv are not part of the values
    assert index.rows[0].phenotype == {"age": 31, "sex": "M", "first_ses": "meg"}
    assert index.warnings == []


def test_ds000117_sidecar_inheritance_merges_top_level_and_subject_sidecars(example):
    index = build_index(example("ds000117"))
    t1w = index.rows[0].cells["t1w"][0]
    meta = index.sidecars[t1w.relpath]
    assert meta["InversionTime"] == 0.9  # from acq-mprage_T1w.json at the top
    assert meta["PulseSequenceType"] == "MPRAGE"
    assert meta["AnatomicalLandmarkCoordinates"]["Nasion"] == [43, 111, 95]  # the subject's own


def test_synthetic_skips_derivatives_and_code(example):
    root = example("synthetic")
    assert list((root / "derivatives").rglob("*.nii*"))
    assert (root / "code").is_dir()
    index = build_index(root)
    assert len(index.rows) == 10
    assert [r.session_id for r in index.rows[:2]] == ["ses-01", "ses-02"]
    assert all(not p.startswith(("derivatives/", "code/", "stimuli/")) for p in all_cell_paths(index))
    assert [c.name for c in index.columns] == ["t1w", "bold"]
    # participants.tsv without participants.json: typed from the values alone
    assert index.participants.columns == {"age": "int64", "sex": "string"}
    # task-rest_bold.json at the top reaches the rest runs, not the nback runs
    for f in index.rows[0].cells["bold"]:
        assert (index.sidecars[f.relpath].get("TaskName") == "Rest") == (f.name.entities["task"] == "rest")


def test_qmri_mp2rage_many_column_in_schema_entity_order(example):
    index = build_index(example("qmri_mp2rage"))
    assert [(r.subject_id, r.session_id) for r in index.rows] == [("sub-1", None)]
    assert {c.name: c.many for c in index.columns} == {
        "mp2rage": True,
        "t1map": False,
        "unit1": False,
        "defacemask": False,
    }
    assert cell_names(index, "mp2rage")["sub-1"] == [
        "sub-1_inv-1_part-mag_MP2RAGE.nii",
        "sub-1_inv-1_part-phase_MP2RAGE.nii",
        "sub-1_inv-2_part-mag_MP2RAGE.nii",
        "sub-1_inv-2_part-phase_MP2RAGE.nii",
    ]
    # the raw T1map, not the derivative one with the same name
    assert [f.relpath for f in index.rows[0].cells["t1map"]] == ["sub-1/anat/sub-1_T1map.nii"]
    assert index.participants.columns == {}
    assert index.rows[0].phenotype == {}


def test_qmri_mp2rage_scope_selects_the_derivative(example):
    index = build_index(
        example("qmri_mp2rage"),
        rules(
            t1map={"datatype": "anat", "suffix": "T1map"},
            t1map_fit={"scope": "derivatives/pymp2rage", "datatype": "anat", "suffix": "T1map"},
            unit1_fit={"scope": "derivatives/pymp2rage/", "suffix": "UNIT1"},
        ),
    )
    row = index.rows[0]
    assert [f.relpath for f in row.cells["t1map"]] == ["sub-1/anat/sub-1_T1map.nii"]
    assert [f.relpath for f in row.cells["t1map_fit"]] == ["derivatives/pymp2rage/sub-1/anat/sub-1_T1map.nii"]
    assert row.cells["t1map_fit"][0].scope == "derivatives/pymp2rage"
    assert [f.relpath for f in row.cells["unit1_fit"]] == ["derivatives/pymp2rage/sub-1/anat/sub-1_UNIT1.nii"]
    # the derivative's own sidecar applies to it
    derived = json.loads((index.root / "derivatives/pymp2rage/sub-1/anat/sub-1_T1map.json").read_text())
    assert index.sidecars["derivatives/pymp2rage/sub-1/anat/sub-1_T1map.nii"] == derived


def test_genetics_ukbb_phenotype_and_sidecars(example):
    index = build_index(example("genetics_ukbb"))
    cols = index.participants.columns
    assert cols["age"] == "string"  # "89+" is not a number
    assert cols["genetic_id"] == "int64"
    assert cols["group"] == "string"
    assert index.participants.descriptions["group"].startswith("classification")
    assert {c.name for c in index.columns} == {"flair", "t1w", "dwi", "bold"}
    row = index.rows[0]
    assert row.phenotype["age"] == "48" and row.phenotype["genetic_id"] == 125425
    tasks = {f.name.entities["task"]: index.sidecars[f.relpath] for f in row.cells["bold"]}
    assert set(tasks) == {"FaceShapeEmotion", "rest"}
    assert tasks["rest"]["TaskName"] == "Rest"
    assert tasks["rest"]["RepetitionTime"] == 0.735
    assert tasks["FaceShapeEmotion"]["TaskName"] != "Rest"


def test_pet001_indexes_files_without_reading_them(example):
    index = build_index(example("pet001"))
    assert [(r.subject_id, r.session_id) for r in index.rows] == [("sub-01", "ses-01")]
    row = index.rows[0]
    assert [f.filename for f in row.cells["pet"]] == ["sub-01_ses-01_trc-CIMBI36_pet.nii.gz"]
    t1w = row.cells["t1w"][0]
    assert t1w.path.read_bytes().lstrip().startswith(b"<!DOCTYPE html>")  # not an image, still indexed
    assert t1w.size == t1w.path.stat().st_size > 0
    assert row.nbytes == sum(f.path.stat().st_size for f in row.files)
    assert row.phenotype == {"weight": 21}
    assert index.sidecars[t1w.relpath]  # its own T1w.json


def test_mri_chunk_chunks_make_a_many_column(example):
    index = build_index(example("mri_chunk"))
    assert cell_names(index, "t1w") == {
        "sub-001": ["sub-001_chunk-1_T1w.nii.gz", "sub-001_chunk-2_T1w.nii.gz"]
    }
    assert index.columns[0].many
    # participants.tsv with only participant_id: rows, no phenotype columns
    assert index.participants.columns == {}
    assert index.rows[0].phenotype == {}


def test_fmriprep_suffix_in_two_datatypes_gets_a_datatype_prefix(example):
    index = build_index(example("ds000001-fmriprep"))
    names = {c.name: (c.datatype, c.suffix) for c in index.columns}
    assert names["anat_mask"] == ("anat", "mask")
    assert names["func_mask"] == ("func", "mask")
    assert names["anat_dseg"] == ("anat", "dseg")
    assert names["func_dseg"] == ("func", "dseg")
    assert names["t1w"] == ("anat", "T1w")  # only in anat: no prefix
    assert names["bold"] == ("func", "bold")
    assert names["probseg"] == ("anat", "probseg")


def test_eeg_only_dataset_is_a_clear_error(example):
    root = example("eeg_cbm")
    with pytest.raises(BidsError, match=r"holds no NIfTI files \(\.nii or \.nii\.gz\) under sub-\* folders"):
        build_index(root)


# --- inference on built trees ------------------------------------------------------------------------


def test_inference_names_prefixes_and_many(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
            "sub-01/func/sub-01_task-a_bold.nii.gz",
            "sub-01/func/sub-01_task-a_desc-brain_mask.nii.gz",
            "sub-01/dwi/sub-01_dwi.nii",
            "sub-02/anat/sub-02_run-1_T1w.nii.gz",
            "sub-02/anat/sub-02_run-2_T1w.nii.gz",
            "sub-02/anat/sub-02_desc-brain_mask.nii.gz",
            "sub-02/func/sub-02_task-a_bold.nii.gz",
        ],
    )
    index = build_index(root)
    # desc-brain_mask is a derivative's name: in a raw dataset it is skipped, with a warning naming it
    assert [(c.name, c.datatype, c.suffix, c.many) for c in index.columns] == [
        ("t1w", "anat", "T1w", True),  # sub-02 has two runs
        ("dwi", "dwi", "dwi", False),
        ("bold", "func", "bold", False),
    ]
    assert "sub-01/anat/sub-01_desc-brain_mask.nii.gz" in index.warnings[0]
    cells = {c: cell_names(index, c) for c in ("t1w", "dwi")}
    assert cells["t1w"] == {
        "sub-01": ["sub-01_T1w.nii.gz"],
        "sub-02": ["sub-02_run-1_T1w.nii.gz", "sub-02_run-2_T1w.nii.gz"],
    }
    assert cells["dwi"] == {"sub-01": ["sub-01_dwi.nii"], "sub-02": []}
    assert index.files_per_column() == {"t1w": 3, "dwi": 1, "bold": 2}
    # the same files in a derivative dataset: masks are columns, named by datatype where a suffix repeats
    (root / "dataset_description.json").write_text(
        '{"Name": "d", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}'
    )
    derived = build_index(root)
    assert [c.name for c in derived.columns] == ["t1w", "anat_mask", "dwi", "bold", "func_mask"]
    assert derived.files_per_column() == {"anat_mask": 2, "t1w": 3, "dwi": 1, "bold": 2, "func_mask": 1}


def test_inference_counts_many_per_row_not_per_subject(tmp_path):
    files = [f"sub-01/ses-{s}/anat/sub-01_ses-{s}_T1w.nii" for s in (1, 2)]
    root = make_bids(tmp_path / "ds", files)
    assert build_index(root).columns[0].many is False  # one per session row
    assert build_index(root, row="subject").columns[0].many is True  # two per subject row


def test_files_outside_datatype_folders_and_without_sub_entity(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii",
            "sub-01/sub-01_T1w.nii",  # no datatype folder
            "sub-02/anat/T1w.nii",  # no sub- in the name: subject from the folder
        ],
    )
    index = build_index(root)
    # neither is a BIDS name for a raw image: both are skipped and named, never a column of their own
    assert [(c.name, c.datatype) for c in index.columns] == [("t1w", "anat")]
    assert cell_names(index, "t1w") == {"sub-01": ["sub-01_T1w.nii"]}
    assert "sub-01/sub-01_T1w.nii" in index.warnings[0] and "sub-02/anat/T1w.nii" in index.warnings[0]
    # `datatype: null` in a rule selects files without a datatype folder: none is valid here
    with pytest.raises(BidsError, match=r"none of the columns \(loose\) matches a file"):
        build_index(root, rules(loose={"datatype": None, "suffix": "T1w"}))


def test_rows_sorted_naturally_by_subject_and_session(tmp_path):
    subjects = ["10", "2", "1", "2b"]
    files = [f"sub-{s}/anat/sub-{s}_T1w.nii" for s in subjects]
    files += [f"sub-3/ses-{x}/anat/sub-3_ses-{x}_T1w.nii" for x in ("10", "2", "1")]
    root = make_bids(tmp_path / "ds", files)
    index = build_index(root)
    assert [r.label for r in index.rows] == [
        "sub-1",
        "sub-2",
        "sub-2b",
        "sub-3/ses-1",
        "sub-3/ses-2",
        "sub-3/ses-10",
        "sub-10",
    ]
    assert index.subjects == ["sub-1", "sub-2", "sub-2b", "sub-3", "sub-10"]


def test_many_column_orders_runs_numerically(tmp_path, nibabel_data):
    run_files = {
        f"sub-01/func/sub-01_task-x_run-{r}_bold.nii{'.gz' if r % 2 else ''}": b"" for r in (10, 2, 1, 11, 3)
    }
    # one real image among the empty ones: content does not change the order
    run_files["sub-01/func/sub-01_task-x_run-2_bold.nii"] = nibabel_data / "functional.nii"
    root = make_bids(tmp_path / "ds", run_files)
    index = build_index(root, rules(bold={"suffix": "bold", "many": True}))
    assert cell_names(index, "bold")["sub-01"] == [
        "sub-01_task-x_run-1_bold.nii.gz",
        "sub-01_task-x_run-2_bold.nii",
        "sub-01_task-x_run-3_bold.nii.gz",
        "sub-01_task-x_run-10_bold.nii",
        "sub-01_task-x_run-11_bold.nii.gz",
    ]
    sizes = [f.size for f in index.rows[0].cells["bold"]]
    assert sizes[1] == (nibabel_data / "functional.nii").stat().st_size and sum(sizes) == sizes[1]
    assert index.rows[0].nbytes == sizes[1]


def test_many_column_with_unknown_entities_on_some_files(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii",
            "sub-01/anat/sub-01_foo-2_T1w.nii",
            "sub-01/anat/sub-01_foo-10_T1w.nii",
        ],
    )
    index = build_index(root)
    # foo is no BIDS entity: those files are skipped (named in a warning), the column stays one file
    assert not index.columns[0].many
    assert cell_names(index, "t1w")["sub-01"] == ["sub-01_T1w.nii"]
    assert "sub-01/anat/sub-01_foo-10_T1w.nii" in index.warnings[0]
    assert "sub-01/anat/sub-01_foo-2_T1w.nii" in index.warnings[0]


# --- ambiguity -----------------------------------------------------------------------------------------


def test_single_file_column_with_two_runs_is_ambiguous(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii",
            "sub-02/anat/sub-02_run-2_T1w.nii",
            "sub-02/anat/sub-02_run-1_T1w.nii.gz",
        ],
    )
    with pytest.raises(AmbiguousColumnError) as info:
        build_index(root, rules(t1w={"datatype": "anat", "suffix": "T1w"}))
    msg = str(info.value)
    assert "'t1w'" in msg and "sub-02" in msg
    assert "sub-02/anat/sub-02_run-1_T1w.nii.gz" in msg and "sub-02/anat/sub-02_run-2_T1w.nii" in msg
    assert "'run'" in msg and "run: <value>" in msg and "many: true" in msg
    assert isinstance(info.value, BidsError)
    # following the hint resolves it
    picked = build_index(root, rules(t1w={"datatype": "anat", "suffix": "T1w", "run": [None, 1]}))
    assert cell_names(picked, "t1w") == {"sub-01": ["sub-01_T1w.nii"], "sub-02": ["sub-02_run-1_T1w.nii.gz"]}


def test_ambiguity_names_the_count_and_the_session_row(tmp_path):
    root = make_bids(
        tmp_path / "ds", [f"sub-01/ses-a/func/sub-01_ses-a_task-x_run-{r}_bold.nii" for r in (1, 2, 3)]
    )
    with pytest.raises(AmbiguousColumnError, match=r"row sub-01/ses-a matches 3 files.*\(and 1 more\)"):
        build_index(root, rules(bold={"suffix": "bold"}))


def test_ambiguity_between_nii_and_nii_gz_says_so(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(AmbiguousColumnError, match=r"differ only in extension \(\.nii vs \.nii\.gz\)"):
        build_index(root, rules(t1w={"suffix": "T1w"}))
    # the extension filter picks one
    index = build_index(root, rules(t1w={"suffix": "T1w", "extension": ".nii.gz"}))
    assert cell_names(index, "t1w") == {"sub-01": ["sub-01_T1w.nii.gz"]}


def test_ambiguity_by_an_unknown_entity(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_foo-a_T1w.nii"])
    # a file with an unknown entity is not BIDS: skipped with a warning, so it makes nothing ambiguous
    index = build_index(root, rules(t1w={"suffix": "T1w"}))
    assert cell_names(index, "t1w") == {"sub-01": ["sub-01_T1w.nii"]}
    assert "sub-01/anat/sub-01_foo-a_T1w.nii" in index.warnings[0]


def test_subject_rows_make_sessions_ambiguous(example):
    with pytest.raises(AmbiguousColumnError, match=r"differ in entity 'ses'"):
        build_index(example("synthetic"), rules(t1w={"suffix": "T1w"}), row="subject")


# --- not a BIDS folder ---------------------------------------------------------------------------------


def test_folder_without_dataset_description_is_not_bids(tmp_path):
    root = make_bids(tmp_path / "notbids", ["sub-01/anat/sub-01_T1w.nii"], description=None)
    with pytest.raises(BidsError, match="no dataset_description.json") as info:
        build_index(root)
    assert str(root) in str(info.value)
    assert "Point bids_root at the folder" in str(info.value)


def test_missing_folder_and_bad_description(tmp_path):
    with pytest.raises(BidsError, match="is not a folder"):
        build_index(tmp_path / "nope")
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / "dataset_description.json").write_text("{not json")
    with pytest.raises(BidsError, match="is not valid JSON"):
        build_index(root)
    (root / "dataset_description.json").write_text("[1, 2]")
    with pytest.raises(BidsError, match="must hold a JSON object, not list"):
        build_index(root)


def test_a_bids_folder_inside_a_subfolder_is_not_found_from_its_parent(example):
    parent = example("ds001").parent
    with pytest.raises(BidsError, match="no dataset_description.json"):
        build_index(parent)


def test_build_index_argument_errors(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    with pytest.raises(BidsError, match="row must be 'session' or 'subject'"):
        build_index(root, row="scan")
    with pytest.raises(BidsError, match=r"column names must be unique; repeated: \['a'\]"):
        build_index(root, [ColumnRule.from_mapping("a", {"suffix": "T1w"})] * 2)
    with pytest.raises(BidsError, match="holds no NIfTI"):
        build_index(root, [])


def test_build_index_accepts_a_string_path_and_resolves_it(tmp_path, monkeypatch):
    make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    monkeypatch.chdir(tmp_path)
    index = build_index("ds")
    assert index.root == (tmp_path / "ds").resolve()
    assert index.rows[0].cells["t1w"][0].path.is_file()


# --- derivatives, sourcedata, code ---------------------------------------------------------------------


def test_non_raw_top_level_folders_are_skipped(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
            "code/sub-01/anat/sub-01_T1w.nii.gz",
            "derivatives/pipe/sub-01/anat/sub-01_T1w.nii.gz",
            "stimuli/sub-01_T1w.nii.gz",
            "phenotype/sub-01_T1w.nii.gz",
            "sub-01_T1w.nii.gz",  # a stray file at the top
            "extra/sub-02/anat/sub-02_T1w.nii.gz",
        ],
    )
    index = build_index(root)
    assert all_cell_paths(index) == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert [r.subject_id for r in index.rows] == ["sub-01"]


# --- participants --------------------------------------------------------------------------------------

PARTICIPANTS_TSV = (
    "participant_id\tgroup\tage\tweight\tsite\tright_handed\n"
    "sub-01\t1\t30\t70.5\tA\ttrue\n"
    "sub-02\t2\tn/a\tn/a\tB\tFalse\n"
    "03\t1\t41\t80\tn/a\tn/a\n"  # participant_id without the sub- prefix
    "sub-05\t2\t52\t61.25\tC\ttrue\n"  # listed, but has no data
)
PARTICIPANTS_JSON = {
    "group": {"Description": "study arm", "Levels": {"1": "treatment", "2": "control"}},
    "age": {"Description": "age", "Units": "year"},
    "weight": {"Units": "kg"},
}


def _participants_tree(tmp_path: Path) -> Path:
    root = make_bids(
        tmp_path / "ds",
        {
            **{f"sub-0{i}/anat/sub-0{i}_T1w.nii": b"" for i in (1, 2, 3, 6)},
            "participants.tsv": PARTICIPANTS_TSV,
            "participants.json": json.dumps(PARTICIPANTS_JSON),
        },
    )
    return root


def test_participants_typed_by_participants_json(tmp_path):
    p = read_participants(_participants_tree(tmp_path))
    assert p.columns == {
        "group": "string",  # Levels: categories, even though the values are digits
        "age": "int64",
        "weight": "float64",
        "site": "string",
        "right_handed": "bool",
    }
    assert p.records["sub-01"] == {"group": "1", "age": 30, "weight": 70.5, "site": "A", "right_handed": True}
    assert p.records["sub-02"] == {
        "group": "2",
        "age": None,
        "weight": None,
        "site": "B",
        "right_handed": False,
    }
    assert p.records["sub-03"]["site"] is None and p.records["sub-03"]["weight"] == 80.0
    assert isinstance(p.records["sub-03"]["weight"], float)
    assert p.descriptions == {"group": "study arm", "age": "age"}


def test_participants_rows_and_warnings(tmp_path, caplog):
    root = _participants_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="bids_hub_dagster.bids.index"):
        index = build_index(root)
    assert [r.subject_id for r in index.rows] == ["sub-01", "sub-02", "sub-03", "sub-06"]
    assert "sub-05" not in index.subjects  # listed without data: no row
    assert index.rows[0].phenotype["age"] == 30
    assert index.rows[2].phenotype["group"] == "1"  # "03" matched to sub-03
    # sub-06 has data but is not in participants.tsv: a row with null phenotype and a warning
    assert index.rows[3].phenotype == {c: None for c in index.participants.columns}
    assert len(index.warnings) == 1
    assert "1 subject folder(s) missing from participants.tsv" in index.warnings[0]
    assert index.warnings[0].endswith("sub-06")
    assert any("sub-06" in r.getMessage() for r in caplog.records)


def test_participants_missing_subject_in_the_demo_tree(tmp_path):
    root = build_demo_bids(tmp_path / "demo")
    tsv = root / "participants.tsv"
    tsv.write_text("".join(ln for ln in tsv.read_text().splitlines(True) if not ln.startswith("sub-03")))
    index = build_index(root)
    sub03 = [r for r in index.rows if r.subject_id == "sub-03"]
    assert sub03 and sub03[0].phenotype == {"sex": None, "age": None, "group": None}
    assert any("sub-03" in w and "participants.tsv" in w for w in index.warnings)


def test_phenotype_selection_and_clashes(tmp_path):
    root = _participants_tree(tmp_path)
    index = build_index(root, phenotype=["age", "group"])
    assert list(index.participants.columns) == ["age", "group"]
    assert index.rows[0].phenotype == {"age": 30, "group": "1"}
    with pytest.raises(BidsError, match=r"\['height'\] are not in participants.tsv"):
        build_index(root, phenotype=["height"])
    with pytest.raises(BidsError, match=r"two published columns would be named 'age'"):
        build_index(root, rules(age={"suffix": "T1w"}))


def test_no_participants_tsv_gives_empty_phenotype_and_no_warning(tmp_path):
    index = build_index(make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"]))
    assert index.participants.columns == {}
    assert index.rows[0].phenotype == {}
    assert index.warnings == []


def test_participants_tsv_errors(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / "participants.tsv").write_text("subject\tage\nsub-01\t3\n")
    with pytest.raises(BidsError, match="no participant_id column"):
        build_index(root)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t3\t4\n")
    with pytest.raises(BidsError, match="line 2 has 3 fields, the header has 2"):
        build_index(root)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t3\nsub-01\t4\n")
    with pytest.raises(BidsError, match="lists sub-01 twice"):
        build_index(root)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t3\n")
    (root / "participants.json").write_text("{broken")
    with pytest.raises(BidsError, match="participants.json is not valid JSON"):
        build_index(root)


# --- sidecars (demo tree) -----------------------------------------------------------------------------


def test_demo_sidecar_inheritance_subject_level_overrides_top_level(demo_spec):
    index = build_index(demo_spec.bids_root, list(demo_spec.columns), phenotype=list(demo_spec.phenotype))
    bold = {f.relpath: index.sidecars[f.relpath] for r in index.rows for f in r.cells["bold"]}
    assert len(bold) == 6
    for rel, meta in bold.items():
        assert meta["TaskName"] == "rest"  # only in the top-level task-rest_bold.json
        expected_tr = 2.5 if rel.startswith("sub-01/") else 2.0  # sub-01 has its own sidecar
        assert meta["RepetitionTime"] == expected_tr, rel
    t1w = index.rows[0].cells["t1w"][0]
    assert index.sidecars[t1w.relpath] is None  # no T1w sidecar anywhere: published as null


def test_demo_spec_index(demo_spec):
    index = build_index(demo_spec.bids_root, list(demo_spec.columns), phenotype=list(demo_spec.phenotype))
    assert [r.label for r in index.rows] == ["sub-01/ses-1", "sub-01/ses-2", "sub-02/ses-1", "sub-03/ses-1"]
    assert cell_names(index, "bold")["sub-01/ses-2"] == [
        "sub-01_ses-2_task-rest_run-1_bold.nii",
        "sub-01_ses-2_task-rest_run-2_bold.nii",
        "sub-01_ses-2_task-rest_run-10_bold.nii.gz",
    ]
    assert cell_names(index, "bold")["sub-02/ses-1"] == []
    assert index.participants.columns == {"sex": "string", "age": "float64", "group": "string"}
    assert index.rows[2].phenotype == {"sex": "M", "age": None, "group": "2"}
    assert "sub-04" in index.participants.records and "sub-04" not in index.subjects
    assert index.warnings == []
    indexed = {f.relpath for r in index.rows for f in r.files}
    assert indexed == set(DEMO_FILES)
    assert index.bytes_per_column()["t1w"] == sum(
        (demo_spec.bids_root / p).stat().st_size
        for p in DEMO_FILES
        if p.endswith(("_T1w.nii", "_T1w.nii.gz"))
    )


def test_demo_scope_selects_the_derivatives_folder(demo_spec):
    index = build_index(demo_spec.bids_root, list(demo_spec.columns))
    lesion = cell_names(index, "lesion")
    assert lesion == {
        "sub-01/ses-1": ["sub-01_ses-1_desc-lesion_mask.nii.gz"],
        "sub-01/ses-2": [],
        "sub-02/ses-1": [],
        "sub-03/ses-1": ["sub-03_ses-1_desc-lesion_mask.nii.gz"],
    }
    f = index.rows[0].cells["lesion"][0]
    assert f.scope == "derivatives/lesion_masks"
    assert f.relpath.startswith("derivatives/lesion_masks/sub-01/")
    assert f.datatype == "anat" and f.suffix == "mask"
    # inference never looks into derivatives
    assert "mask" not in {c.suffix for c in build_index(demo_spec.bids_root).columns}


def test_scope_has_its_own_bidsignore(demo_spec):
    root = demo_spec.bids_root
    (root / "derivatives/lesion_masks/.bidsignore").write_text("sub-03/\n")
    index = build_index(root, list(demo_spec.columns))
    assert cell_names(index, "lesion")["sub-03/ses-1"] == []
    assert cell_names(index, "lesion")["sub-01/ses-1"] == ["sub-01_ses-1_desc-lesion_mask.nii.gz"]
    assert cell_names(index, "t1w")["sub-03/ses-1"] == ["sub-03_ses-1_T1w.nii"]  # raw tree untouched


def test_scope_that_does_not_exist(demo_spec):
    with pytest.raises(BidsError, match=r"scope 'derivatives/nope' does not exist"):
        build_index(demo_spec.bids_root, rules(x={"scope": "derivatives/nope", "suffix": "mask"}))


def test_raw_rule_does_not_match_derivative_files_and_vice_versa(demo_spec):
    index = build_index(
        demo_spec.bids_root,
        rules(
            t1w={"suffix": "T1w"},
            raw_mask={"suffix": "mask"},
            deriv_t1w={"scope": "derivatives/lesion_masks", "suffix": "T1w"},
        ),
    )
    assert index.files_per_column() == {"t1w": 4, "raw_mask": 0, "deriv_t1w": 0}


# --- entity filters in column rules --------------------------------------------------------------------


def test_run_filter_int_and_zero_padded_string_are_the_same(example):
    root = example("ds000117")
    results = []
    for value in (1, "1", "01", "001"):
        index = build_index(root, rules(bold={"datatype": "func", "suffix": "bold", "run": value}))
        results.append(cell_names(index, "bold"))
    assert results[0]["sub-01/ses-mri"] == ["sub-01_ses-mri_task-facerecognition_run-01_bold.nii.gz"]
    assert all(r == results[0] for r in results)
    assert len(results[0]) == 16


def test_run_filter_list_and_absent(example):
    root = example("7t_trt")
    index = build_index(
        root,
        rules(
            full={"suffix": "bold", "acq": "fullbrain", "many": True},
            pre={"suffix": "bold", "acq": "prefrontal"},
            norun={"suffix": "bold", "run": None},
            both={"suffix": "bold", "acq": ["fullbrain", "prefrontal"], "many": True},
            run2={"suffix": "bold", "run": [2]},
            fmap_run1={"datatype": "fmap", "suffix": "phasediff", "run": 1},
        ),
    )
    row = {
        c: cell_names(index, c)["sub-01/ses-1"] for c in ("full", "pre", "norun", "both", "run2", "fmap_run1")
    }
    assert row["full"] == [
        "sub-01_ses-1_task-rest_acq-fullbrain_run-1_bold.nii.gz",
        "sub-01_ses-1_task-rest_acq-fullbrain_run-2_bold.nii.gz",
    ]
    assert row["pre"] == ["sub-01_ses-1_task-rest_acq-prefrontal_bold.nii.gz"]
    assert row["norun"] == row["pre"]  # run: null → files without a run entity
    assert row["both"] == row["full"] + row["pre"]
    assert row["run2"] == ["sub-01_ses-1_task-rest_acq-fullbrain_run-2_bold.nii.gz"]
    assert row["fmap_run1"] == ["sub-01_ses-1_run-1_phasediff.nii.gz"]
    assert index.files_per_column() == {
        "full": 88,
        "pre": 44,
        "norun": 44,
        "both": 132,
        "run2": 44,
        "fmap_run1": 44,
    }
    # sidecars follow the acq entity of the top-level sidecars
    tr = {
        f.name.entities["acq"]: index.sidecars[f.relpath]["RepetitionTime"]
        for f in index.rows[0].cells["both"]
    }
    assert tr == {"fullbrain": 3.0, "prefrontal": 4.0}


def test_desc_filter_and_long_entity_names(example):
    root = example("ds000001-fmriprep")
    index = build_index(
        root,
        rules(
            brain={"datatype": "anat", "suffix": "mask", "desc": "brain", "space": None},
            brain_mni={
                "datatype": "anat",
                "suffix": "mask",
                "description": "brain",
                "space": "MNI152NLin2009cAsym",
            },
            preproc={"datatype": "func", "suffix": "bold", "desc": "preproc", "many": True},
        ),
    )
    assert cell_names(index, "brain")["sub-10"] == ["sub-10_desc-brain_mask.nii.gz"]
    assert cell_names(index, "brain_mni")["sub-10"] == [
        "sub-10_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz"
    ]
    assert [parse_filename(n).entities["run"] for n in cell_names(index, "preproc")["sub-10"]] == [
        "1",
        "2",
        "3",
    ]
    assert index.columns[1].entities == {"desc": ("brain",), "space": ("MNI152NLin2009cAsym",)}


def test_filter_on_a_label_entity_is_literal(tmp_path):
    root = make_bids(
        tmp_path / "ds", ["sub-01/anat/sub-01_acq-01_T1w.nii", "sub-02/anat/sub-02_acq-1_T1w.nii"]
    )
    index = build_index(root, rules(t1w={"suffix": "T1w", "acq": 1}))
    assert cell_names(index, "t1w") == {"sub-02": ["sub-02_acq-1_T1w.nii"]}


def test_column_rule_errors():
    with pytest.raises(BidsError, match=r"'colour' is not a BIDS entity") as info:
        ColumnRule.from_mapping("t1w", {"suffix": "T1w", "colour": "red"})
    assert "acq" in str(info.value) and "run" in str(info.value)
    with pytest.raises(BidsError, match=r"datatype 'anatomy' is not a BIDS datatype"):
        ColumnRule.from_mapping("t1w", {"datatype": "anatomy"})
    with pytest.raises(BidsError, match="must be an identifier"):
        ColumnRule.from_mapping("t1w-bad", {"suffix": "T1w"})
    with pytest.raises(BidsError, match="must be a mapping"):
        ColumnRule.from_mapping("t1w", "T1w")  # type: ignore[arg-type]
    with pytest.raises(BidsError, match="many must be true or false"):
        ColumnRule.from_mapping("t1w", {"many": "yes"})
    with pytest.raises(BidsError, match="must be a folder inside the BIDS root"):
        ColumnRule.from_mapping("t1w", {"scope": "../elsewhere"})
    with pytest.raises(BidsError, match="must be a folder inside the BIDS root"):
        ColumnRule.from_mapping("t1w", {"scope": "derivatives/../../x"})


def test_column_rule_mapping_round_trip():
    raw = {
        "scope": "derivatives/x",
        "datatype": None,
        "suffix": "T1w",
        "acq": ["a", None],
        "run": 1,
        "extension": ".nii.gz",
        "many": True,
    }
    rule = ColumnRule.from_mapping("c", raw)
    assert rule.datatype == ABSENT
    assert rule.entities == {"acq": ("a", None), "run": ("1",)}
    assert rule.to_mapping() == {**raw, "acq": ["a", None], "run": "1"}
    assert ColumnRule.from_mapping("c", rule.to_mapping()) == rule
    assert ColumnRule.from_mapping("c", {"scope": "/derivatives/x/"}).scope == "derivatives/x"


# --- hostile input ---------------------------------------------------------------------------------------


def test_broken_symlink_is_indexed_and_named_in_a_warning(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / "sub-02/anat").mkdir(parents=True)
    os.symlink(tmp_path / "annex/missing.nii.gz", root / "sub-02/anat/sub-02_T1w.nii.gz")
    index = build_index(root)
    f = index.rows[1].cells["t1w"][0]
    assert f.broken_link and f.size == 0
    assert not index.rows[0].cells["t1w"][0].broken_link
    assert any("broken symlink" in w and "sub-02/anat/sub-02_T1w.nii.gz" in w for w in index.warnings)


def test_file_named_for_another_subject_is_an_error_not_a_row_of_that_subject(tmp_path):
    # Regression: sub-02/anat/sub-01_T1w.nii used to land silently in sub-01's row.
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-02/anat/sub-01_T1w.nii"])
    with pytest.raises(
        BidsError, match=r"sub-02/anat/sub-01_T1w.nii: its name says sub-01 but it sits in the sub-02"
    ):
        build_index(root)


def test_file_named_for_another_session_is_an_error(tmp_path):
    root = make_bids(
        tmp_path / "ds", ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii", "sub-01/ses-2/anat/sub-01_ses-1_T1w.nii"]
    )
    with pytest.raises(
        BidsError, match=r"sub-01/ses-2/anat/sub-01_ses-1_T1w.nii: its name says ses-1 .* ses-2 folder"
    ):
        build_index(root)


def test_folder_check_applies_inside_a_scope(demo_spec):
    root = demo_spec.bids_root
    bad = root / "derivatives/lesion_masks/sub-03/ses-1/anat/sub-02_ses-1_desc-lesion_mask.nii.gz"
    bad.write_bytes(b"")
    build_index(root)  # the raw tree alone is fine
    with pytest.raises(BidsError, match="its name says sub-02 but it sits in the sub-03 folder"):
        build_index(root, list(demo_spec.columns))


def test_unreadable_sidecar_is_a_warning_not_a_crash(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        {"sub-01/anat/sub-01_T1w.nii": b"", "sub-01/anat/sub-01_T1w.json": "{oops", "T1w.json": '{"A": 1}'},
    )
    index = build_index(root)
    assert index.sidecars["sub-01/anat/sub-01_T1w.nii"] == {"A": 1}
    assert any("sub-01/anat/sub-01_T1w.json" in w and "not readable" in w for w in index.warnings)


def test_example_copy_can_be_edited_after_making_it_writable(bids_example):
    # The examples are test data, never written; a copy edited here must not touch the original.
    root = bids_example("ds001")
    make_writable(root)
    extra = root / "sub-01/anat/sub-01_run-2_T1w.nii.gz"
    extra.write_bytes(b"")
    index = build_index(root)
    assert {c.name: c.many for c in index.columns}["t1w"] is True
    assert not (BIDS_EXAMPLES / "ds001/sub-01/anat/sub-01_run-2_T1w.nii.gz").exists()


def test_directory_symlink_loop_is_walked_once(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    os.symlink("..", root / "sub-01" / "anat" / "loop")
    index = build_index(root)
    assert all_cell_paths(index) == ["sub-01/anat/sub-01_T1w.nii.gz"]


def test_a_filter_takes_one_suffix(tmp_path):
    with pytest.raises(BidsError, match=r"suffix takes one value.*one column per suffix"):
        ColumnRule.from_mapping("anat", {"suffix": ["T1w", "T2w"]})


def test_a_column_matching_nothing_is_a_warning(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    index = build_index(root, rules(t1w={"suffix": "T1w"}, flair={"suffix": "FLAIR"}))
    assert any("column 'flair' matches no file" in w for w in index.warnings)
    assert [r.subject_id for r in index.rows] == ["sub-01"]


def test_ambiguity_reports_the_first_row_in_row_order(tmp_path):
    files = [
        f"sub-0{s}/ses-{t}/anat/sub-0{s}_ses-{t}_run-{r}_T1w.nii.gz"
        for s in (2, 1)
        for t in (2, 1)
        for r in (1, 2)
    ]
    root = make_bids(tmp_path / "ds", files)
    with pytest.raises(AmbiguousColumnError, match=r"row sub-01/ses-1 matches 2 files"):
        build_index(root, rules(t1w={"suffix": "T1w"}))


def test_a_file_without_ses_in_its_name_in_a_session_folder_is_not_bids(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        [
            "sub-01/ses-1/anat/sub-01_T1w.nii",
            "sub-01/ses-2/anat/sub-01_T1w.nii",
            "sub-02/anat/sub-02_T1w.nii",
        ],
    )
    index = build_index(root)
    # BIDS names carry the session of their folder: without it, the files are skipped and named
    assert [(r.subject_id, r.session_id) for r in index.rows] == [("sub-02", None)]
    assert "sub-01/ses-1/anat/sub-01_T1w.nii" in index.warnings[0]


@pytest.mark.parametrize("name", ["subject_id", "session_id", "_bids_files"])
def test_reserved_column_names_are_refused(tmp_path, name):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(BidsError, match="reserved"):
        build_index(root, rules(**{name: {"suffix": "T1w"}}))


def test_columns_that_match_nothing_anywhere_are_an_error(tmp_path):
    root = make_bids(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(BidsError, match=r"no row: none of the columns \(flair\) matches a file"):
        build_index(root, rules(flair={"suffix": "FLAIR"}))


def test_participant_columns_keep_ids_and_refuse_python_only_numbers(tmp_path):
    root = make_bids(
        tmp_path / "ds",
        {
            "sub-01/anat/sub-01_T1w.nii.gz": b"",
            "sub-02/anat/sub-02_T1w.nii.gz": b"",
            "participants.tsv": (
                "participant_id\tcode\tcount\tbig\tage\tscore\n"
                "sub-01\t007\t1_000\t123456789012345678901\t89+\t1.5\n"
                "sub-02\t010\t2\t1\t40\tn/a\n"
            ),
            "participants.json": json.dumps(
                {"code": {"Description": "site code"}, "age": {"Units": "years"}}
            ),
        },
    )
    index = build_index(root)
    types = index.participants.columns
    assert types == {
        "code": "string",
        "count": "string",
        "big": "string",
        "age": "string",
        "score": "float64",
    }
    assert index.rows[0].phenotype["code"] == "007"
    assert index.rows[1].phenotype["score"] is None
    assert any("column 'age' has Units (years)" in w and "'89+'" in w for w in index.warnings)
