"""One run, a range of shard partitions (``shards_per_run``; the CLI groups stale shards the same way).

Core: ``pipeline.shard_range`` builds shards a few at a time in threads, hands each outcome back on
its own, and stops the others (bounded) when its consumer stops. Through Dagster: a damaged file in
one shard of a range fails that partition alone; the others are materialized with their own data
versions and checks; the same command rebuilds only the failed one once the file is fixed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from bids_hub_dagster.cli import main, shard_ranges
from bids_hub_dagster.defs.io_managers import default_storage_dir
from bids_hub_dagster.pipeline.shard_range import (
    ShardBuildStopped,
    available_cpus,
    build_range,
    default_threads,
    until_stopped,
)
from bids_hub_dagster.publish.digests import CHANGE_MARGIN_NS
from bids_hub_dagster.spec import DatasetSpec, SpecError, load_spec
from bids_hub_dagster_tests.test_integrity import T1W_GZ, corrupt_file

KEY = dg.AssetKey(["demo", "hub_shards"])


# --------------------------------------------------------------------------------------
# Core: threads, outcomes, stopping
# --------------------------------------------------------------------------------------


def test_each_shard_has_its_own_outcome_and_threads_overlap() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def build(key: str, stop: threading.Event) -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        if key == "b":
            raise ValueError("b is broken")
        return key.upper()

    outcomes = {o.key: o for o in build_range(["a", "b", "c", "d"], build, threads=2)}
    assert {k: o.result for k, o in outcomes.items() if o.ok} == {"a": "A", "c": "C", "d": "D"}
    assert isinstance(outcomes["b"].error, ValueError) and str(outcomes["b"].error) == "b is broken"
    assert peak[0] == 2  # two at a time, never more


def test_closing_the_iteration_stops_running_builds_and_drops_the_rest() -> None:
    started: list[str] = []
    stopped: list[str] = []
    first_done = threading.Event()

    def build(key: str, stop: threading.Event) -> str:
        started.append(key)
        if key == "k0":
            first_done.set()
            return key
        try:
            for _ in until_stopped(iter(range(10_000)), stop):
                time.sleep(0.01)
        except ShardBuildStopped:
            stopped.append(key)
            raise
        return key

    outcomes = build_range([f"k{i}" for i in range(8)], build, threads=2, grace=5.0)
    first = next(outcomes)
    assert first.key == "k0" and first.ok
    begun = time.monotonic()
    outcomes.close()  # what an interrupt in the consumer does to the generator
    assert time.monotonic() - begun < 2  # the running build stopped at its next row group
    # k1 and, when the free thread took it before the close, k2 were stopped; k3…k7 never started
    assert set(started) in ({"k0", "k1"}, {"k0", "k1", "k2"}) and set(stopped) == set(started) - {"k0"}


def test_threads_follow_a_containers_cpu_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a Kubernetes limit of 1500m: two cores, rounded up
    assert available_cpus(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_default_threads_and_ranges() -> None:
    assert default_threads(1) == 1 and default_threads(3, requested=8) == 3 and default_threads(10, 2) == 2
    assert 1 <= default_threads(100) <= 4
    keys = [f"s{i}" for i in range(7)]
    assert shard_ranges(keys, keys, 3) == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
    # a kept shard (s2) breaks a range: a ranged run covers every partition between its ends
    assert shard_ranges(keys, ["s5", "s0", "s1", "s3", "s4"], 10) == [["s0", "s1"], ["s3", "s4", "s5"]]


def test_shards_per_run_in_the_spec(demo_spec: DatasetSpec, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(demo_spec.with_overrides(shards_per_run=8).to_yaml())
    assert "shards_per_run: 8" in path.read_text() and load_spec(path).shards_per_run == 8
    for bad in (0, -1, True, "4", 10_001):
        with pytest.raises(SpecError, match="shards_per_run must be an integer from 1 to 1000"):
            demo_spec.with_overrides(shards_per_run=bad)


# --------------------------------------------------------------------------------------
# Through Dagster and the CLI
# --------------------------------------------------------------------------------------


def test_a_damaged_shard_fails_alone_in_its_range_and_the_same_command_rebuilds_only_it(
    demo_spec: DatasetSpec, tmp_path: Path
) -> None:
    path = demo_spec.bids_root / T1W_GZ
    original = path.read_bytes()
    corrupt_file(path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.with_overrides(num_shards=4).to_yaml())
    runner = CliRunner()
    args = ["publish", "--spec", str(spec_file), "--no-progress", "--workers", "2"]
    first = runner.invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 1, first.output
    assert "1 of 4 shard(s) failed; nothing was published" in first.output
    assert "shard-00001: 1 file(s) cannot be embedded" in first.output and str(path) in first.output
    with dg.DagsterInstance.get() as instance:
        (run,) = [r for r in instance.get_runs() if r.job_name == "demo_shards"]
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert instance.get_materialized_partitions(KEY) == {"shard-00000", "shard-00002", "shard-00003"}
        failed = instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
            KEY
        )
        assert set(failed) == {"shard-00001"}  # what the UI shows as the one failed partition
    # nothing of the failed shard is left in storage, finished or temporary
    storage = Path(default_storage_dir())
    assert list(storage.rglob("shard-00000.parquet"))  # where the shards are
    assert not list(storage.rglob("shard-00001.parquet*")) and not list(storage.rglob("*.tmp"))

    path.write_bytes(original)
    second = runner.invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "3 of 4 shard(s) unchanged since built: kept" in second.output
    assert "verified: OK: 4/4 rows" in second.output
    with dg.DagsterInstance.get() as instance:
        runs = [r for r in instance.get_runs() if r.job_name == "demo_shards"]
        assert runs[0].tags.get("dagster/partition") == "shard-00001"  # the newest: the failed one alone


def test_shards_built_in_threads_are_the_bytes_built_one_at_a_time(
    demo_spec: DatasetSpec, tmp_path: Path
) -> None:
    """Four shards built four at a time write the same files, byte for byte, as built one by one."""
    published = {}
    for workers in (1, 4):
        spec_file = tmp_path / f"spec{workers}.yaml"
        out = tmp_path / f"out{workers}"
        spec_file.write_text(demo_spec.with_overrides(num_shards=4, destination=str(out)).to_yaml())
        args = ["publish", "--spec", str(spec_file), "--no-progress", "--workers", str(workers), "--rebuild"]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        published[workers] = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))
        }
    assert len(published[1]) == 4 and published[4] == published[1]


def test_the_verification_after_a_local_publish_reads_no_source_file_again(
    demo_spec: DatasetSpec, tmp_path: Path
) -> None:
    """Each source's sha256 is recorded from the bytes the build embedded: the read-back after the
    publish compares with it; a source changed since is read and hashed again."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.with_overrides(num_shards=2).to_yaml())
    sources = sorted(p for p in demo_spec.bids_root.rglob("*.nii*"))
    # a digest is recorded only for a file whose ctime and mtime are older than the build by the
    # margin (its bytes cannot be changing while read): the tree was just written
    newest = max(max(p.stat().st_ctime, p.stat().st_mtime) for p in sources)
    time.sleep(max(0.0, newest + CHANGE_MARGIN_NS / 1e9 + 0.2 - time.time()))

    def published() -> dict:
        result = CliRunner().invoke(
            main, ["publish", "--spec", str(spec_file), "--no-progress"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(["demo", "hub_upload"]))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    first = published()
    assert (first["sources_by_recorded_digest"], first["sources_hashed"]) == (len(sources), 0)
    assert first["verification"].startswith("OK: 4/4 rows")
    os.utime(sources[0], None)  # touched: its recorded digest is no longer trusted
    again = published()
    assert (again["sources_by_recorded_digest"], again["sources_hashed"]) == (len(sources) - 1, 1)
