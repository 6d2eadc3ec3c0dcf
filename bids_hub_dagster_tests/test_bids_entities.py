"""BIDS filename parsing and ordering, driven by the schema shipped with bidsschematools."""

from __future__ import annotations

import random

import pytest

from bids_hub_dagster.bids.entities import (
    NIFTI_EXTENSIONS,
    BidsName,
    distinguishing_entities,
    entity_sort_key,
    load_schema,
    natural_key,
    parse_filename,
    split_extension,
    typed_value,
)


def _sorted_names(names: list[str]) -> list[str]:
    """Sort filenames by entity_sort_key, starting from a shuffled order (so input order can't help)."""
    shuffled = list(names)
    random.Random(0).shuffle(shuffled)
    return sorted(shuffled, key=lambda n: entity_sort_key(parse_filename(n)))


# --- the schema --------------------------------------------------------------------------------------


def test_schema_supplies_entities_in_canonical_order_with_formats():
    schema = load_schema()
    keys = [e.key for e in schema.entities]
    assert keys[0] == "sub"
    # canonical order of the BIDS specification (Appendix: entity table)
    for earlier, later in [("sub", "ses"), ("ses", "task"), ("task", "acq"), ("acq", "rec"), ("rec", "run")]:
        assert keys.index(earlier) < keys.index(later)
    for earlier, later in [("run", "echo"), ("echo", "inv"), ("inv", "part"), ("space", "desc")]:
        assert keys.index(earlier) < keys.index(later)
    assert keys[-1] == "desc"
    assert [e.order for e in schema.entities] == list(range(len(keys)))
    assert schema.by_key["run"].format == "index"
    assert schema.by_key["echo"].format == "index"
    assert schema.by_key["sub"].format == "label"
    assert schema.by_key["acq"].format == "label"
    assert schema.entity("acquisition") is schema.entity("acq")
    assert schema.entity("nosuchentity") is None
    assert {"anat", "func", "dwi", "fmap", "pet", "perf"} <= schema.datatypes
    assert "sub" not in schema.datatypes
    assert schema.bids_version


def test_schema_extensions_are_longest_first():
    exts = load_schema().extensions
    assert all(e.startswith(".") for e in exts)
    assert [len(e) for e in exts] == sorted((len(e) for e in exts), reverse=True)
    assert ".nii.gz" in exts and ".tsv.gz" in exts and ".json" in exts
    assert exts.index(".nii.gz") < exts.index(".json")


# --- parse_filename ----------------------------------------------------------------------------------


def test_parse_filename_entities_suffix_extension():
    name = parse_filename("sub-01_ses-1_task-rest_acq-fullbrain_run-2_bold.nii.gz")
    assert name.entities == {"sub": "01", "ses": "1", "task": "rest", "acq": "fullbrain", "run": "2"}
    # entities keep the order they are written in
    assert list(name.entities) == ["sub", "ses", "task", "acq", "run"]
    assert name.suffix == "bold"
    assert name.extension == ".nii.gz"
    assert name.unknown == {}


@pytest.mark.parametrize(
    ("filename", "stem", "extension"),
    [
        ("sub-01_T1w.nii", "sub-01_T1w", ".nii"),
        ("sub-01_T1w.nii.gz", "sub-01_T1w", ".nii.gz"),
        ("sub-01_T1w.json", "sub-01_T1w", ".json"),
        ("sub-01_task-x_events.tsv", "sub-01_task-x_events", ".tsv"),
        ("sub-01_task-x_physio.tsv.gz", "sub-01_task-x_physio", ".tsv.gz"),
        ("sub-01_dwi.bval", "sub-01_dwi", ".bval"),
        ("README", "README", ""),
    ],
)
def test_split_extension(filename, stem, extension):
    assert split_extension(filename) == (stem, extension)


def test_nii_and_nii_gz_are_different_extensions_of_the_same_name():
    plain = parse_filename("sub-01_ses-2_T1w.nii")
    gz = parse_filename("sub-01_ses-2_T1w.nii.gz")
    assert plain.extension == ".nii"
    assert gz.extension == ".nii.gz"
    assert plain.entities == gz.entities == {"sub": "01", "ses": "2"}
    assert plain.suffix == gz.suffix == "T1w"
    assert set(NIFTI_EXTENSIONS) == {".nii", ".nii.gz"}


def test_extension_case_is_kept_but_recognised():
    name = parse_filename("sub-01_T1w.NII.GZ")
    assert name.suffix == "T1w"
    assert name.extension == ".NII.GZ"
    assert name.extension.lower() in NIFTI_EXTENSIONS


