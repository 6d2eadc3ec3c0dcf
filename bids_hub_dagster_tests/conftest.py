"""Shared fixtures: real NIfTI images in BIDS-shaped trees, the shared bids-examples, Dagster instances."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from bids_hub_dagster.defs import build_definitions, job_names
from bids_hub_dagster.defs.assets import shard_partitions_name
from bids_hub_dagster.demo import NIBABEL_DATA, write_demo
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster_tests.hub_server import hub_server  # noqa: F401  (the Hub test server fixture)

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


def materialize_all(
    spec: DatasetSpec, storage: Path, instance: dg.DagsterInstance | None = None
) -> list[str]:
    """Run prepare, every shard partition and the upload of ``spec``, each run asserted green.

    Uses ``instance`` when given, else a fresh ``instance_for_test``; returns the shard keys.
    """
    if instance is None:
        with dg.instance_for_test() as fresh:
            return materialize_all(spec, storage, fresh)
    defs = build_definitions([spec], storage_dir=str(storage))
    jobs = job_names(spec)
    assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
    keys = instance.get_dynamic_partitions(shard_partitions_name(spec))
    for key in keys:
        assert (
            defs.resolve_job_def(jobs.shards).execute_in_process(instance=instance, partition_key=key).success
        )
    assert defs.resolve_job_def(jobs.upload).execute_in_process(instance=instance).success
    return keys
