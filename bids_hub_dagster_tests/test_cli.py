"""The headless CLI: the same Definitions on a persistent instance, clear errors, exit codes."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from datasets import load_dataset

from bids_hub_dagster.cli import main
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.spec import load_spec


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_demo_publishes_and_runs_persist_in_dagster_home(tmp_path):
    out = tmp_path / "out"
    result = invoke("demo", "--to", str(out), "--workdir", str(tmp_path / "work"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "verified: OK: 4/4 rows, 12 files" in result.output
    assert len(list((out / "data").glob("train-*.parquet"))) == 3
    # the runs were made on the persistent instance, so `dagster dev` shows them later
    with dg.DagsterInstance.get() as instance:
        jobs = {r.job_name for r in instance.get_runs()}
        assert {"demo_prepare", "demo_shards", "demo_upload"} <= jobs
        # prepare, one run building the three shards (a range), upload
        assert len(instance.get_runs()) == 3
        (shards_run,) = [r for r in instance.get_runs() if r.job_name == "demo_shards"]
        assert shards_run.tags["dagster/asset_partition_range_start"] == "shard-00000"
        assert shards_run.tags["dagster/asset_partition_range_end"] == "shard-00002"
        # each shard is recorded on its own partition, with its own data version
        key = dg.AssetKey(["demo", "hub_shards"])
        assert instance.get_materialized_partitions(key) == {"shard-00000", "shard-00001", "shard-00002"}
        records = instance.fetch_materializations(key, limit=10).records
        assert len({r.asset_materialization.tags["dagster/data_version"] for r in records}) == 3
        # its dagster.yaml gives the pool of hub_upload one slot
        assert instance.event_log_storage.get_concurrency_info("hub_commits").slot_count == 1


def test_zero_config_publish_with_overrides(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    out = tmp_path / "out"
    result = invoke("publish", str(root), "--to", str(out), "--num-shards", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 4 and "t1w" in ds.features and "bold" in ds.features


def test_index_summary_and_print_spec_round_trip(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    result = invoke("index", str(root))
    assert result.exit_code == 0
    assert "rows      4 (one per session); 3 subjects, 4 sessions" in result.output
    assert "bold" in result.output and "List(Nifti())" in result.output

    printed = invoke("index", str(root), "--print-spec").output
    raw = yaml.safe_load(printed)
    assert raw["columns"]["bold"] == {"datatype": "func", "suffix": "bold", "many": True}
    assert raw["columns"]["t1w"] == {"datatype": "anat", "suffix": "T1w"}
    saved = tmp_path / "spec.yaml"
    saved.write_text(printed)
    spec = load_spec(saved)
    assert [c.name for c in spec.columns] == list(raw["columns"])
    # the saved spec publishes the same dataset, next to itself unless told otherwise
    assert raw["destination"] == f"./published/{raw['name']}"
    result = invoke("publish", "--spec", str(saved), "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "published" / raw["name"] / "README.md").is_file()


def test_verify_detects_a_changed_source_file(demo_spec, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    assert invoke("publish", "--spec", str(spec_file), "--no-progress").exit_code == 0
    ok = invoke("verify", demo_spec.destination, "--spec", str(spec_file))
    assert ok.exit_code == 0 and ok.output.startswith("OK: 4/4 rows")

    changed = demo_spec.bids_root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    bad = invoke("verify", demo_spec.destination, "--spec", str(spec_file))
    assert bad.exit_code == 1
    assert (
        "FAILED" in bad.output
        and "sub-02/ses-1 t1w: bytes differ from sub-02/ses-1/anat/sub-02_ses-1_T1w.nii" in bad.output
    )


def test_failed_shard_names_the_file_and_publishes_nothing(demo_spec, tmp_path):
    bad = demo_spec.bids_root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"
    bad.write_bytes(b"")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    result = invoke("publish", "--spec", str(spec_file), "--no-progress")
    assert result.exit_code == 1
    assert "1 of 3 shard(s) failed; nothing was published" in result.output
    assert "sub-02_ses-1_T1w.nii: zero-byte file" in result.output
    assert not Path(demo_spec.destination).exists()


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "bids_hub_dagster", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # the CLI in a subprocess
def test_user_errors_exit_2_with_a_message_not_a_traceback(tmp_path):
    proc = run_module("index", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not a BIDS dataset: it has no dataset_description.json" in proc.stderr
    assert "Traceback" not in proc.stderr

    spec = tmp_path / "bad.yaml"
    spec.write_text("bids_root: .\nmax_shard_size: lots\n")
    proc = run_module("index", "--spec", str(spec), cwd=tmp_path)
    assert proc.returncode == 2 and "write e.g. 500MB" in proc.stderr

    proc = run_module("publish", cwd=tmp_path)
    assert proc.returncode == 2 and "give either BIDS_ROOT or --spec" in proc.stderr


def test_shards_built_two_at_a_time_in_one_run_publish_the_same_dataset(demo_spec, tmp_path):
    """Four shards, one ranged run on the persistent instance, two built at a time; each recorded
    on its own partition, with its two checks, and one check over the run."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    result = invoke(
        "publish", "--spec", str(spec_file), "--workers", "2", "--num-shards", "4", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "verified: OK: 4/4 rows, 12 files" in result.output
    with dg.DagsterInstance.get() as instance:
        (run,) = [r for r in instance.get_runs() if r.job_name == "demo_shards"]
        assert run.is_success and run.run_config["ops"]["demo__hub_shards"]["config"]["threads"] == 2
        key = dg.AssetKey(["demo", "hub_shards"])
        assert instance.get_materialized_partitions(key) == {f"shard-0000{i}" for i in range(4)}
        evaluations = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
        per_shard = {(e.check_name, e.partition) for e in evaluations if e.partition is not None}
        assert per_shard == {
            (check, f"shard-0000{i}")
            for check in ("shard_files_are_nifti", "shard_row_count_matches_plan")
            for i in range(4)
        }
        assert all(e.passed for e in evaluations)
        assert [e.check_name for e in evaluations if e.partition is None] == ["shards_of_run_pass_checks"]


