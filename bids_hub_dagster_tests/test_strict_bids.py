"""What is really BIDS: zero-config indexing keeps only names the BIDS schema allows.

Real trees with real NIfTI images: stray files and folders are skipped with a reason (never a
column), bad labels and twice-saved images are errors naming the files, symlinks leading out of
the dataset are refused unless the spec allows them, and the vendored bids-examples skip nothing
they should not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_hub_dagster.bids import BidsError, ColumnRule, build_index
from bids_hub_dagster.bids.layout import ScanResult, scan, walk
from bids_hub_dagster.bids.validation import NameValidator, label_problem, shape
from bids_hub_dagster_tests.conftest import BIDS_EXAMPLE_NAMES, example_source

RAW = {"Name": "strict", "BIDSVersion": "1.10.0", "DatasetType": "raw"}
DERIVED = {
    "Name": "masks",
    "BIDSVersion": "1.10.0",
    "DatasetType": "derivative",
    "GeneratedBy": [{"Name": "m"}],
}


def nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).to_filename(path)
    return path


def tree(root: Path, images: list[str], texts: dict[str, str] | None = None, description=RAW) -> Path:
    """A BIDS folder at ``root``: real images at ``images``, text files at ``texts``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(description))
    for rel in images:
        if rel.endswith((".nii", ".nii.gz")):
            nifti(root / rel)
        else:  # not an image name: the bytes are never read
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"")
    for rel, text in (texts or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def indexed(index) -> list[str]:
    return sorted(f.relpath for r in index.rows for f in r.files)


def skipped_paths(result: ScanResult) -> list[str]:
    return [path for path, _ in result.skipped]


# --- stray files and folders are skipped, never columns ----------------------------------------------


def test_a_stray_file_is_skipped_with_a_warning_and_makes_no_column(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/notes_backup.nii"])
    result = scan(root)
    assert [f.relpath for f in result.files] == ["sub-01/anat/sub-01_T1w.nii"]
    assert skipped_paths(result) == ["sub-01/anat/notes_backup.nii"]
    assert "not a BIDS name" in result.skipped[0][1]
    (warning,) = result.warnings()
    assert "1 file(s) skipped" in warning and "sub-01/anat/notes_backup.nii (not a BIDS name" in warning

    index = build_index(root)
    assert [c.name for c in index.columns] == ["t1w"]
    assert indexed(index) == ["sub-01/anat/sub-01_T1w.nii"]
    assert any("sub-01/anat/notes_backup.nii" in w and "skipped" in w for w in index.warnings)


def test_a_folder_named_like_an_image_is_never_read(tmp_path):
    root = tree(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii",
            "sub-02/anat/sub-02_T1w.nii/inner.nii",
            "sub-02/anat/sub-02_T2w.nii.gz/x",
        ],
    )
    result = scan(root)
    assert [f.relpath for f in result.files] == ["sub-01/anat/sub-01_T1w.nii"]
    assert skipped_paths(result) == ["sub-02/anat/sub-02_T1w.nii/", "sub-02/anat/sub-02_T2w.nii.gz/"]
    assert all("a folder where BIDS expects a file" in reason for _, reason in result.skipped)
    index = build_index(root)
    assert [c.name for c in index.columns] == ["t1w"]
    assert [r.subject_id for r in index.rows] == ["sub-01"]
    assert not any("inner" in p for p in indexed(index))


def test_an_unknown_entity_is_skipped_and_does_not_make_a_column_many(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_foo-bar_T1w.nii"])
    result = scan(root)
    assert result.skipped == [("sub-01/anat/sub-01_foo-bar_T1w.nii", "'foo' is not a BIDS entity")]
    index = build_index(root)
    assert [(c.name, c.many) for c in index.columns] == [("t1w", False)]
    assert indexed(index) == ["sub-01/anat/sub-01_T1w.nii"]


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("sub-01/anat/T1w.nii", "its name lacks the sub-01 of its folder"),
        ("sub-01/ses-1/anat/sub-01_T1w.nii", "its name lacks the ses-1 of its folder"),
        ("sub-01/sub-01_T1w.nii", "no BIDS rule allows suffix 'T1w'"),  # no datatype folder
        ("sub-01/func/sub-01_T1w.nii", "no BIDS rule allows suffix 'T1w'"),  # wrong datatype folder
        ("sub-01/anat/sub-01_desc-brain_mask.nii.gz", "no BIDS rule allows suffix 'mask'"),  # derivative-only
        ("sub-01/anat/sub-01_T1w.nii.bak", "'.nii.bak' is not a BIDS extension"),
        ("sub-01/anat/sub-01_Tiw.nii", "no BIDS rule allows suffix 'Tiw'"),
    ],
)
def test_names_no_raw_rule_allows_are_skipped_with_their_reason(tmp_path, rel, reason):
    root = tree(tmp_path / "ds", ["sub-02/anat/sub-02_T1w.nii", rel])
    result = scan(root)
    assert [f.relpath for f in result.files] == ["sub-02/anat/sub-02_T1w.nii"]
    assert len(result.skipped) == 1 and result.skipped[0][0] == rel
    assert reason in result.skipped[0][1]


