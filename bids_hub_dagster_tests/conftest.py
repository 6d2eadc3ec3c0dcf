"""Shared fixtures: real NIfTI images in BIDS-shaped trees, the shared bids-examples, Dagster instances."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bids_hub_dagster.demo import NIBABEL_DATA, write_demo
from bids_hub_dagster.spec import DatasetSpec, load_spec

REPO = Path(__file__).resolve().parents[1]
BIDS_EXAMPLES = Path(os.environ.get("BIDS_EXAMPLES", REPO.parent / "shared" / "bids-examples"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep DAGSTER_HOME, the HF cache and shard storage of each test out of the user's home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BIDS_HUB_SPECS", raising=False)
    monkeypatch.delenv("BIDS_HUB_STORAGE", raising=False)
    (home / "dagster").mkdir()


@pytest.fixture
def nibabel_data() -> Path:
    return NIBABEL_DATA


@pytest.fixture
def demo_spec(tmp_path) -> DatasetSpec:
    """The demo BIDS tree (real nibabel images) and its spec, publishing to tmp_path/published."""
    spec = load_spec(write_demo(tmp_path / "demo"))
    return spec.with_overrides(destination=str(tmp_path / "published"))


@pytest.fixture
def bids_example(tmp_path):
    """Copy one of ../shared/bids-examples into tmp_path (never write into the shared folder)."""

    def copy(name: str) -> Path:
        src = BIDS_EXAMPLES / name
        if not src.is_dir():
            pytest.fail(f"{src} is missing: the shared bids-examples must sit beside the repository")
        dest = tmp_path / "examples" / name
        shutil.copytree(src, dest, symlinks=True)
        return dest

    return copy