def test_unknown_keys_are_kept_apart_from_schema_entities():
    name = parse_filename("sub-01_foo-bar_acq-x_T1w.nii.gz")
    assert name.entities == {"sub": "01", "acq": "x"}
    assert name.unknown == {"foo": "bar"}
    assert name.value("foo") == "bar"
    assert name.value("acq") == "x"
    assert name.value("run") is None
    assert name.all_entities() == {"sub": "01", "acq": "x", "foo": "bar"}


def test_part_without_dash_is_an_unknown_flag_not_an_entity():
    name = parse_filename("sub-01_extra_T1w.nii")
    assert name.entities == {"sub": "01"}
    assert name.unknown == {"extra": ""}
    assert name.suffix == "T1w"


def test_name_without_suffix():
    name = parse_filename("sub-01_ses-1.nii.gz")
    assert name.suffix is None
    assert name.entities == {"sub": "01", "ses": "1"}
    assert name.extension == ".nii.gz"


def test_top_level_sidecar_name_without_subject():
    name = parse_filename("task-rest_acq-fullbrain_bold.json")
    assert name.entities == {"task": "rest", "acq": "fullbrain"}
    assert name.suffix == "bold"
    assert name.extension == ".json"


def test_values_stay_raw_strings_and_typed_value_follows_the_schema_format():
    name = parse_filename("sub-001_run-01_echo-2_T1w.nii")
    assert name.entities["sub"] == "001"
    assert name.entities["run"] == "01"
    assert typed_value("run", "01") == 1
    assert typed_value("echo", "2") == 2
    assert typed_value("sub", "001") == "001"  # label: zero padding is meaningful
    assert typed_value("acq", "01") == "01"
    assert typed_value("run", "x1") == "x1"  # not a number: left as written
    assert typed_value("foo", "7") == "7"  # unknown key: left as written


# --- natural ordering --------------------------------------------------------------------------------


def test_natural_key_orders_numbers_numerically():
    values = ["run-10", "run-2", "run-1", "run-3", "run-20"]
    assert sorted(values, key=natural_key) == ["run-1", "run-2", "run-3", "run-10", "run-20"]
    assert sorted(values) != sorted(values, key=natural_key)  # plain string order would differ
    assert natural_key("sub-2") < natural_key("sub-10")
    assert natural_key("") == ()
    # equal numbers written differently still get a deterministic order
    assert natural_key("run-02") != natural_key("run-2")


def test_natural_key_handles_mixed_digit_and_text_labels_without_type_errors():
    labels = ["a10", "a2", "10a", "2a", "b", "1", ""]
    ordered = sorted(labels, key=natural_key)
    assert ordered.index("a2") < ordered.index("a10")
    assert ordered.index("2a") < ordered.index("10a")
    assert ordered[0] == ""


# --- entity_sort_key ---------------------------------------------------------------------------------


def test_runs_sort_numerically():
    names = [f"sub-01_task-rest_run-{r}_bold.nii.gz" for r in (10, 2, 1, 11, 3)]
    assert _sorted_names(names) == [f"sub-01_task-rest_run-{r}_bold.nii.gz" for r in (1, 2, 3, 10, 11)]


def test_sort_follows_schema_entity_order_not_filename_text():
    # run precedes echo in the schema: all echoes of run-1 before run-2, even though
    # "echo-1" < "run-..." alphabetically would not matter here.
    names = [f"sub-01_run-{r}_echo-{e}_FLASH.nii.gz" for r in (1, 2) for e in (10, 1, 2)]
    assert _sorted_names(names) == [
        "sub-01_run-1_echo-1_FLASH.nii.gz",
        "sub-01_run-1_echo-2_FLASH.nii.gz",
        "sub-01_run-1_echo-10_FLASH.nii.gz",
        "sub-01_run-2_echo-1_FLASH.nii.gz",
        "sub-01_run-2_echo-2_FLASH.nii.gz",
        "sub-01_run-2_echo-10_FLASH.nii.gz",
    ]