def test_invalid_sidecars_and_tables_are_skipped_too(tmp_path):
    root = tree(
        tmp_path / "ds",
        ["sub-01/anat/sub-01_T1w.nii"],
        {
            "sub-01/anat/sub-01_T1w.json": "{}",
            "sub-01/anat/sub-01_foo-1_T1w.json": "{}",
            "sub-01/anat/notes.tsv": "a\n",
            "T1w.json": "{}",
            "foo-bar_T1w.json": "{}",  # top level: validated as well
            "README.txt": "not read",  # top-level files other than json/tsv/bval/bvec are not looked at
        },
    )
    result = scan(root)
    assert sorted(result.jsons) == ["T1w.json", "sub-01/anat/sub-01_T1w.json"]
    assert skipped_paths(result) == [
        "foo-bar_T1w.json",
        "sub-01/anat/notes.tsv",
        "sub-01/anat/sub-01_foo-1_T1w.json",
    ]


def test_bidsignore_and_hidden_entries_are_neither_indexed_nor_warned_about(tmp_path):
    root = tree(
        tmp_path / "ds",
        ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/notes_backup.nii", "sub-01/anat/.hidden.nii"],
        {
            "sub-01/anat/extra/x.txt": "x",
            "sub-03 copy/anat/y.txt": "y",
            "sub-01/anat/bad_acq-a b_T1w.json": "{}",
        },
    )
    (root / ".bidsignore").write_text("notes_*\nextra/\nsub-03 copy/\n*_acq-a b_*\n")
    result = scan(root)
    assert [f.relpath for f in result.files] == ["sub-01/anat/sub-01_T1w.nii"]
    assert result.skipped == []
    assert build_index(root).warnings == []


# --- errors: bad labels, an image saved twice ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("sub-01/anat/sub-01_acq-fast scan_T1w.nii", "the acq label 'fast scan' is not a BIDS label"),
        ("sub-01/anat/sub-01_acq-fast-scan_T1w.nii", "the acq label 'fast-scan' is not a BIDS label"),
        ("sub-01/anat/sub-01_acq-_T1w.nii", "the acq label '' is not a BIDS label"),
        ("sub-01/func/sub-01_task-rest_run-1a_bold.nii", "the run index '1a' is not a number"),
        ("sub-01/anat/sub-01 copy_T1w.nii", "the sub label '01 copy' is not a BIDS label"),
        ("sub-01/anat/sub-01_acq-fast scan_T1w.json", "the acq label 'fast scan'"),  # a sidecar too
    ],
)
def test_a_label_that_is_not_a_bids_label_is_an_error_naming_the_file(tmp_path, rel, message):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"")
    with pytest.raises(BidsError, match="Rename the file") as info:
        build_index(root)
    assert str(info.value).startswith(f"{rel}: {message}")


@pytest.mark.parametrize("folder", ["sub-03 copy", "sub-03/ses-1 (old)", "sub-0_3"])
def test_a_subject_or_session_folder_with_a_bad_label_is_an_error(tmp_path, folder):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", f"{folder}/anat/sub-03_T1w.nii"])
    with pytest.raises(BidsError, match="is not a BIDS label") as info:
        build_index(root)
    assert f"folder {folder}:" in str(info.value) and "Rename the folder" in str(info.value)
    empty = tree(tmp_path / "ds2", ["sub-01/anat/sub-01_T1w.nii"])
    (empty / "sub-04 copy").mkdir()  # an empty one too, and walk() alone says so
    with pytest.raises(BidsError, match="folder sub-04 copy: the sub label '04 copy'"):
        list(walk(empty))


