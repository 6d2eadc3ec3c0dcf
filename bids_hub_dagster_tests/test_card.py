"""The dataset card: Hub YAML as push_to_hub writes it, license mapping, a useful body."""

from __future__ import annotations

import pytest
from datasets import DatasetInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from bids_hub_dagster.dataset.tables import IndexInfo
from bids_hub_dagster.publish.card import hub_license
from bids_hub_dagster_tests.conftest import materialize_all


@pytest.mark.parametrize(
    ("bids", "hub"),
    [
        ("CC0", "cc0-1.0"),
        ("CC0-1.0", "cc0-1.0"),
        ("CC0 1.0", "cc0-1.0"),
        ("PDDL", "pddl"),
        ("CC-BY-4.0", "cc-by-4.0"),
        ("CC BY 4.0", "cc-by-4.0"),
        ("Creative Commons Attribution 4.0", "cc-by-4.0"),
        ("CC-BY-NC-SA-4.0", "cc-by-nc-sa-4.0"),
        ("ODbL", "odbl"),
        ("some custom data use agreement", "other"),
        ("", None),
        (None, None),
    ],
)
def test_bids_license_maps_to_hub_id(bids, hub):
    assert hub_license(bids) == hub


def publish(spec, tmp_path):
    materialize_all(spec, tmp_path / "storage")


def test_card_yaml_is_what_datasets_reads(demo_spec, tmp_path):
    desc = demo_spec.bids_root / "dataset_description.json"
    desc.write_text(
        desc.read_text().replace(
            '"License": "CC0"', '"License": "CC0", "DatasetDOI": "doi:10.18112/openneuro.ds004884.v1.0.1"'
        )
    )
    publish(demo_spec, tmp_path)
    card = DatasetCard.load(f"{demo_spec.destination}/README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc0-1.0"
    assert data["pretty_name"] == "bids_hub_dagster demo"
    # two configs: the full data (default) and the preview beside it; this test reads the default one
    configs = {c["config_name"]: c for c in data["configs"]}
    assert sorted(configs) == ["default", "preview"]
    assert configs["default"] == {
        "config_name": "default",
        "data_files": [{"split": "train", "path": "data/train-*"}],
    }
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert sorted(infos) == ["default", "preview"]
    default_info = infos["default"]
    features = {f["name"]: f for f in default_info["features"]}
    assert features["t1w"] == {"name": "t1w", "dtype": "nifti"}
    assert features["bold"] == {"name": "bold", "list": "nifti"}
    assert features["age"] == {"name": "age", "dtype": "float64"}
    # datasets' own parsers give back the same features and configs
    info = DatasetInfo._from_yaml_dict(default_info)
    expected = IndexInfo.of(demo_spec.index_table()).features()
    assert info.features == expected
    assert info.splits["train"].num_examples == 4
    assert info.download_size == sum(p.stat().st_size for p in (tmp_path / "published" / "data").iterdir())
    assert MetadataConfigs.from_dataset_card_data(card.data)["default"]["data_files"][0]["split"] == "train"
    body = card.text
    assert "doi:10.18112/openneuro.ds004884.v1.0.1" in body
    assert "nibabel developers (images)" in body
    assert "Cite nibabel" in body  # HowToAcknowledge
    assert "| Subjects | 3 |" in body and "| Sessions | 4 |" in body
    assert "| `bold` | List(Nifti()) | 6 |" in body
    assert f'load_dataset("{demo_spec.destination}", split="train")' in body


def test_unknown_license_is_other_with_a_name(demo_spec, tmp_path):
    desc = demo_spec.bids_root / "dataset_description.json"
    desc.write_text(desc.read_text().replace('"License": "CC0"', '"License": "Data use agreement v2"'))
    publish(demo_spec, tmp_path)
    data = DatasetCard.load(f"{demo_spec.destination}/README.md").data.to_dict()
    assert data["license"] == "other" and data["license_name"]


def test_rows_per_subject_still_count_sessions(demo_spec, tmp_path):
    from bids_hub_dagster.spec import spec_for_folder

    spec = spec_for_folder(demo_spec.bids_root, row="subject", destination=str(tmp_path / "out"))
    publish(spec, tmp_path)
    body = DatasetCard.load(f"{spec.destination}/README.md").text
    assert "one row per subject" in body
    assert "| Rows | 3 |" in body and "| Sessions | 4 |" in body