def test_sort_by_session_before_task_before_acq_before_run():
    names = [
        "sub-01_ses-2_task-a_run-1_bold.nii",
        "sub-01_ses-1_task-b_run-1_bold.nii",
        "sub-01_ses-1_task-a_acq-y_run-1_bold.nii",
        "sub-01_ses-1_task-a_acq-x_run-2_bold.nii",
        "sub-01_ses-1_task-a_acq-x_run-1_bold.nii",
        "sub-01_ses-10_task-a_run-1_bold.nii",
    ]
    assert _sorted_names(names) == [
        "sub-01_ses-1_task-a_acq-x_run-1_bold.nii",
        "sub-01_ses-1_task-a_acq-x_run-2_bold.nii",
        "sub-01_ses-1_task-a_acq-y_run-1_bold.nii",
        "sub-01_ses-1_task-b_run-1_bold.nii",
        "sub-01_ses-2_task-a_run-1_bold.nii",
        "sub-01_ses-10_task-a_run-1_bold.nii",
    ]


def test_absent_entity_sorts_before_any_value():
    names = ["sub-01_acq-b_T1w.nii", "sub-01_T1w.nii", "sub-01_acq-a_T1w.nii"]
    assert _sorted_names(names) == ["sub-01_T1w.nii", "sub-01_acq-a_T1w.nii", "sub-01_acq-b_T1w.nii"]


def test_inv_before_part_as_in_mp2rage():
    names = [f"sub-1_inv-{i}_part-{p}_MP2RAGE.nii" for i in (2, 1) for p in ("phase", "mag")]
    assert _sorted_names(names) == [
        "sub-1_inv-1_part-mag_MP2RAGE.nii",
        "sub-1_inv-1_part-phase_MP2RAGE.nii",
        "sub-1_inv-2_part-mag_MP2RAGE.nii",
        "sub-1_inv-2_part-phase_MP2RAGE.nii",
    ]


def test_suffix_then_extension_break_ties():
    names = ["sub-01_T1w.nii.gz", "sub-01_T1w.nii", "sub-01_FLAIR.nii"]
    assert _sorted_names(names) == ["sub-01_FLAIR.nii", "sub-01_T1w.nii", "sub-01_T1w.nii.gz"]


def test_names_with_and_without_unknown_entities_can_be_sorted_together():
    # Regression: unknown entities used to add a variable number of key elements, so
    # comparing a name that has one with a name that has none raised TypeError.
    names = ["sub-01_foo-2_bold.nii", "sub-01_bold.nii", "sub-01_foo-10_bold.nii", "sub-01_bar-1_bold.nii"]
    assert _sorted_names(names) == [
        "sub-01_bold.nii",
        "sub-01_bar-1_bold.nii",
        "sub-01_foo-2_bold.nii",
        "sub-01_foo-10_bold.nii",
    ]


def test_sort_key_is_a_total_order_over_real_world_names():
    names = [
        "sub-01_ses-mri_task-facerecognition_run-01_bold.nii.gz",
        "sub-01_ses-mri_task-facerecognition_run-10_bold.nii.gz",
        "sub-01_ses-mri_task-facerecognition_run-09_bold.nii.gz",
        "sub-01_ses-mri_acq-mprage_T1w.nii.gz",
        "sub-01_ses-mri_dwi.nii.gz",
        "sub-01_ses-mri_magnitude1.nii",
        "sub-01_mod-MP2RAGE_defacemask.nii.gz",
        "sub-01_xyz_T1w.nii",
        "sub-01.nii",
    ]
    ordered = _sorted_names(names)
    assert sorted(ordered) == sorted(names)
    assert ordered.index("sub-01_ses-mri_task-facerecognition_run-09_bold.nii.gz") < ordered.index(
        "sub-01_ses-mri_task-facerecognition_run-10_bold.nii.gz"
    )
    # deterministic: same result from a different starting order
    assert sorted(reversed(names), key=lambda n: entity_sort_key(parse_filename(n))) == ordered


# --- distinguishing_entities -------------------------------------------------------------------------


def test_distinguishing_entities_in_schema_order_then_unknown():
    a = parse_filename("sub-01_ses-1_acq-x_run-1_foo-a_bold.nii")
    b = parse_filename("sub-01_ses-2_acq-x_run-2_foo-b_bold.nii")
    assert distinguishing_entities(a, b) == ["ses", "run", "foo"]
    assert distinguishing_entities(a, a) == []
    c = parse_filename("sub-01_ses-1_acq-x_bold.nii")
    assert distinguishing_entities(a, c) == ["run", "foo"]  # present vs absent counts as different


def test_bidsname_is_immutable():
    name = parse_filename("sub-01_T1w.nii")
    assert isinstance(name, BidsName)
    with pytest.raises(AttributeError):
        name.suffix = "bold"  # type: ignore[misc]