def test_a_label_error_in_a_file_name_outside_the_rules_is_still_an_error(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_acq-a b_notes.txt"])
    with pytest.raises(BidsError, match="sub-01/anat/sub-01_acq-a b_notes.txt: the acq label 'a b'"):
        scan(root)


def test_one_image_saved_as_nii_and_nii_gz_is_an_error_naming_both(tmp_path):
    root = tree(
        tmp_path / "ds",
        ["sub-01/anat/sub-01_T1w.nii", "sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii"],
    )
    with pytest.raises(BidsError) as info:
        build_index(root)
    message = str(info.value)
    assert "sub-01/anat/sub-01_T1w.nii and sub-01/anat/sub-01_T1w.nii.gz" in message
    assert "remove one of them" in message
    # a spec picks one with the extension filter, as before
    index = build_index(root, [ColumnRule.from_mapping("t1w", {"suffix": "T1w", "extension": ".nii.gz"})])
    assert indexed(index) == ["sub-01/anat/sub-01_T1w.nii.gz"]


def test_several_images_saved_twice_are_counted(tmp_path):
    root = tree(
        tmp_path / "ds",
        [f"sub-0{i}/anat/sub-0{i}_T1w.nii{ext}" for i in (1, 2, 3) for ext in ("", ".gz")],
    )
    with pytest.raises(
        BidsError, match=r"sub-01/anat/sub-01_T1w.nii and .*\(2 more image\(s\) are saved twice"
    ):
        build_index(root)


def test_a_file_named_for_another_subject_is_still_an_error(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-02/anat/sub-01_T1w.nii"])
    with pytest.raises(BidsError, match="its name says sub-01 but it sits in the sub-02 folder"):
        scan(root)


# --- symlinks ------------------------------------------------------------------------------------------


def _outside(tmp_path: Path) -> Path:
    """Another patient's data, outside the dataset."""
    other = tmp_path / "other_patient"
    nifti(other / "anat" / "sub-02_T1w.nii")
    nifti(other / "func" / "sub-02_task-x_bold.nii")
    nifti(tmp_path / "elsewhere" / "anat" / "sub-04_T1w.nii")
    return other


def test_symlinks_leading_outside_the_dataset_are_refused_with_a_list(tmp_path):
    other = _outside(tmp_path)
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / "sub-02/anat").mkdir(parents=True)
    os.symlink(other / "anat" / "sub-02_T1w.nii", root / "sub-02/anat/sub-02_T1w.nii")  # a file
    os.symlink(other / "func", root / "sub-02" / "func")  # a datatype folder
    os.symlink(tmp_path / "elsewhere", root / "sub-04")  # a subject folder
    with pytest.raises(BidsError) as info:
        build_index(root)
    message = str(info.value)
    assert message.startswith("3 symlink(s) lead outside the BIDS folder")
    for rel in ("sub-02/anat/sub-02_T1w.nii ->", "sub-02/func/ ->", "sub-04/ ->"):
        assert rel in message
    assert str(other.resolve() / "func") in message and "follow_external_symlinks: true" in message
    with pytest.raises(BidsError, match="3 symlink"):
        list(walk(root))

    # the spec allows them: indexed, their names checked as usual
    result = scan(root, follow_external_symlinks=True)
    assert sorted(f.relpath for f in result.files) == [
        "sub-01/anat/sub-01_T1w.nii",
        "sub-02/anat/sub-02_T1w.nii",
        "sub-02/func/sub-02_task-x_bold.nii",
        "sub-04/anat/sub-04_T1w.nii",
    ]
    assert result.skipped == []
    assert len(list(walk(root, follow_external_symlinks=True))) == 4


def test_a_refusal_lists_twenty_links_and_counts_the_rest(tmp_path):
    other = _outside(tmp_path)
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    func = root / "sub-01/func"
    func.mkdir()
    for r in range(1, 26):
        os.symlink(other / "func" / "sub-02_task-x_bold.nii", func / f"sub-01_task-x_run-{r}_bold.nii")
    with pytest.raises(BidsError, match=r"^25 symlink\(s\) lead outside.* …and 5 more\.") as info:
        scan(root)
    assert str(info.value).count(" -> ") == 20


def test_external_sidecar_and_scope_links_are_refused_too(tmp_path):
    other = _outside(tmp_path)
    (other / "T1w.json").write_text("{}")
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    os.symlink(other / "T1w.json", root / "T1w.json")
    (root / "derivatives").mkdir()
    os.symlink(other, root / "derivatives" / "elsewhere")
    with pytest.raises(BidsError) as info:
        scan(root, ["", "derivatives/elsewhere"])
    assert "derivatives/elsewhere/ ->" in str(info.value) and "T1w.json ->" in str(info.value)
    with pytest.raises(BidsError, match=r"^1 symlink\(s\) .*: T1w.json -> "):
        scan(root)  # refused without the scope too
    # never followed, so never refused: links the .bidsignore drops, top-level files scan does not read
    (root / ".bidsignore").write_text("T1w.json\n")
    os.symlink(other / "anat" / "sub-02_T1w.nii", root / "sub-02_T1w.nii")
    assert scan(root).jsons == []


def test_symlinks_inside_the_dataset_and_git_annex_links_are_fine(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    key = "SHA256E-s352--0123abcd.nii.gz"
    nifti(root / ".git/annex/objects/Qx/8v" / key / key)
    (root / "sub-02/anat").mkdir(parents=True)
    os.symlink(f"../../.git/annex/objects/Qx/8v/{key}/{key}", root / "sub-02/anat/sub-02_T1w.nii.gz")
    # content not fetched: broken, flagged and warned about elsewhere, never refused
    (root / "sub-03/anat").mkdir(parents=True)
    os.symlink(
        "../../.git/annex/objects/Zz/9w/SHA256E-s1--ff.nii/SHA256E-s1--ff.nii",
        root / "sub-03/anat/sub-03_T1w.nii",
    )
    index = build_index(root)
    files = {f.relpath: f for r in index.rows for f in r.files}
    assert sorted(files) == [
        "sub-01/anat/sub-01_T1w.nii",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii",
    ]
    assert (
        files["sub-02/anat/sub-02_T1w.nii.gz"].size > 0
        and not files["sub-02/anat/sub-02_T1w.nii.gz"].broken_link
    )
    assert files["sub-03/anat/sub-03_T1w.nii"].broken_link
    assert any("broken symlink" in w for w in index.warnings)


def test_a_symlinked_folder_inside_the_dataset_is_walked(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii"])
    os.symlink("ses-1", root / "sub-01" / "ses-2")  # inside: fine, its names are checked as usual
    result = scan(root)
    assert [f.relpath for f in result.files] == ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii"]
    assert skipped_paths(result) == []  # the same folder is walked once (by inode)


# --- derivatives ---------------------------------------------------------------------------------------


def test_a_derivatives_scope_indexes_lesion_masks(tmp_path):
    root = tree(
        tmp_path / "ds",
        [
            "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii",
            "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii",
            "derivatives/lesion_masks/sub-01/ses-1/anat/sub-01_ses-1_desc-lesion_mask.nii.gz",
            "derivatives/lesion_masks/sub-02/ses-1/anat/desc-lesion_mask.nii.gz",  # tolerated: sub from folder
            "derivatives/lesion_masks/sub-02/ses-1/anat/sub-02_ses-1_desc-lesion_foo-1_mask.nii.gz",
            "derivatives/lesion_masks/sub-02/ses-1/anat/sub-02_ses-1_space-T1w_desc-lesion_probmask.nii.gz",
        ],
    )
    (root / "derivatives/lesion_masks/dataset_description.json").write_text(json.dumps(DERIVED))
    scope = "derivatives/lesion_masks"
    index = build_index(
        root,
        [
            ColumnRule.from_mapping("t1w", {"suffix": "T1w"}),
            ColumnRule.from_mapping("lesion", {"scope": scope, "suffix": "mask", "desc": "lesion"}),
            ColumnRule.from_mapping("prob", {"scope": scope, "suffix": "probmask"}),
        ],
    )
    lesion = {r.label: [f.relpath for f in r.cells["lesion"]] for r in index.rows}
    assert lesion == {
        "sub-01/ses-1": [f"{scope}/sub-01/ses-1/anat/sub-01_ses-1_desc-lesion_mask.nii.gz"],
        "sub-02/ses-1": [f"{scope}/sub-02/ses-1/anat/desc-lesion_mask.nii.gz"],
    }
    assert index.rows[1].cells["lesion"][0].subject == "02"
    # a pipeline's own suffix is tolerated in derivatives (known entities, alphanumeric suffix)
    assert [f.filename for f in index.rows[1].cells["prob"]] == [
        "sub-02_ses-1_space-T1w_desc-lesion_probmask.nii.gz"
    ]
    result = scan(root, ["", scope])
    assert result.skipped == [
        (
            f"{scope}/sub-02/ses-1/anat/sub-02_ses-1_desc-lesion_foo-1_mask.nii.gz",
            "'foo' is not a BIDS entity",
        )
    ]


def test_the_demo_layout_is_valid(demo_spec):
    index = build_index(demo_spec.bids_root, list(demo_spec.columns))
    assert index.warnings == []
    scopes = ["", "derivatives/lesion_masks"]
    result = scan(demo_spec.bids_root, scopes)
    assert result.skipped == []
    assert {f.relpath for f in result.files if f.scope} == {
        "derivatives/lesion_masks/sub-01/ses-1/anat/sub-01_ses-1_desc-lesion_mask.nii.gz",
        "derivatives/lesion_masks/sub-03/ses-1/anat/sub-03_ses-1_desc-lesion_mask.nii.gz",
    }


def test_a_derivative_dataset_indexed_as_the_raw_tree_uses_the_derivative_rules(tmp_path):
    images = ["sub-01/anat/sub-01_desc-brain_mask.nii.gz", "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"]
    assert len(scan(tree(tmp_path / "raw", images)).skipped) == 2
    result = scan(tree(tmp_path / "derived", images, description=DERIVED))
    assert result.skipped == [] and len(result.files) == 2


# --- ScanResult ----------------------------------------------------------------------------------------


def test_scan_result_unpacks_like_the_old_tuple_and_collects_tables(tmp_path):
    root = tree(
        tmp_path / "ds",
        ["sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz", "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz"],
        {
            "participants.tsv": "participant_id\nsub-01\n",
            "task-rest_bold.json": "{}",
            "dwi.bval": "0 1000\n",
            "sub-01/sub-01_sessions.tsv": "session_id\nses-1\n",
            "sub-01/ses-1/sub-01_ses-1_scans.tsv": "filename\n",
            "sub-01/ses-1/func/sub-01_ses-1_task-rest_events.tsv": "onset\tduration\n",
            "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval": "0 1000\n",
            "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec": "0 1\n0 0\n0 0\n",
            "sub-01/ses-1/func/sub-01_ses-1_task-rest_physio.tsv.gz": "",
            "derivatives/x/dataset_description.json": json.dumps(DERIVED),
            "derivatives/x/desc-aseg_dseg.tsv": "index\tname\n",
            "derivatives/x/sub-01/ses-1/anat/sub-01_ses-1_desc-aseg_dseg.tsv": "index\tname\n",
        },
    )
    files, jsons = scan(root)
    assert len(files) == 2 and jsons == ["task-rest_bold.json"]
    result = scan(root, ["", "derivatives/x"])
    assert isinstance(result, ScanResult)
    assert sorted(result.other) == [
        "derivatives/x/desc-aseg_dseg.tsv",
        "derivatives/x/sub-01/ses-1/anat/sub-01_ses-1_desc-aseg_dseg.tsv",
        "dwi.bval",
        "participants.tsv",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval",
        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec",
        "sub-01/ses-1/func/sub-01_ses-1_task-rest_events.tsv",
        "sub-01/ses-1/sub-01_ses-1_scans.tsv",
        "sub-01/sub-01_sessions.tsv",
    ]
    assert result.skipped == [] and result.warnings() == []


# --- the validator itself --------------------------------------------------------------------------------


def test_shapes_keep_what_the_rules_tell_apart():
    assert shape("sub-07/ses-a/func/sub-07_ses-a_task-x_run-12_bold.nii.gz") == (
        "sub-S/ses-T/func/sub-S_ses-T_task-x_run-12_bold.nii.gz"
    )
    assert shape("sub-07/micr/sub-07_sample-A_BF.ome.zarr/") == "sub-S/micr/sub-S_sample-A_BF.ome.zarr/"
    assert shape("task-rest_bold.json") == "task-rest_bold.json"
    assert shape("sub-07/sub-07_sessions.tsv") == "sub-S/sub-S_sessions.tsv"
    assert shape("sub-07/ses-1/sub-07_ses-1_scans.tsv") == "sub-S/ses-T/sub-S_ses-T_scans.tsv"
    # a name naming another subject or session keeps differing from its folder, a bad label stays bad
    assert shape("sub-07/anat/sub-S_T1w.nii") == "sub-S/anat/sub-Q_T1w.nii"
    assert shape("sub-07/ses-1/anat/sub-07_ses-2_T1w.nii") == "sub-S/ses-T/anat/sub-S_ses-2_T1w.nii"
    assert shape("sub-07/anat/sub-07 copy_T1w.nii") == "sub-S/anat/sub-07 copy_T1w.nii"
    validator = NameValidator()
    assert validator.is_valid("sub-07/anat/sub-07_T1w.nii")
    assert not validator.is_valid("sub-07/anat/sub-S_T1w.nii")
    assert not NameValidator(derivative=True).is_valid("sub-07/anat/sub-08_desc-x_mask.nii")
    assert label_problem("sub-01_T1w.nii") is None
    assert label_problem("sub-01_acq-a+b_T1w.nii") is None  # + joins labels (BIDS 1.10)


def test_pseudo_file_folders_are_valid_entries_not_skipped(tmp_path):
    root = tree(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii"])
    (root / "sub-01/micr").mkdir()
    (root / "sub-01/micr/sub-01_sample-A_BF.ome.zarr").mkdir()
    (root / "sub-01/micr/sub-01_sample-A_BF.ome.zarr/.zattrs").write_text("{}")
    (root / "sub-01/micr/sub-01_sample-A_BF.ome.zarr/0").mkdir()
    result = scan(root)
    assert result.skipped == [] and [f.relpath for f in result.files] == ["sub-01/anat/sub-01_T1w.nii"]


# --- the vendored bids-examples ----------------------------------------------------------------------------

#: What zero-config scanning of each example skips, and why: fMRIPrep's per-subject log folders only.
EXPECTED_SKIPS = {
    "ds000001-fmriprep": [
        (f"sub-{s}/log/", "a folder where BIDS expects a file (not a session or datatype folder)")
        for s in (10, 11, 13, 16)
    ],
}


@pytest.mark.parametrize("name", BIDS_EXAMPLE_NAMES)
def test_each_example_skips_nothing_unexpected(name):
    src = example_source(name)  # scan only reads: the vendored copy itself
    result = scan(src)
    assert result.skipped == EXPECTED_SKIPS.get(name, [])
    # every NIfTI under sub-* that the .bidsignore keeps is indexed
    ignore = (src / ".bidsignore").read_text().splitlines() if (src / ".bidsignore").is_file() else []
    if not ignore:
        on_disk = {
            p.relative_to(src).as_posix()
            for p in src.glob("sub-*/**/*.nii*")
            if p.name.endswith((".nii", ".nii.gz")) and "/log/" not in p.as_posix()
        }
        assert {f.relpath for f in result.files} == on_disk


@pytest.mark.parametrize("name", ["ds001", "qmri_mp2rage", "ds000001-fmriprep", "7t_trt"])
def test_zero_config_indexing_of_copied_examples_still_works(bids_example, name):
    root = bids_example(name)
    index = build_index(root)
    assert index.rows and index.columns
    skipped = [w for w in index.warnings if "skipped" in w]
    assert bool(skipped) == (name in EXPECTED_SKIPS)


def test_derivative_scopes_of_the_examples(bids_example):
    root = bids_example("qmri_mp2rage")
    result = scan(root, ["", "derivatives/pymp2rage"])
    assert result.skipped == []
    assert sorted(f.filename for f in result.files if f.scope) == ["sub-1_T1map.nii", "sub-1_UNIT1.nii"]
