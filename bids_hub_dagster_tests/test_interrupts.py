"""Hangs and interrupts: Ctrl-C, SIGTERM and kill -9 of a real `bids-hub-dagster publish` process.

Each test starts the CLI as a child process on the persistent instance of the test
(``DAGSTER_HOME``), signals it while it works, and checks what it leaves behind: its exit
code and one line, no run left in progress, no slot left claimed, no half-written file;
then that the same command publishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import nibabel
import numpy as np
import pytest

from bids_hub_dagster.cli import INSTANCE_YAML
from bids_hub_dagster.defs import build_definitions, job_names, names, runs
from bids_hub_dagster.defs.names import HUB_POOL
from bids_hub_dagster.demo import build_demo_bids

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).with_name("bids-hub-dagster")
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
IN_PROGRESS = runs.IN_PROGRESS


def build_big_bids(root: Path, subjects: int = 8, shape: tuple[int, ...] = (192, 192, 160)) -> Path:
    """A BIDS tree of ``subjects`` sessions, each one T1w of random int16 (~12 MB): shards take seconds."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "big", "BIDSVersion": "1.10.0"}))
    rng = np.random.default_rng(0)
    for i in range(1, subjects + 1):
        anat = root / f"sub-{i:02d}" / "anat"
        anat.mkdir(parents=True)
        data = rng.integers(0, 4000, size=shape, dtype=np.int16)
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), anat / f"sub-{i:02d}_T1w.nii")
    return root


def instance() -> dg.DagsterInstance:
    home = Path(os.environ["DAGSTER_HOME"])
    if not (home / "dagster.yaml").exists():  # as the CLI writes it, before the test reads the instance
        (home / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    return dg.DagsterInstance.get()


def start(*args: str, new_session: bool = False) -> subprocess.Popen:
    """The CLI in a subprocess, on an instance whose storage exists already: the CLI and the test's
    instance() would otherwise race to create its SQLite tables."""
    with instance():
        pass
    return _start(*args, new_session=new_session)


def _start(*args: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [str(CLI), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout)


def wait_for(condition, timeout: float = 180, what: str = "condition", proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the CLI ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def runs_of(inst: dg.DagsterInstance, job_name: str, statuses=None) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(job_name=job_name, statuses=statuses or [])
    return list(inst.get_runs(filters=filters))


def partial_files(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")]


@pytest.mark.parametrize(
    ("workers", "signum", "code"),
    [
        pytest.param(2, signal.SIGINT, 130, id="ctrl-c-2-workers"),
        pytest.param(1, signal.SIGINT, 130, id="ctrl-c-1-worker"),
        pytest.param(2, signal.SIGTERM, 143, id="sigterm-2-workers"),
    ],
)
def test_an_interrupt_stops_every_run_and_the_same_command_resumes(tmp_path, workers, signum, code):
    root = build_big_bids(tmp_path / "big", subjects=16)  # shards that take seconds, even on a quiet machine
    out = tmp_path / "out"
    args = (
        "publish",
        str(root),
        "--to",
        str(out),
        "--num-shards",
        "4",
        "--workers",
        str(workers),
        "--no-progress",
    )
    storage = Path(os.environ["DAGSTER_HOME"]) / "bids_hub_storage"
    proc = start(*args, new_session=True)
    with instance() as inst:
        wait_for(
            lambda: runs_of(inst, "big_shards", [dg.DagsterRunStatus.STARTED]),
            what="a shard run to start",
            proc=proc,
        )
        time.sleep(0.2)  # inside the shard's build, long before the upload
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the CLI and its workers
        else:
            proc.send_signal(signal.SIGTERM)  # as `kill`: the CLI only
        stdout, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
        print(
            f"{signal.Signals(signum).name} with {workers} worker(s): exit {proc.returncode} after {elapsed:.1f} s"
        )
        assert proc.returncode == code, stderr
        assert elapsed < 20
        assert stderr.count("interrupted; run the same command to resume") == 1, stderr
        assert stderr.strip().splitlines()[-1] == "interrupted; run the same command to resume"
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        assert "Fix the files" not in stderr
        # no run left in progress, no slot claimed, no half-written file, nothing published
        assert not inst.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS))
        stopped = runs_of(inst, "big_shards", [dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE])
        assert stopped, [r.status for r in inst.get_runs()]
        assert not inst.event_log_storage.get_concurrency_run_ids()
        assert partial_files(storage, out) == []
        assert not (out / "README.md").exists()

        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert "verified: OK: 16/16 rows" in again.stdout
        assert not inst.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS))


