"""The dataset spec: loading YAML, sizes, validation, round trips and overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from bids_hub_dagster.bids import BidsError, ColumnRule, build_index
from bids_hub_dagster.bids.columns import ABSENT
from bids_hub_dagster.demo import DEMO_SPEC, write_demo
from bids_hub_dagster.errors import UserError
from bids_hub_dagster.publish.hub import HubOptions
from bids_hub_dagster.spec import (
    DEFAULT_MAX_SHARD_SIZE,
    DatasetSpec,
    SpecError,
    exact_size,
    load_spec,
    load_specs,
    parse_size,
    sanitize_name,
    spec_for_folder,
    spec_from_mapping,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- load_spec: paths ----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    spec_path = write(
        tmp_path / "specs" / "sub" / "arc.yaml",
        "name: arc\nbids_root: ../data/arc\ndestination: ./out/arc\n",
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_spec(Path("specs/sub/arc.yaml"))
    assert spec.bids_root == (tmp_path / "specs" / "data" / "arc").resolve()
    assert spec.bids_root.is_absolute()
    assert spec.destination == str((tmp_path / "specs" / "sub" / "out" / "arc").resolve())
    assert spec.source == spec_path.resolve()


def test_absolute_and_hub_destinations_are_kept(tmp_path):
    spec = load_spec(
        write(
            tmp_path / "a.yaml", f"name: a\nbids_root: {tmp_path / 'x'}\ndestination: hf://datasets/org/arc\n"
        )
    )
    assert spec.bids_root == (tmp_path / "x").resolve()
    assert spec.destination == "hf://datasets/org/arc"
    spec = load_spec(write(tmp_path / "b.yaml", f"name: b\nbids_root: x\ndestination: {tmp_path / 'pub'}\n"))
    assert spec.destination == str(tmp_path / "pub")


def test_the_demo_spec_loads_and_indexes(tmp_path):
    spec = load_spec(write_demo(tmp_path / "demo"))
    assert spec.name == "demo"
    assert spec.bids_root == (tmp_path / "demo" / "bids").resolve()
    assert spec.destination == str((tmp_path / "demo" / "published" / "demo").resolve())
    assert spec.row == "session"
    assert [c.name for c in spec.columns] == ["t1w", "bold", "lesion"]
    assert spec.columns[1].many and spec.columns[1].entities == {"task": ("rest",)}
    assert spec.columns[2].scope == "derivatives/lesion_masks"
    assert spec.phenotype == ("sex", "age", "group")
    assert spec.max_shard_size == 400_000
    assert spec.num_shards is None
    index = spec.build_index()
    assert [r.label for r in index.rows] == ["sub-01/ses-1", "sub-01/ses-2", "sub-02/ses-1", "sub-03/ses-1"]
    assert list(index.participants.columns) == ["sex", "age", "group"]


def test_defaults(tmp_path):
    spec = load_spec(write(tmp_path / "My-Study 2" / "spec.yaml", "bids_root: ./bids\n"))
    assert spec.name == "bids"  # from the BIDS folder name
    assert spec.row == "session"
    assert spec.columns is None
    assert spec.phenotype is None
    assert spec.destination is None
    assert spec.max_shard_size == DEFAULT_MAX_SHARD_SIZE == 500_000_000
    assert spec.num_shards is None


def test_name_defaults_to_a_sanitized_folder_name(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "bids_root: ./My-Study 2\n"))
    assert (spec.name, spec.key) == ("my-study_2", "my_study_2")  # the key as before hyphens were kept
    assert sanitize_name("123-abc") == "ds_123-abc"
    assert sanitize_name("ds004884-ARC.v2") == "ds004884-arc.v2"
    assert sanitize_name("---") == "dataset"
    assert sanitize_name("ds000117") == "ds000117"


# --- parse_size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500MB", 500 * 10**6),
        ("1GiB", 2**30),
        ("1GB", 10**9),
        ("2 gb", 2 * 10**9),
        ("400KB", 400_000),
        ("64KiB", 65_536),
        ("3MiB", 3 * 2**20),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("1000", 1000),
        ("1000B", 1000),
        (" 12 MB ", 12_000_000),
        ("1.5GB", 1_500_000_000),
        ("8.2MB", 8_200_000),  # regression: float truncation gave 8_199_999
        ("4.1MB", 4_100_000),
        ("0.5KiB", 512),
        (1000, 1000),
        (2**30, 2**30),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize(
    "junk", ["junk", "500 XB", "MB", "-5MB", "5 M B", "", "1e9", "0", "0MB", 0, -1, True, "1,000"]
)
def test_parse_size_rejects_junk(junk):
    with pytest.raises(SpecError):
        parse_size(junk)


def test_parse_size_error_says_what_to_write():
    with pytest.raises(SpecError, match=r"'lots' is not a size; write e\.g\. 500MB, 2GB or 1GiB"):
        parse_size("lots")
    with pytest.raises(SpecError, match="must be positive"):
        parse_size(0)


def test_max_shard_size_in_a_spec(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\nmax_shard_size: 1GiB\n"))
    assert spec.max_shard_size == 2**30
    spec = load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\nmax_shard_size: 123456\n"))
    assert spec.max_shard_size == 123456
    with pytest.raises(SpecError, match="is not a size"):
        load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\nmax_shard_size: big\n"))


def test_zero_max_shard_size_is_an_error_not_the_default(tmp_path):
    # regression: `max_shard_size: 0` used to fall back to 500MB silently
    with pytest.raises(SpecError, match="must be positive"):
        load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\nmax_shard_size: 0\n"))


def test_exact_size_round_trips_through_parse_size():
    for n in (500 * 10**6, 2**30, 400_000, 3 * 2**20, 123_456_789, 1, 10**12, 1536):
        assert parse_size(exact_size(n)) == n
    assert exact_size(500 * 10**6) == "500MB"
    assert exact_size(2**30) == "1GiB"
    assert exact_size(123_456_789) == 123_456_789


# --- validation ----------------------------------------------------------------------------------------


def test_max_shard_size_and_num_shards_together_is_an_error(tmp_path):
    path = write(tmp_path / "s.yaml", "name: s\nbids_root: b\nmax_shard_size: 1GB\nnum_shards: 4\n")
    with pytest.raises(SpecError, match="give max_shard_size or num_shards, not both") as info:
        load_spec(path)
    assert str(path.resolve()) in str(info.value)


def test_num_shards_alone(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\nnum_shards: 4\n"))
    assert spec.num_shards == 4
    assert spec.max_shard_size == DEFAULT_MAX_SHARD_SIZE


@pytest.mark.parametrize("value", ["0", "-2", "true", "four", "2.5"])
def test_num_shards_must_be_a_positive_integer(tmp_path, value):
    # regression: a string used to raise TypeError instead of a SpecError
    with pytest.raises(SpecError, match="num_shards must be a positive integer"):
        load_spec(write(tmp_path / "s.yaml", f"name: s\nbids_root: b\nnum_shards: {value}\n"))


def test_unknown_keys_are_an_error(tmp_path):
    path = write(tmp_path / "s.yaml", "name: s\nbids_root: b\ncolumn: {}\nshards: 3\n")
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['column', 'shards'\]") as info:
        load_spec(path)
    assert "known keys" in str(info.value) and "columns" in str(info.value)
    assert str(path.resolve()) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: s\n", "bids_root is required"),
        ("", "bids_root is required"),
        ("- a\n- b\n", "a spec must be a YAML mapping, got list"),
        ("name: s\nbids_root: b\nrow: scan\n", "row must be 'session' or 'subject'"),
        ("name: my data\nbids_root: b\n", "must be letters, digits, '_', '-' and '.'"),
        ("name: -arc\nbids_root: b\n", "not starting or ending with '-' or '.'"),
        ("name: arc.\nbids_root: b\n", "not starting or ending with '-' or '.'"),
        ("name: s\nbids_root: b\ncolumns: {}\n", "columns must be a non-empty mapping"),
        ("name: s\nbids_root: b\ncolumns: [t1w]\n", "columns must be a non-empty mapping"),
        ("name: s\nbids_root: b\nphenotype: age\n", "phenotype must be a list"),
        ("name: s\nbids_root: b\nphenotype: [age, 3]\n", "phenotype must be a list"),
        ("name: s\nbids_root: b\nname: [unclosed\n", "is not valid YAML"),
    ],
)
def test_malformed_specs(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path / "s.yaml", text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_bad_column_rules_in_a_spec(tmp_path):
    with pytest.raises(SpecError, match="'colour' is not a BIDS entity"):
        load_spec(
            write(tmp_path / "s.yaml", "name: s\nbids_root: b\ncolumns:\n  t1w: {suffix: T1w, colour: red}\n")
        )
    with pytest.raises(SpecError, match="'anatomy' is not a BIDS datatype"):
        load_spec(write(tmp_path / "s.yaml", "name: s\nbids_root: b\ncolumns:\n  t1w: {datatype: anatomy}\n"))


def test_dataset_spec_validates_directly():
    with pytest.raises(SpecError, match="must be letters, digits"):
        DatasetSpec(name="a/b", bids_root=Path("/x"))
    with pytest.raises(SpecError, match="at most 96"):
        DatasetSpec(name="a" * 97, bids_root=Path("/x"))
    with pytest.raises(SpecError, match="row must be"):
        DatasetSpec(name="a", bids_root=Path("/x"), row="run")
    with pytest.raises(SpecError, match="num_shards"):
        DatasetSpec(name="a", bids_root=Path("/x"), num_shards=True)
    with pytest.raises(SpecError, match="num_shards"):
        DatasetSpec(name="a", bids_root=Path("/x"), num_shards=0)
    # one root for the user's errors; a spec error is not an error of the BIDS folder
    assert issubclass(SpecError, UserError) and issubclass(BidsError, UserError)
    assert not issubclass(SpecError, BidsError)


def test_column_yaml_forms(tmp_path):
    spec = load_spec(
        write(
            tmp_path / "s.yaml",
            "name: s\nbids_root: b\ncolumns:\n"
            "  t1w: {datatype: anat, suffix: T1w, acq: [mprage, null], run: 1}\n"
            "  loose: {datatype: null}\n"
            "  anything:\n"
            "  fit: {scope: derivatives/fit/, suffix: T1map, many: true, extension: .nii.gz}\n",
        )
    )
    t1w, loose, anything, fit = spec.columns
    assert t1w.entities == {"acq": ("mprage", None), "run": ("1",)}
    assert loose.datatype == ABSENT and loose.suffix is None
    assert anything == ColumnRule(name="anything")  # empty rule: matches any raw file
    assert fit.scope == "derivatives/fit" and fit.many and fit.extension == ".nii.gz"


# --- to_yaml round trip ---------------------------------------------------------------------------------


def _round_trip(spec: DatasetSpec, folder: Path) -> DatasetSpec:
    return load_spec(write(folder / "round.yaml", spec.to_yaml()))


def test_to_yaml_round_trip_of_the_demo_spec(tmp_path):
    spec = load_spec(write_demo(tmp_path / "demo"))
    text = spec.to_yaml()
    assert yaml.safe_load(text)["columns"]["bold"] == {
        "datatype": "func",
        "suffix": "bold",
        "task": "rest",
        "many": True,
    }
    again = _round_trip(spec, tmp_path / "elsewhere")  # absolute paths: loads from any folder
    assert again.columns == spec.columns
    assert again == spec
    assert again.source != spec.source  # not part of equality


def test_to_yaml_round_trip_with_every_rule_feature(tmp_path):
    columns = (
        ColumnRule.from_mapping("t1w", {"datatype": "anat", "suffix": "T1w", "acq": ["a", None], "run": 2}),
        ColumnRule.from_mapping("loose", {"datatype": None, "suffix": None}),
        ColumnRule.from_mapping("mask", {"scope": "derivatives/m", "desc": "lesion", "extension": ".nii.gz"}),
        ColumnRule.from_mapping("bold", {"suffix": "bold", "task": "rest", "many": True}),
    )
    spec = DatasetSpec(
        name="full",
        bids_root=tmp_path / "bids",
        destination="hf://datasets/org/full",
        row="subject",
        columns=columns,
        phenotype=("age", "sex"),
        max_shard_size=2**30,
    )
    again = _round_trip(spec, tmp_path / "x")
    assert again.columns == columns
    assert again == spec
    assert again.max_shard_size == 2**30
    sharded = _round_trip(dataclasses.replace(spec, num_shards=3), tmp_path / "y")
    assert sharded.num_shards == 3
    assert "max_shard_size" not in yaml.safe_load(dataclasses.replace(spec, num_shards=3).to_yaml())


def test_to_yaml_of_inferred_columns_round_trips_and_indexes_the_same(bids_example, tmp_path):
    root = bids_example("7t_trt")
    inferred = build_index(root).columns
    spec = DatasetSpec(name="t7", bids_root=root, columns=tuple(inferred))
    again = _round_trip(spec, tmp_path / "specs")
    assert again.columns == tuple(inferred)
    a, b = build_index(root, list(again.columns)), build_index(root)
    assert [[f.relpath for f in r.files] for r in a.rows] == [[f.relpath for f in r.files] for r in b.rows]


def test_to_yaml_round_trip_without_columns(tmp_path):
    spec = spec_for_folder(tmp_path / "My Data")
    again = _round_trip(spec, tmp_path)
    assert again.columns is None and again.phenotype is None
    assert again == spec


# --- load_specs ----------------------------------------------------------------------------------------


def test_load_specs_on_a_folder(tmp_path):
    write(tmp_path / "specs" / "b.yml", "name: beta\nbids_root: ../b\n")
    write(tmp_path / "specs" / "a.yaml", "name: alpha\nbids_root: ../a\n")
    write(tmp_path / "specs" / "notes.txt", "not a spec")
    specs = load_specs(tmp_path / "specs")
    assert [s.name for s in specs] == ["alpha", "beta"]
    assert specs[0].bids_root == (tmp_path / "a").resolve()
    assert specs[1].bids_root == (tmp_path / "b").resolve()
    assert [s.source.name for s in specs] == ["a.yaml", "b.yml"]


def test_load_specs_on_a_file(tmp_path):
    path = write(tmp_path / "one.yaml", DEMO_SPEC)
    specs = load_specs(path)
    assert len(specs) == 1 and specs[0].name == "demo"


def test_load_specs_duplicate_names(tmp_path):
    write(tmp_path / "specs" / "a.yaml", "name: same\nbids_root: a\n")
    write(tmp_path / "specs" / "b.yaml", "name: same\nbids_root: b\n")
    write(tmp_path / "specs" / "c.yaml", "name: other\nbids_root: c\n")
    with pytest.raises(SpecError, match=r"dataset names must be unique across specs; repeated: \['same'\]"):
        load_specs(tmp_path / "specs")


@pytest.mark.parametrize(
    ("name", "key"),
    [("ds004884-arc", "ds004884_arc"), ("arc.v2", "arc_v2"), ("Arc_2", "Arc_2"), ("004884", "004884")],
)
def test_hub_style_names_are_accepted_and_give_a_dagster_key(tmp_path, name, key):
    spec = load_spec(write(tmp_path / "s.yaml", f"name: {name}\nbids_root: b\n"))
    assert (spec.name, spec.key) == (name, key)
    assert spec.to_mapping()["name"] == name  # the spec keeps the name as written


def test_names_with_one_key_are_refused(tmp_path):
    write(tmp_path / "specs" / "a.yaml", "name: ds004884-arc\nbids_root: a\n")
    write(tmp_path / "specs" / "b.yaml", "name: ds004884.arc\nbids_root: b\n")
    with pytest.raises(
        SpecError, match=r"'ds004884-arc' and 'ds004884.arc' give the same key 'ds004884_arc'"
    ):
        load_specs(tmp_path / "specs")
    # keys that differ only by case would share a storage folder on macOS and Windows
    write(tmp_path / "case" / "a.yaml", "name: arc\nbids_root: a\n")
    write(tmp_path / "case" / "b.yaml", "name: ARC\nbids_root: b\n")
    with pytest.raises(SpecError, match="give the same key"):
        load_specs(tmp_path / "case")


def test_load_specs_duplicate_default_names(tmp_path):
    # two specs without a name, pointing at folders with the same name
    write(tmp_path / "specs" / "a.yaml", "bids_root: ../one/bids\n")
    write(tmp_path / "specs" / "b.yaml", "bids_root: ../two/bids\n")
    with pytest.raises(SpecError, match=r"repeated: \['bids'\]"):
        load_specs(tmp_path / "specs")


def test_load_specs_empty_folder_and_bad_member(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no \\*.yaml spec files"):
        load_specs(tmp_path / "empty")
    write(tmp_path / "specs" / "a.yaml", "name: a\nbids_root: a\n")
    write(tmp_path / "specs" / "b.yaml", "name: b\nbids_root: b\nbogus: 1\n")
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['bogus'\] in .*b\.yaml"):
        load_specs(tmp_path / "specs")


# --- with_overrides / spec_for_folder -------------------------------------------------------------------


def test_with_overrides(tmp_path, monkeypatch):
    spec = load_spec(write_demo(tmp_path / "demo"))
    assert spec.with_overrides() == spec
    assert spec.with_overrides(row=None, destination=None, max_shard_size=None) == spec  # None: ignored

    bigger = spec.with_overrides(max_shard_size="2GB", row="subject")
    assert bigger.max_shard_size == 2 * 10**9
    assert bigger.row == "subject"
    assert bigger.columns == spec.columns and bigger.name == spec.name
    assert spec.max_shard_size == 400_000 and spec.row == "session"  # the original is unchanged

    assert spec.with_overrides(max_shard_size=1234).max_shard_size == 1234
    assert spec.with_overrides(num_shards=3).num_shards == 3

    monkeypatch.chdir(tmp_path)
    assert spec.with_overrides(destination="out/here").destination == str((tmp_path / "out/here").resolve())
    assert spec.with_overrides(destination="hf://datasets/o/n").destination == "hf://datasets/o/n"


def test_with_overrides_validates(tmp_path):
    spec = load_spec(write_demo(tmp_path / "demo"))
    with pytest.raises(SpecError, match="row must be"):
        spec.with_overrides(row="scan")
    with pytest.raises(SpecError, match="is not a size"):
        spec.with_overrides(max_shard_size="huge")
    with pytest.raises(SpecError, match="num_shards"):
        spec.with_overrides(num_shards=0)
    with pytest.raises(SpecError, match="must be letters, digits"):
        spec.with_overrides(name="bad name")


def test_spec_for_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_for_folder("ds-001", destination="pub", max_shard_size="1MB")
    assert (spec.name, spec.key) == ("ds-001", "ds_001")
    assert spec.bids_root == (tmp_path / "ds-001").resolve()
    assert spec.destination == str((tmp_path / "pub").resolve())
    assert spec.max_shard_size == 10**6
    assert spec.columns is None


def test_spec_from_mapping_without_a_file(tmp_path):
    spec = spec_from_mapping({"bids_root": "b", "row": "subject", "phenotype": []}, tmp_path)
    assert spec.bids_root == (tmp_path / "b").resolve()
    assert spec.source is None
    assert spec.row == "subject" and spec.phenotype == ()
    with pytest.raises(SpecError) as info:
        spec_from_mapping({"bids_root": "b", "extra": 1}, tmp_path)
    assert " in " not in str(info.value).split(";")[0]  # no file to name


def test_zero_padded_labels_stay_strings_in_yaml(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "bids_root: .\ncolumns:\n  a: {suffix: T1w, acq: 01}\n  b: {suffix: T1w, acq: 010}\n  c: {suffix: bold, run: 2}\n"
    )
    columns = {c.name: c for c in load_spec(spec).columns}
    assert columns["a"].entities["acq"] == ("01",)
    assert columns["b"].entities["acq"] == ("010",)  # not octal 8
    assert columns["c"].entities["run"] == ("2",)


# --- hub options -----------------------------------------------------------------------------------------


def test_hub_options_load_round_trip_and_override(tmp_path):
    text = (
        f"name: a\nbids_root: {tmp_path}\ndestination: hf://datasets/org/arc\n"
        "hub:\n  private: true\n  revision: dev\n  commit_message: Publish ARC\n  files_per_commit: 20\n"
    )
    spec = load_spec(write(tmp_path / "a.yaml", text))
    assert spec.hub == HubOptions(
        private=True, revision="dev", commit_message="Publish ARC", files_per_commit=20
    )
    again = load_spec(write(tmp_path / "b.yaml", spec.to_yaml()))
    assert again.hub == spec.hub
    changed = spec.with_overrides(hub={"files_per_commit": 5, "upload_shards": True})
    assert changed.hub == dataclasses.replace(spec.hub, files_per_commit=5, upload_shards=True)
    assert "hub" not in DatasetSpec(name="x", bids_root=tmp_path).to_mapping()  # defaults are not written


@pytest.mark.parametrize(
    ("hub", "message"),
    [
        ("{files_per_commit: 0}", "from 1 to 100"),
        ("{files_per_commit: 101}", "from 1 to 100"),
        ("{private: yes please}", "true or false"),
        ("{branch: dev}", "unknown hub option"),
        ("{create_pr: true, revision: dev}", "pull request against main"),
        ("{commit_message: ''}", "must not be empty"),
        ("[private]", "mapping"),
    ],
)
def test_bad_hub_options_are_spec_errors(tmp_path, hub, message):
    path = write(tmp_path / "a.yaml", f"bids_root: {tmp_path}\ndestination: hf://datasets/o/n\nhub: {hub}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(path)


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("hf://datasets/arc", "hf://datasets/ORG/NAME"),
        ("hf://models/org/arc", "hf://datasets/ORG/NAME"),
        ("hf://datasets/org/a b", "hf://datasets/ORG/NAME"),
        ("hf://datasets/org/arc@main", "names branch 'main' but hub.revision is 'dev'"),
    ],
)
def test_hub_destinations_are_checked_when_the_spec_loads(tmp_path, destination, message):
    path = write(
        tmp_path / "a.yaml", f"bids_root: {tmp_path}\ndestination: {destination}\nhub: {{revision: dev}}\n"
    )
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_operations_keys_load_round_trip_and_validate(tmp_path):
    text = (
        f"name: a\nbids_root: {tmp_path}\nowners: [team:neuro, ana@example.org]\n"
        "schedule: '30 2 * * *'\nwatch_interval: 120\n"
    )
    spec = load_spec(write(tmp_path / "a.yaml", text))
    assert spec.owners == ("team:neuro", "ana@example.org")
    assert (spec.schedule, spec.watch_interval) == ("30 2 * * *", 120)
    assert load_spec(write(tmp_path / "b.yaml", spec.to_yaml())) == spec
    default = DatasetSpec(name="x", bids_root=tmp_path)
    assert (default.schedule, default.watch_interval, default.owners) == ("0 3 * * 1", 600, ())
    for bad, message in (
        ("schedule: every monday", "not a cron expression"),
        ("watch_interval: 5", "at least 30"),
        ("owners: {a: b}", "owners must be a list"),
    ):
        with pytest.raises(SpecError, match=message):
            load_spec(write(tmp_path / "c.yaml", f"bids_root: {tmp_path}\n{bad}\n"))
