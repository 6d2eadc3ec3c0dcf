"""One root for the user's errors; a bug looks like a bug; the typed results the CLI reads back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bids_hub_dagster.bids.errors import AmbiguousColumnError, BidsError
from bids_hub_dagster.dataset.nifti import NiftiFileError
from bids_hub_dagster.dataset.shards import ShardFilesError, ShardPlanError
from bids_hub_dagster.defs import build_definitions, names
from bids_hub_dagster.defs.outcomes import USER_ERROR, failure_message, is_user_error
from bids_hub_dagster.defs.summaries import IndexSummary, PublishSummary, ShardSummary
from bids_hub_dagster.errors import ConfigError, UserError
from bids_hub_dagster.publish.destinations import DestinationError, PublishResult
from bids_hub_dagster.publish.hub import HubAccessError
from bids_hub_dagster.publish.manifest import ManifestError
from bids_hub_dagster.publish.publication import ShardsNotReadyError
from bids_hub_dagster.publish.verify import VerifyReport
from bids_hub_dagster.spec import DatasetSpec, SpecError
from bids_hub_dagster_tests.conftest import memory_instance


def test_every_user_error_has_one_root():
    errors = [
        BidsError,
        AmbiguousColumnError,
        SpecError,
        ConfigError,
        NiftiFileError,
        ShardFilesError,
        ShardPlanError,
        DestinationError,
        HubAccessError,
        ManifestError,
        ShardsNotReadyError,
    ]
    for error in errors:
        assert issubclass(error, UserError), error
        # not a ValueError: an `except ValueError` somewhere cannot take a user's error for a bug's
        assert not issubclass(error, (ValueError, KeyError, RuntimeError)), error
    assert not issubclass(SpecError, BidsError)


def test_a_bug_in_an_asset_is_not_a_user_error(demo_spec, tmp_path, monkeypatch):
    """Only UserError becomes a no-retry user failure; anything else keeps its type and traceback."""

    def broken(self, **kwargs):  # build_index(public_hub=...)
        raise KeyError("a bug, not a bad file")

    monkeypatch.setattr(DatasetSpec, "build_index", broken)
    defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
    with memory_instance() as instance:
        result = defs.resolve_job_def(names(demo_spec).jobs.prepare).execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not result.success
    assert not is_user_error(result.all_events)  # the CLI exits 1 for it, not 2
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.error.cause.cls_name == "KeyError"  # Dagster wraps it, keeps it
    assert failure.step_failure_data.user_failure_data is None  # a plain exception: its traceback shows
    assert "a bug, not a bad file" in failure_message(result.all_events)


def test_a_user_error_in_an_asset_is_a_user_failure(demo_spec, tmp_path, monkeypatch):
    def bad(self, **kwargs):  # build_index(public_hub=...)
        raise SpecError("columns: 't1w' matches nothing; fix the spec.")

    monkeypatch.setattr(DatasetSpec, "build_index", bad)
    defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
    with memory_instance() as instance:
        result = defs.resolve_job_def(names(demo_spec).jobs.prepare).execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert is_user_error(result.all_events)
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.metadata[USER_ERROR].value == "SpecError"


# --------------------------------------------------------------------------------------
# The CLI: user errors exit 2 with a message naming the file, never a traceback
# --------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bids_hub_dagster", *args],
        cwd=cwd,
        env=dict(os.environ) | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # the CLI in a subprocess
def test_an_unreadable_file_in_the_bids_folder_is_a_clean_error(demo_spec, tmp_path):
    loop = demo_spec.bids_root / "sub-03/ses-1/anat/sub-03_ses-1_T2w.nii"
    loop.symlink_to(loop.name)  # a symlink to itself: stat fails with ELOOP, an OSError
    proc = run_cli("index", str(demo_spec.bids_root), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "error: sub-03/ses-1/anat/sub-03_ses-1_T2w.nii cannot be read: Too many levels of symbolic links"
        in (proc.stderr)
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the CLI in a subprocess
def test_an_unusable_setting_is_a_clean_error(demo_spec, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    args = ("publish", str(demo_spec.bids_root), "--to", str(tmp_path / "out"), "--no-progress")
    proc = run_cli(*args, cwd=tmp_path, DAGSTER_HOME=str(not_a_folder / "home"))
    assert proc.returncode == 2, proc.stderr
    assert f"error: DAGSTER_HOME={not_a_folder / 'home'} cannot be used" in proc.stderr
    assert "set DAGSTER_HOME to a writable folder" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli(*args, cwd=tmp_path, BIDS_HUB_SLOT_TIMEOUT="soon")
    assert proc.returncode == 2, proc.stderr
    assert "error: BIDS_HUB_SLOT_TIMEOUT='soon' is not a number of seconds" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------
# Typed results: what an asset records is what the CLI reads back, through one function
# --------------------------------------------------------------------------------------


def recorded(metadata: dict[str, object]) -> dict[str, dg.MetadataValue]:
    """The metadata as a materialization stores it (every value a MetadataValue)."""
    return {
        k: v if isinstance(v, dg.MetadataValue) else dg.MetadataValue.text(str(v))
        for k, v in metadata.items()
    }


def test_index_and_shard_summaries_round_trip():
    index = IndexSummary(("sub-04 is listed in participants.tsv but has no files",))
    assert IndexSummary.from_metadata(recorded(index.metadata())) == index
    assert index.metadata()["warnings"] == "sub-04 is listed in participants.tsv but has no files"
    assert IndexSummary().metadata()["warnings"] == "none"
    shard = ShardSummary("shard-00002", 2, 3, 1, 1234, ("1 NIfTI-2 file(s)", "another"))
    assert ShardSummary.from_metadata(recorded(shard.metadata())) == shard
    assert ShardSummary.from_metadata({"warnings": dg.MetadataValue.text("none")}) is None  # recorded none


def test_publish_summary_round_trips_for_a_folder_and_the_hub(tmp_path):
    report = VerifyReport(rows_expected=4, rows_found=4, files_checked=12, bytes_checked=99)
    result = PublishResult(
        url=str(tmp_path), files_written=["README.md", "data/a"], files_skipped=["data/b"], bytes_written=7
    )
    folder = PublishSummary.of(result, report, {"destination": tmp_path})
    assert folder.commit_urls is None and folder.destination == str(tmp_path)
    back = PublishSummary.from_metadata(recorded(folder.metadata()))
    assert back == folder and back.verification.summary() == report.summary()
    assert (back.files_written, back.files_skipped, back.files_removed) == (2, 1, 0)

    hub = PublishSummary.of(
        PublishResult(url="hf://datasets/o/n", commit_urls=["https://hub/c/1"], pr_url="https://hub/pr/1"),
        report,
        {"destination": "https://hub/datasets/o/n", "num_commits": 1, "pull_request": "https://hub/pr/1"},
    )
    back = PublishSummary.from_metadata(recorded(hub.metadata()))
    assert (
        back == hub and back.commits_text == "- https://hub/c/1" and back.pull_request == "https://hub/pr/1"
    )
    nothing = PublishSummary.of(PublishResult(url="hf://datasets/o/n"), report, {"num_commits": 0})
    assert nothing.commit_urls == () and nothing.commits_text == "no commit: nothing had changed"


@pytest.mark.parametrize("summary", [IndexSummary, ShardSummary, PublishSummary])
def test_a_materialization_without_a_summary_gives_none(summary):
    assert summary.from_metadata({}) is None