@pytest.mark.slow  # the CLI in a subprocess
def test_an_unusable_destination_fails_before_any_run(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    result = run_module("publish", str(root), "--to", str(tmp_path / "pub[v1]"), cwd=tmp_path)
    assert result.returncode == 2
    assert "glob patterns" in result.stderr and "Traceback" not in result.stderr
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


@pytest.mark.slow  # the CLI in a subprocess
def test_a_failed_shard_prints_its_error_once_without_stack_traces(demo_spec, tmp_path):
    (demo_spec.bids_root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii").write_bytes(b"")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    proc = run_module("publish", "--spec", str(spec_file), "--no-progress", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Stack Trace" not in output and "Traceback" not in output
    assert output.count("zero-byte file") == 1
    assert re.search(r"shard-0000\d: 1 file\(s\) cannot be embedded", output)
    assert "ShardFilesError" not in output


@pytest.mark.slow  # the CLI in a subprocess
def test_verify_of_a_missing_destination_is_a_clear_failure(demo_spec, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    proc = run_module("verify", str(tmp_path / "nowhere"), "--spec", str(spec_file), cwd=tmp_path)
    assert proc.returncode == 2  # a user error: there is nothing to verify
    assert "nowhere: no such folder; nothing to verify" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_publish_to_the_hub_with_options_then_rerun_makes_no_commit(hub_server, tmp_path):
    from huggingface_hub import HfApi

    root = build_demo_bids(tmp_path / "bids")
    args = [
        "publish", str(root), "--to", "hf://datasets/lab/cli", "--num-shards", "4", "--files-per-commit", "2",
        "--private", "--revision", "dev", "--commit-message", "CLI publish", "--no-progress", "--workers", "1",
    ]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"published bids to {hub_server.endpoint}/datasets/lab/cli/tree/dev" in result.output
    files = 4 + 4 + 1  # 4 data files, their 4 preview files, preview.png
    # the widened manifest, the files 2 a commit, then the card (and final manifest) in a commit of its own
    commits = 1 + math.ceil(files / 2) + 1
    assert (
        f"files: {files + 1} written, 0 unchanged, 0 removed" in result.output
        and f"commits: {commits}\n" in result.output
    )  # + the card
    assert "verified: OK: 4/4 rows" in result.output
    assert HfApi().repo_info("lab/cli", repo_type="dataset").private
    assert [c.title for c in hub_server.commits("lab/cli", "dev")[1:]] == ["CLI publish"] * commits
    assert len(hub_server.commits("lab/cli", "main")) == 1  # main keeps only the initial commit

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert f"files: 0 written, {files} unchanged" in again.output and "no commit" in again.output
    assert len(hub_server.commits("lab/cli", "dev")) == 1 + commits

    checked = invoke("verify", "hf://datasets/lab/cli@dev", "--bids-root", str(root))
    assert checked.exit_code == 0 and checked.output.startswith("OK: 4/4 rows")
    assert hub_server.token not in result.output + again.output + checked.output


@pytest.mark.slow  # the CLI in a subprocess
def test_publish_to_the_hub_with_a_bad_token_says_what_to_do(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    root = build_demo_bids(tmp_path / "bids")
    proc = run_module("publish", str(root), "--to", "hf://datasets/lab/cli", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2  # a user error, as for every destination refused before any run
    output = proc.stdout + proc.stderr
    assert "HTTP 401" in output and "Set HF_TOKEN" in output
    assert "Traceback" not in output and "hf_not_the_right_one" not in output


def test_publishing_again_rebuilds_only_the_shards_whose_files_changed(demo_spec, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.with_overrides(num_shards=4).to_yaml())
    assert invoke("publish", "--spec", str(spec_file), "--no-progress", "--workers", "1").exit_code == 0
    again = invoke("publish", "--spec", str(spec_file), "--no-progress", "--workers", "1")
    assert again.exit_code == 0 and "4 of 4 shard(s) unchanged since built: kept" in again.output
    changed = demo_spec.bids_root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = invoke("publish", "--spec", str(spec_file), "--no-progress", "--workers", "1")
    assert third.exit_code == 0 and "3 of 4 shard(s) unchanged since built: kept" in third.output
    assert "verified: OK: 4/4 rows" in third.output
    with dg.DagsterInstance.get() as instance:
        shard_runs = [r for r in instance.get_runs() if r.job_name == "demo_shards"]
    # one run of the four shards, none for the unchanged ones, one of the changed shard
    assert [run.tags.get("dagster/partition") for run in reversed(shard_runs)] == [
        None,
        "shard-00002",
    ]  # sub-02 ses-1: the third row


def test_the_nifti2_warning_reaches_the_cli_user(tmp_path, nibabel_data):
    root = build_demo_bids(tmp_path / "bids")
    target = root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"
    target.unlink()
    (target.parent / "sub-02_ses-1_T1w.nii.gz").write_bytes(
        (nibabel_data / "example_nifti2.nii.gz").read_bytes()
    )
    result = CliRunner().invoke(main, ["publish", str(root), "--to", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if "NIfTI-2" in line)
    assert warning.startswith("warning: shard-") and "sub-02_ses-1_T1w.nii.gz" in warning
    assert "NIfTI-2 images" in (tmp_path / "out" / "README.md").read_text()  # the card says how to read them