def test_kill_9_during_the_upload_frees_its_slot_for_the_next_publish(hub_server, tmp_path):
    """A CLI killed while its upload holds the hub_commits slot: the next publish marks that run failed and goes on."""
    root = build_demo_bids(tmp_path / "bids")
    # a new repo is public: the privacy gate wants the anatomical images affirmed defaced
    args = (
        "publish", str(root), "--to", "hf://datasets/lab/killed", "--num-shards", "2", "--workers", "1",
        "--affirm-defaced",
    )  # fmt: skip
    # the upload's first call waits a minute (429, Retry-After): the CLI is killed meanwhile
    fault = hub_server.inject("POST", r"/preupload/", status=429, retry_after=60, times=1)
    proc = start(*args, "--no-progress")
    with instance() as inst:
        wait_for(
            lambda: fault.fired and inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots,
            what="the upload to hold the hub_commits slot",
            proc=proc,
        )
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        (dead,) = runs_of(inst, "bids_upload")
        assert dead.status == dg.DagsterRunStatus.STARTED  # what kill -9 leaves
        assert {s.run_id for s in inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots} == {
            dead.run_id
        }

        # a shard file the killed process was writing (atomic_path's temporary name)
        leftover = (
            Path(os.environ["DAGSTER_HOME"])
            / "bids_hub_storage/bids/hub_shards/.shard-00000.parquet.0123abcd.tmp"
        )
        leftover.write_bytes(b"half a shard")

        started = time.monotonic()
        again = run_cli(*args, "--no-progress", timeout=300)
        assert again.returncode == 0, again.stderr
        assert "marked 1 run(s) failed, their process being gone (killed?)" in again.stderr
        assert dead.run_id in again.stderr
        assert "published bids to" in again.stdout and "verified: OK: 4/4 rows" in again.stdout
        assert time.monotonic() - started < 240
        assert inst.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not leftover.exists()
        assert not inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots

        # another dataset on the same instance publishes too
        other = build_demo_bids(tmp_path / "other")
        third = run_cli("publish", str(other), "--to", str(tmp_path / "other_out"), "--no-progress")
        assert third.returncode == 0, third.stderr
        assert "verified: OK: 4/4 rows" in third.stdout


def _foreign_run_holding_the_slot(inst: dg.DagsterInstance) -> dg.DagsterRun:
    """A run of another live process (this test's) that holds the hub_commits slot."""
    run = inst.add_run(
        dg.DagsterRun(
            job_name="someone_upload",
            run_id=runs.make_new_run_id(),
            status=dg.DagsterRunStatus.STARTED,
            tags=runs.process_tags(),
        )
    )
    storage = inst.event_log_storage
    storage.set_concurrency_slots(HUB_POOL, 1)
    assert storage.claim_concurrency_slot(HUB_POOL, run.run_id, "someone_upload", 0).is_claimed
    return run


