"""Opt-in: publish the demo dataset to the real Hugging Face Hub and read it back.

Skipped unless both are set::

    HF_TOKEN=hf_...  BIDS_HUB_LIVE_REPO=your-name/bids-hub-dagster-live  bash scripts/test.sh -m live

The repo is created private when missing and published on the branch ``bids-hub-live``
(main is left alone); a second publish must make no commit.
"""

from __future__ import annotations

import os

import dagster as dg
import pytest

from bids_hub_dagster.defs import build_definitions
from bids_hub_dagster_tests.conftest import materialize_all

LIVE_REPO = os.environ.get("BIDS_HUB_LIVE_REPO")
pytestmark = [
    pytest.mark.live,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (LIVE_REPO and os.environ.get("HF_TOKEN")), reason="set HF_TOKEN and BIDS_HUB_LIVE_REPO to run"
    ),
]


@pytest.fixture
def online(monkeypatch):
    """Undo the suite's offline mode (huggingface_hub and datasets copy it at import)."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_publish_the_demo_to_the_real_hub(online, demo_spec, tmp_path):
    from huggingface_hub import HfApi

    spec = demo_spec.with_overrides(
        destination=f"hf://datasets/{LIVE_REPO}",
        hub={"private": True, "revision": "bids-hub-live", "files_per_commit": 2},
    )
    with dg.instance_for_test() as instance:
        materialize_all(spec, tmp_path / "storage", instance)
        first = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        assert first.asset_materialization.metadata["verification"].value.startswith("OK: 4/4 rows")
        commits = len(HfApi().list_repo_commits(LIVE_REPO, repo_type="dataset", revision="bids-hub-live"))

        defs_upload = build_definitions([spec], storage_dir=str(tmp_path / "storage"))
        assert defs_upload.resolve_job_def("demo_upload").execute_in_process(instance=instance).success
        second = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
        assert second.asset_materialization.metadata["num_commits"].value == 0
    assert len(HfApi().list_repo_commits(LIVE_REPO, repo_type="dataset", revision="bids-hub-live")) == commits