def test_a_slot_held_by_a_live_run_stops_the_publish_after_the_timeout_naming_the_run(demo_spec, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    with instance() as inst:
        holder = _foreign_run_holding_the_slot(inst)
        started = time.monotonic()
        proc = run_cli(
            "publish", "--spec", str(spec_file), "--no-progress", "--slot-timeout", "3", timeout=300
        )
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, proc.stderr
        assert (
            f"waiting for the hub_commits pool slot held by run {holder.run_id} (someone_upload"
            in proc.stderr
        )
        assert f"the hub_commits pool slot is still held by run {holder.run_id}" in proc.stderr
        assert f"pid {os.getpid()} on {socket.gethostname()}" in proc.stderr
        assert "after 3 s; nothing was published" in proc.stderr and "Traceback" not in proc.stderr
        assert elapsed < 120
        assert not Path(demo_spec.destination).exists()
        # the live run keeps its slot; no run of the publish is left in progress
        assert inst.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
        claimed = inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots
        assert [s.run_id for s in claimed] == [holder.run_id]
        assert [r.run_id for r in inst.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS))] == [
            holder.run_id
        ]

        # BIDS_HUB_SLOT_TIMEOUT is the same bound
        env = dict(os.environ, BIDS_HUB_SLOT_TIMEOUT="1")
        proc = subprocess.run(
            [str(CLI), "publish", "--spec", str(spec_file), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 1 and "after 1 s; nothing was published" in proc.stderr


def test_an_upload_that_starts_waiting_for_its_slot_is_bounded_too(demo_spec, tmp_path):
    """The race: the slot is taken between the check and the upload's claim; the run waits, bounded, then ends."""
    defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
    jobs = job_names(demo_spec)
    lines: list[str] = []
    with instance() as inst:
        assert runs.execute_job(defs.resolve_job_def(jobs.prepare), inst, run_config=QUIET).success
        for key in inst.get_dynamic_partitions(names(demo_spec).shard_partitions):
            assert runs.execute_job(
                defs.resolve_job_def(jobs.shards), inst, run_config=QUIET, partition_key=key
            ).success
        holder = _foreign_run_holding_the_slot(inst)
        wait = runs.PoolWait(inst, HUB_POOL, 2.0, lines.append)
        started = time.monotonic()
        with pytest.raises(runs.SlotTimeout, match=f"still held by run {holder.run_id}"):
            runs.execute_job(defs.resolve_job_def(jobs.upload), inst, run_config=QUIET, pool_wait=wait)
        assert time.monotonic() - started < 30
        assert any(
            f"waiting for the hub_commits pool slot held by run {holder.run_id}" in line for line in lines
        )
        (upload,) = runs_of(inst, jobs.upload)
        assert upload.status == dg.DagsterRunStatus.CANCELED
        assert upload.tags[runs.PID_TAG] == str(os.getpid())
        assert not any(
            p.run_id == upload.run_id
            for p in inst.event_log_storage.get_concurrency_info(HUB_POOL).pending_steps
        )


def test_a_dead_cli_run_is_marked_failed_and_a_reused_pid_is_not_taken_for_it():
    with instance() as inst:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        gone = inst.add_run(
            dg.DagsterRun(
                job_name="gone_upload",
                run_id=runs.make_new_run_id(),
                status=dg.DagsterRunStatus.STARTED,
                tags={**runs.process_tags(), runs.PID_TAG: str(child.pid)},
            )
        )
        reused = inst.add_run(  # this process's pid, but another start time: the pid was reused
            dg.DagsterRun(
                job_name="reused_upload",
                run_id=runs.make_new_run_id(),
                status=dg.DagsterRunStatus.STARTED,
                tags={**runs.process_tags(), runs.START_TAG: "1"},
            )
        )
        alive = inst.add_run(
            dg.DagsterRun(
                job_name="alive_upload",
                run_id=runs.make_new_run_id(),
                status=dg.DagsterRunStatus.STARTED,
                tags=runs.process_tags(),
            )
        )
        other_host = inst.add_run(
            dg.DagsterRun(
                job_name="elsewhere_upload",
                run_id=runs.make_new_run_id(),
                status=dg.DagsterRunStatus.STARTED,
                tags={**runs.process_tags(), runs.HOST_TAG: "another-host", runs.PID_TAG: str(child.pid)},
            )
        )
        storage = inst.event_log_storage
        storage.set_concurrency_slots(HUB_POOL, 1)
        assert storage.claim_concurrency_slot(HUB_POOL, gone.run_id, "x", 0).is_claimed
        swept = runs.sweep(inst)
        assert sorted(swept.failed) == sorted(
            [(gone.run_id, "gone_upload"), (reused.run_id, "reused_upload")]
        )
        assert "marked 2 run(s) failed" in swept.summary()
        assert inst.get_run_by_id(gone.run_id).status == dg.DagsterRunStatus.FAILURE
        assert inst.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        assert inst.get_run_by_id(other_host.run_id).status == dg.DagsterRunStatus.STARTED
        assert not storage.get_concurrency_info(HUB_POOL).claimed_slots


def test_a_pool_without_slots_is_a_bounded_wait_and_a_pool_without_limit_no_wait():
    lines: list[str] = []
    with instance() as inst:
        inst.event_log_storage.set_concurrency_slots(HUB_POOL, 0)
        started = time.monotonic()
        with pytest.raises(runs.SlotTimeout, match="the pool has no slot"):
            runs.PoolWait(inst, HUB_POOL, 1.0, lines.append).wait()
        assert time.monotonic() - started < 10
        assert "dagster instance concurrency set hub_commits 1" in lines[0]
        runs.PoolWait(inst, "a_pool_nobody_limits", 0.0, lines.append).wait()  # returns at once
        assert len(lines) == 1


UI_LIKE_RUN = """
import sys, time
from pathlib import Path
import dagster as dg

@dg.asset(pool=sys.argv[2])
def holds_the_slot() -> None:
    Path(sys.argv[1]).write_text("started")
    time.sleep(120)

with dg.DagsterInstance.get() as instance:
    dg.materialize([holds_the_slot], instance=instance)
"""


def test_the_daemon_sensor_fails_a_run_whose_worker_was_killed_and_frees_its_slot(tmp_path):
    """A run made outside the CLI (no pid tags, as the UI's are): its worker's pid is read from RUN_START."""
    marker = tmp_path / "started"
    with instance() as inst:
        inst.event_log_storage.set_concurrency_slots(HUB_POOL, 1)
        worker = subprocess.Popen([sys.executable, "-c", UI_LIKE_RUN, str(marker), HUB_POOL])
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert worker.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        [run] = inst.get_runs(filters=runs.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert runs.PID_TAG not in run.tags
        assert inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots
        sensor = runs.build_dead_run_sensor()
        alive = sensor(dg.build_sensor_context(instance=inst))
        assert "every run in progress has its process" in alive.skip_message  # a live worker is left alone
        worker.kill()  # kill -9 of the run worker
        worker.wait(timeout=30)
        result = sensor(dg.build_sensor_context(instance=inst))
        assert "marked 1 run(s) failed" in result.skip_message and run.run_id in result.skip_message
        assert inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not inst.event_log_storage.get_concurrency_info(HUB_POOL).claimed_slots


@pytest.mark.parametrize("after", [0.3, 1.2])
def test_ctrl_c_while_the_cli_starts_says_one_line_and_exits_130(tmp_path, after):
    """Before a publish runs anything (imports, the Definitions): one line, no traceback, no `aborted`."""
    root = build_demo_bids(tmp_path / "bids")
    proc = start("publish", str(root), "--to", str(tmp_path / "out"), "--no-progress")
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr == "interrupted; run the same command to resume\n", stderr
    assert not (tmp_path / "out" / "README.md").exists()
