"""The whole ``publish`` as a user times it, beside ``cp -r`` and datasets' push path.

    .venv/bin/python bench/publish.py --sizes 0.5            # 0.5 GB tree, then the fixed cost
    .venv/bin/python bench/publish.py --sizes 0.5,5 --repeat 2
    .venv/bin/python bench/publish.py --sizes 0.5 --profile  # + cProfile of the CLI, one process

Generates a BIDS tree per size (``--sizes`` in GB, 10^9 bytes) of sessions holding three
plain ``.nii`` files each (a T1w and a FLAIR of 128×128×96 and a bold of 64×64×32×12, int16,
brain-like volumes from bench/shards.py written by nibabel: 9.4 MB a session), cached in
``--workdir`` so that a rerun does not write it again. Then runs, side by side, each as a
whole command in its own process (interpreter start and imports included), the page cache
warmed by one read of the tree before each (or dropped, with ``--drop-caches``):

``cp``       ``cp -r TREE OUT``: the floor on this disk.
``push``     datasets' ``push_to_hub`` done locally, minus the upload: the same Dataset as
             ours (our index, without the privacy gate, and ``dataset_from_index``: Nifti /
             List(Nifti) columns of paths), then for each of the n shards
             ``ds.shard(n, i, contiguous=True)`` + ``map(embed_table_storage, batched=True)``
             + ``to_parquet``, n = our plan's shard count at 100 MB (datasets 5.2).
``cli``      ``bids-hub-dagster publish TREE --to OUT --max-shard-size 100MB --no-progress``
             with a fresh ``DAGSTER_HOME`` and ``BIDS_HUB_STORAGE``: index, shards, publish,
             verification.

Wall seconds are timed by this driver around the process; CPU seconds (user + system) are
the command's and every descendant's it waited for (``wait4``): on a shared machine the
CPU ratio moves less than the wall ratio. Memory: every process of the command's tree (the
command, spawned workers, Dagster's ``tail`` and watcher processes of its compute-log
capture) is sampled every 50 ms through ``/proc/PID/status`` (VmHWM, the high-water mark,
and VmRSS; a fork not yet exec'd is skipped: its pages are its parent's); the table shows
the main process's and the largest other process's high-water mark, and the largest sum of
the tree's RSS at one sample. "MB written": the copy, or the parquet shards.

Below each size: the breakdown of the fastest ``publish``, read back from the Dagster
instance it used (a child process: ``DagsterInstance.from_config`` on its DAGSTER_HOME):
every run's creation and end, every step's start and end, ``hub_upload``'s metadata
(``duration_s`` = publish + verification, the verified figures). The gaps between runs are
the CLI's own work (start-up, planning, worker start, shutdown).

Then the fixed cost (``--no-fixed`` skips it), rounds interleaved, best of
``--fixed-repeat``: ``python -c "import dagster, datasets"``, the imports ``publish``
makes, ``bids-hub-dagster --help``, beside the publish of a one-shard tree (2 sessions,
``--num-shards 1``) and its breakdown; the imports the publish really makes (one more run
under ``python -X importtime``), and the opening of a Dagster instance, fresh and again.

``--profile`` runs the CLI once more on the first size with ``--workers 1`` under
``cProfile`` (every run then in the one process) and sums where its time goes; the top
entries go to WORKDIR/profile.txt. Markdown tables are printed at the end (and written to
``--markdown FILE``), ready for BENCHMARKS.md. The driver imports nothing heavy (a child's
``ru_maxrss`` would start at its parent's size) and keeps the trees, not the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 10**6
GB = 10**9
MAX_SHARD_SIZE = "100MB"
METHODS = ("cp", "push", "cli")
#: (file suffix, datatype, shape) of the three images of a session
IMAGES = (
    ("T1w", "anat", (128, 128, 96)),
    ("FLAIR", "anat", (128, 128, 96)),
    ("task-rest_bold", "func", (64, 64, 32, 12)),
)
VARIANTS = 3  # template images per kind; session s copies variant s % 3
SAMPLE_SECONDS = 0.05
BENCH = Path(__file__).resolve().parent
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


# ----------------------------------------------------------------------------- tree


def _templates(folder: Path) -> dict[str, list[Path]]:
    """VARIANTS images per kind, real NIfTI-1 written by nibabel (plain ``.nii``)."""
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from shards import _brain  # bench/shards.py: brain-like int16 volumes

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for kind, _, shape in IMAGES:
        out[kind] = []
        for i in range(VARIANTS):
            path = folder / f"{kind}-{i}.nii"
            if not path.exists():
                seed = i + 7 * len(out)
                path.write_bytes(nib.Nifti1Image(_brain(shape, seed), np.eye(4)).to_bytes())
            out[kind].append(path)
    return out


def session_bytes(templates: dict[str, list[Path]]) -> int:
    return sum(paths[0].stat().st_size for paths in templates.values())


def generate(root: Path, sessions: int, templates: dict[str, list[Path]]) -> int:
    """A BIDS tree of ``sessions`` sessions (two per subject); returns its bytes of NIfTI.

    Written into ``root``.partial and renamed when complete: a tree that exists is whole.
    """
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    lines = ["participant_id\tage"]
    total = 0
    for s in range(sessions):
        sub, ses = f"sub-{s // 2 + 1:05d}", f"ses-{s % 2 + 1}"
        if s % 2 == 0:
            lines.append(f"{sub}\t{20 + s % 50}")
        for kind, datatype, _ in IMAGES:
            dest = partial / sub / ses / datatype / f"{sub}_{ses}_{kind}.nii"
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = templates[kind][s % VARIANTS]
            shutil.copyfile(src, dest)
            total += src.stat().st_size
    (partial / "participants.tsv").write_text("\n".join(lines) + "\n")
    partial.rename(root)
    return total


def tree(work: Path, sessions: int) -> tuple[Path, int]:
    """The cached tree of ``sessions`` sessions (generated in a child when absent) and its bytes."""
    root = work / f"bids_{sessions}_sessions"
    if not root.exists():
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "generate",
                "--root",
                str(root),
                "--out",
                str(work / "templates"),
                "--sessions",
                str(sessions),
            ],
            check=True,
            env={**os.environ, **ENV},
        )
        print(f"generated {root} in {time.perf_counter() - t0:.1f} s", flush=True)
    total = sum(p.stat().st_size for p in root.rglob("*.nii"))
    return root, total


def sessions_for(gb: float, work: Path) -> int:
    """Sessions that make ``gb`` GB of NIfTI (the templates are written first, in a child)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "session-bytes", "--out", str(work / "templates")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **ENV},
    ).stdout
    return max(1, round(gb * GB / int(out.split()[-1])))


def warm(root: Path) -> None:
    """Read every file of ``root`` once: the page cache holds the tree for every method alike."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 20):
                    pass


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# ----------------------------------------------------------------------------- push path (child side)


def push_path(root: Path, out: Path) -> int:
    """datasets' push_to_hub, locally and minus the upload: every shard embedded and written."""
    from datasets.arrow_writer import (
        get_writer_batch_size_from_data_size,
        get_writer_batch_size_from_features,
    )
    from datasets.table import embed_table_storage

    from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table
    from bids_hub_dagster.spec import spec_for_folder

    spec = spec_for_folder(root, max_shard_size=MAX_SHARD_SIZE)
    table = index_to_table(spec.build_index(gate=False))
    ds = dataset_from_index(table)
    plan = spec.shard_plan(table)
    n = plan.num_shards
    batch = get_writer_batch_size_from_features(ds.features) or get_writer_batch_size_from_data_size(
        len(ds), sum(plan.sizes)
    )
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shard = ds.shard(num_shards=n, index=i, contiguous=True).with_format("arrow")
        shard = shard.map(embed_table_storage, batched=True, batch_size=batch, keep_in_memory=True)
        shard.with_format(None).to_parquet(str(out / f"train-{i:05d}-of-{n:05d}.parquet"), batch_size=batch)
    return n


# ----------------------------------------------------------------------------- measuring a process tree


@dataclass
class Proc:
    pid: int
    label: str
    hwm_mb: float = 0.0  # VmHWM: the process's own high-water mark, last read
    rss_mb: float = 0.0  # largest VmRSS seen


@dataclass
class Measured:
    seconds: float
    started: float  # time.time() just before the command started
    procs: list[Proc] = field(default_factory=list)
    sum_rss_mb: float = 0.0  # the largest sum of the tree's RSS at one sample
    cpu: float = 0.0  # user + system seconds of the command and every descendant it waited for
    written: int = 0  # bytes of the copy or the shards
    stdout: str = ""
    stderr: str = ""

    @property
    def main_mb(self) -> float:
        return self.procs[0].hwm_mb if self.procs else 0.0

    @property
    def max_mb(self) -> float:
        return max((p.hwm_mb for p in self.procs), default=0.0)

    def children(self) -> list[Proc]:
        return self.procs[1:]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def _status(pid: int) -> tuple[float, float] | None:
    """(VmHWM, VmRSS) in MB, or None when the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM", "VmRSS")))
    except OSError:
        return None
    if "VmHWM" not in fields:
        return None
    return tuple(int(fields[k].split()[0]) * 1024 / MB for k in ("VmHWM", "VmRSS"))  # type: ignore[return-value]


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return None


def _label(argv: list[str]) -> str:
    text = " ".join(argv)
    if "resource_tracker" in text:
        return "resource tracker"
    if "multiprocessing" in text:
        return "worker"
    if "watch_orphans" in text:  # Dagster's compute log capture: a watcher of each tail
        return "log watcher"
    if argv and argv[0] == "tail":  # Dagster's compute log capture (stdout, stderr) of each step
        return "log tail"
    return " ".join(Path(a).name for a in argv[:2]) if argv and argv[0] else "?"


class TreeSampler(threading.Thread):
    """Samples the memory of a process and all its descendants every SAMPLE_SECONDS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = pid
        self.root_argv = _cmdline(pid)
        self.argv: dict[int, list[str]] = {}
        self.procs: dict[int, Proc] = {}
        self.sum_rss_mb = 0.0
        self.done = threading.Event()

    def sample(self) -> None:
        total = 0.0
        pending = [(self.root, None)]  # (pid, its parent's command line)
        while pending:
            pid, parent_argv = pending.pop()
            proc = self.procs.get(pid)
            argv = self.root_argv if pid == self.root else self.argv.get(pid) or _cmdline(pid)
            pending += [(child, argv) for child in _children(pid)]
            status = _status(pid)
            if status is None:
                continue
            if proc is None:
                if pid != self.root and (not any(argv or ()) or argv in (parent_argv, self.root_argv)):
                    # forked, not yet exec'd (Dagster's Popen of a log tail): its parent's pages,
                    # shared; it is sampled once it runs its own program
                    continue
                self.argv[pid] = argv or []
                proc = self.procs[pid] = Proc(pid, "main" if pid == self.root else _label(argv or []))
            proc.hwm_mb = max(proc.hwm_mb, status[0])
            proc.rss_mb = max(proc.rss_mb, status[1])
            total += status[1]
        self.sum_rss_mb = max(self.sum_rss_mb, total)

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.sample()


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run ``cmd`` to its end: wall seconds and the memory of its process tree."""
    started, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **ENV, **(env or {})}, cwd=cwd
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    # read both pipes on threads: a full pipe must never block the command
    out: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda name=name, pipe=pipe: out.__setitem__(name, pipe.read()), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    # the sampler's last look at a process is at most SAMPLE_SECONDS before its exit
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    for reader in readers:
        reader.join(60)
    proc.returncode = os.waitstatus_to_exitcode(status)
    measured = Measured(
        seconds=seconds,
        started=started,
        procs=sorted(sampler.procs.values(), key=lambda p: (p.label != "main", p.pid)),
        sum_rss_mb=sampler.sum_rss_mb,
        cpu=usage.ru_utime + usage.ru_stime,
        stdout=out.get("stdout", b"").decode(errors="replace"),
        stderr=out.get("stderr", b"").decode(errors="replace"),
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{measured.stderr[-5000:]}")
    if not measured.procs or measured.procs[0].label != "main":  # ended before the first sample
        # its ru_maxrss (which would start at this driver's size: small, see the module docstring)
        measured.procs.insert(0, Proc(proc.pid, "main", usage.ru_maxrss * 1024 / MB))
    return measured


# ----------------------------------------------------------------------------- methods (driver side)

CLI = str(Path(sys.executable).with_name("bids-hub-dagster"))


def cli_env(base: Path) -> dict[str, str]:
    return {"DAGSTER_HOME": str(base / "home"), "BIDS_HUB_STORAGE": str(base / "storage")}


def method_command(method: str, root: Path, out: Path, extra: list[str] = ()) -> tuple[list[str], dict]:
    if method == "cp":
        return ["cp", "-r", str(root), str(out / "copy")], {}
    if method == "push":
        return [
            sys.executable,
            __file__,
            "--child",
            "push",
            "--root",
            str(root),
            "--out",
            str(out / "push"),
        ], {}
    if method == "cli":
        cmd = [CLI, "publish", str(root), "--to", str(out / "published"), "--no-progress", *extra]
        return cmd, cli_env(out)
    raise ValueError(method)


def measure(
    method: str, root: Path, work: Path, caches: str, extra: list[str] = (), tag: str = ""
) -> tuple[Measured, Path]:
    """One method as a whole command on ``root``, in a fresh output folder (left for the caller)."""
    out = work / f"out-{root.name}-{method}{tag}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if caches == "drop":
        drop_caches()
    else:
        warm(root)
    cmd, env = method_command(method, root, out, list(extra))
    measured = run_measured(cmd, env)
    # what the method wrote: the copy, the parquet shards (ours: the published data/, not the preview)
    written = {"cp": out / "copy", "push": out / "push", "cli": out / "published" / "data"}[method]
    measured.written = sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    return measured, out


# ----------------------------------------------------------------------------- breakdown (child side)


def breakdown(home: Path) -> dict:
    """Runs, steps and hub_upload's metadata from the Dagster instance in ``home`` (JSON-able)."""
    import dagster as dg
    from dagster._core.events import DagsterEventType

    instance = dg.DagsterInstance.from_config(str(home))
    runs = []
    upload_meta: dict[str, object] = {}
    for record in instance.get_run_records():
        run = record.dagster_run
        steps: dict[str, dict[str, float]] = {}
        first = last = None
        logs = instance.all_logs(run.run_id)
        for entry in logs:
            first = entry.timestamp if first is None else min(first, entry.timestamp)
            last = entry.timestamp if last is None else max(last, entry.timestamp)
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            step = steps.setdefault(entry.step_key, {})
            if event.event_type == DagsterEventType.STEP_START:
                step["start"] = entry.timestamp
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                step["end"] = entry.timestamp
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                step.setdefault("materialized", []).append(entry.timestamp)
                meta = entry.asset_materialization.metadata
                if "verified_bytes" in meta:
                    upload_meta = {
                        k: getattr(v, "value", v)
                        for k, v in meta.items()
                        if k
                        in (
                            "duration_s",
                            "verified_files",
                            "verified_bytes",
                            "files_written",
                            "bytes_written",
                            "verification",
                        )
                    }
        runs.append(
            {
                "job": run.job_name,
                "partition": run.tags.get("dagster/partition")
                or "…".join(
                    run.tags.get(f"dagster/asset_partition_range_{end}", "?") for end in ("start", "end")
                ),
                "pid": run.tags.get("bids_hub/pid"),
                "status": run.status.value,
                "created": record.create_timestamp.timestamp(),
                "start": record.start_time,
                "end": record.end_time,
                "first_event": first,
                "last_event": last,
                "steps": steps,
            }
        )
    runs.sort(key=lambda r: r["created"])
    return {"runs": runs, "upload": upload_meta}


def read_breakdown(home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "breakdown", "--root", str(home)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **ENV, "DAGSTER_HOME": str(home)},
    ).stdout
    return json.loads(out.splitlines()[-1])


def _step_seconds(run: dict) -> dict[str, float]:
    """The run's finished steps: short name (the dataset key cut off) → seconds."""
    out = {}
    for key, step in run["steps"].items():
        if "start" in step and "end" in step:
            out[key.split("__", 1)[-1]] = step["end"] - step["start"]
    return out


def _run_rows(label: str, run: dict) -> list[tuple[str, float]]:
    steps = _step_seconds(run)
    rows = [(f"{label}: step {name}", seconds) for name, seconds in steps.items()]
    rows.append(
        (
            f"{label}: run overhead (create, start, events, end)",
            run["end"] - run["created"] - sum(steps.values()),
        )
    )
    return rows


def phases(data: dict, started: float, ended: float) -> list[tuple[str, float]]:
    """The command's wall time cut into phases, from the runs' and steps' timestamps.

    Rows whose name starts with "  of which" are sums over the shard runs (which run in
    parallel): they are parts of the shard phase above them, not of the wall time.
    """
    runs = data["runs"]
    prep = [r for r in runs if r["job"].endswith("_prepare")]
    shards = [r for r in runs if r["job"].endswith("_shards")]
    upload = [r for r in runs if r["job"].endswith("_upload")]
    if not prep or not upload:
        return []
    prep, upload = prep[0], upload[-1]
    out: list[tuple[str, float]] = []
    startup = prep["created"] - started
    out.append(("start: imports, instance, Definitions, spec (before the first run)", startup))
    out += _run_rows("index run (prepare)", prep)
    if shards:
        first = min(r["created"] for r in shards)
        last = max(r["end"] for r in shards)
        out.append(("between: staleness check, worker start", first - prep["end"]))
        pids = len({r["pid"] for r in shards})
        out.append(
            (f"shard runs: {len(shards)} in {pids} process(es), first's creation to last's end", last - first)
        )
        totals: dict[str, float] = {}
        for run in shards:
            steps = _step_seconds(run)
            for name, seconds in steps.items():
                name = "hub_shards" if name == "hub_shards" else "checks"
                totals[f"step {name}"] = totals.get(f"step {name}", 0.0) + seconds
            totals["run overhead"] = totals.get("run overhead", 0.0) + (
                run["end"] - run["created"] - sum(steps.values())
            )
        out += [(f"  of which, summed over the shard runs: {name}", sec) for name, sec in totals.items()]
        between = upload["created"] - last
    else:
        between = upload["created"] - prep["end"]
    out.append(("between: shard warnings, pool slot", between))
    out += _run_rows("upload run", upload)
    out.append(("exit (after the upload run)", ended - upload["end"]))
    return out


def shard_rows(data: dict) -> list[tuple[str, float, float, float, float, int]]:
    """Per shard run: (partitions, starts at, run seconds, hub_shards step, check steps, shards built)."""
    shards = [r for r in data["runs"] if r["job"].endswith("_shards")]
    if not shards:
        return []
    t0 = min(r["created"] for r in shards)
    rows = []
    for r in shards:
        steps = _step_seconds(r)
        build = steps.pop("hub_shards", float("nan"))
        built = sum(
            len(step.get("materialized", ()))
            for key, step in r["steps"].items()
            if key.endswith("__hub_shards")
        )
        rows.append(
            (r["partition"], r["created"] - t0, r["end"] - r["created"], build, sum(steps.values()), built)
        )
    return rows


# ----------------------------------------------------------------------------- fixed cost

IMPORT_SNIPPETS = {
    '`python -c "import dagster, datasets"`': "import dagster, datasets",
    "`publish`'s imports (dagster, datasets, tqdm, bids_hub_dagster.defs, .spec, .publish)": (
        "import dagster, datasets, tqdm\n"
        "import bids_hub_dagster.cli, bids_hub_dagster.defs, bids_hub_dagster.spec\n"
        "import bids_hub_dagster.defs.resources, bids_hub_dagster.defs.summaries\n"
        "import bids_hub_dagster.publish.publication"
    ),
    "`python -c pass` (the interpreter alone)": "pass",
}


def instance_start(home: Path) -> float:
    """Seconds to open the Dagster instance in ``home`` (created when new) and read its runs, after imports."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
    return time.perf_counter() - t0


def import_seconds(stderr: str) -> tuple[float, int]:
    """From ``-X importtime`` output: the seconds of the top-level imports, and the modules imported."""
    total, modules = 0, 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        modules += 1
        if not name[1:].startswith(" "):  # nested imports are indented
            total += int(cumulative)
    return total / 10**6, modules


def best_of(cmd: list[str], repeat: int) -> Measured:
    """The fastest of ``repeat`` runs of ``cmd``."""
    return min((run_measured(cmd) for _ in range(repeat)), key=lambda m: m.seconds)


# ----------------------------------------------------------------------------- tables


def fmt_mb(x: float) -> str:
    return f"{x:.0f}"


def size_table(gb: float, total: int, sessions: int, results: dict[str, list[Measured]], shards: int) -> str:
    cp = min(m.seconds for m in results["cp"]) if "cp" in results else None
    push = min(m.seconds for m in results["push"]) if "push" in results else None
    push_cpu = min(results["push"], key=lambda m: m.seconds).cpu if "push" in results else None
    lines = [
        f"**{gb:g} GB**: {sessions} sessions, {3 * sessions} `.nii` files, {total / MB:,.0f} MB; "
        f"{shards} shards of ≤ {MAX_SHARD_SIZE}",
        "",
        "| method | seconds (best) | every round | MB/s | vs push | vs cp | CPU s (best round) | CPU vs push "
        "| peak RSS MB: main | largest other process | child processes | sum of the tree (max) | MB written |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, runs in results.items():
        best = min(runs, key=lambda m: m.seconds)
        kids = [p for m in runs for p in m.children()]
        lines.append(
            f"| {DISPLAY[method]} | {best.seconds:.2f} | {', '.join(f'{m.seconds:.2f}' for m in runs)} | "
            f"{total / MB / best.seconds:.0f} | "
            f"{(f'{best.seconds / push:.2f}×') if push else ''} | {(f'{best.seconds / cp:.2f}×') if cp else ''} | "
            f"{best.cpu:.2f} | {(f'{best.cpu / push_cpu:.2f}×') if push_cpu else ''} | "
            f"{fmt_mb(max(m.main_mb for m in runs))} | "
            f"{fmt_mb(max(p.hwm_mb for p in kids)) if kids else '–'} | "
            f"{max(len(m.children()) for m in runs)} | {fmt_mb(max(m.sum_rss_mb for m in runs))} | "
            f"{best.written / MB:,.0f} |"
        )
    return "\n".join(lines)


DISPLAY = {
    "cp": "`cp -r`",
    "push": "datasets' push path (shard + embed + to_parquet)",
    "cli": "`bids-hub-dagster publish` (+ verify)",
}


def process_lines(measured: Measured) -> str:
    """The processes of the tree by kind: how many, and the largest's peak RSS in MB."""
    kinds: dict[str, list[float]] = {}
    for p in measured.procs:
        kinds.setdefault(p.label, []).append(p.hwm_mb)
    return ", ".join(
        f"{label} {max(mbs):.0f}" if len(mbs) == 1 else f"{len(mbs)} × {label} ≤ {max(mbs):.0f}"
        for label, mbs in kinds.items()
    )


def phase_table(title: str, rows: list[tuple[str, float]], wall: float) -> str:
    lines = [title, "", "| phase | seconds | share of the wall time |", "|---|---:|---:|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.2f} | {seconds / wall:.0%} |")
    lines.append(f"| **the command, wall** | **{wall:.2f}** | 100% |")
    return "\n".join(lines)


def shard_table(rows: list[tuple[str, float, float, float, float, int]]) -> str:
    lines = [
        "| shard run (partitions) | shards built | starts at s | run seconds | step hub_shards | check steps "
        "| run overhead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, start, run, build, checks, built in rows:
        lines.append(
            f"| {key} | {built} | {start:.2f} | {run:.2f} | {build:.2f} | {checks:.2f} "
            f"| {run - build - checks:.2f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- profile


#: (what, file name ending, function name): the parts of the command the profile summary adds up
PROFILE_PARTS = (
    ("imports (every `import`, nested ones counted once)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("Definitions built", "defs/definitions.py", "build_definitions"),
    ("the Dagster runs (`execute_in_process`), all of them", "job_definition.py", "execute_in_process"),
    ("  Dagster's event log: storing events (sqlite)", "sqlite_event_log.py", "store_event"),
    ("  Dagster's compute log capture (`tail` + watcher per run)", "compute_logs.py", "execute_posix_tail"),
    ("  bids_index step", "defs/assets.py", "bids_index"),
    ("  hf_dataset step", "defs/assets.py", "hf_dataset"),
    ("  hub_shards steps", "defs/assets.py", "hub_shards"),
    (
        "    `build_shard` (the row groups are embedded lazily, as the write pulls them)",
        "dataset/shards.py",
        "build_shard",
    ),
    ("    read, embed, write the parquet (`write_row_groups`)", "dataset/parquet.py", "write_row_groups"),
    ("  shard checks (`audit_shard_file`)", "dataset/audit.py", "audit_shard_file"),
    ("  hub_upload step", "defs/assets.py", "hub_upload"),
    ("    publish (`publish_shards`: card, links)", "publish/publication.py", "publish_shards"),
    ("    verification (`verify_after_publish`)", "publish/destinations.py", "verify_after_publish"),
    ("staleness check (`_shards_to_build`)", "bids_hub_dagster/cli.py", "_shards_to_build"),
    ("waiting on locks (threads, pools)", "~", "<method 'acquire' of '_thread.lock' objects>"),
)


def profile_summary(prof: Path) -> list[tuple[str, float]]:
    """Cumulative seconds of PROFILE_PARTS in a cProfile file (a part not found is left out)."""
    import pstats

    stats = pstats.Stats(str(prof)).stats  # (file, line, function) → (cc, nc, tottime, cumtime, callers)
    rows = [("the whole profile", max(ct for _, _, _, ct, _ in stats.values()))]
    for what, file, function in PROFILE_PARTS:
        found = [v[3] for (f, _, fn), v in stats.items() if f.endswith(file) and fn == function]
        if found:
            rows.append((what, sum(found)))
    return rows


def profile_cli(root: Path, work: Path, top: int) -> str:
    """cProfile of the CLI's one process (``--workers 1``: every run in it): the parts, then the top."""
    import io
    import pstats  # stdlib; the profile is read in this driver after the command ended

    out = work / "out-profile"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    prof = out / "cli.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), CLI, "publish", str(root)]
    cmd += [
        "--to",
        str(out / "published"),
        "--max-shard-size",
        MAX_SHARD_SIZE,
        "--no-progress",
        "--workers",
        "1",
    ]
    warm(root)
    # run from its folder: `python -m` puts the working directory first on sys.path
    measured = run_measured(cmd, cli_env(out), cwd=out)
    rows = profile_summary(prof)
    whole = rows[0][1]
    lines = [
        f"cProfile of `publish` with `--workers 1` (every run in the one process) on {root.name}: "
        f"{measured.seconds:.2f} s wall under the profiler",
        "",
        "| part (cumulative; indented parts are inside the one above) | seconds | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {what} | {seconds:.2f} | {seconds / whole:.0%} |" for what, seconds in rows]
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    (work / "profile.txt").write_text(text.getvalue())
    return "\n".join(lines) + f"\n\n(the top {top} entries: {work / 'profile.txt'})"


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="0.5,5", help='tree sizes in GB (10^9 bytes), comma-separated; "" for none'
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per size (methods interleaved); best shown"
    )
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "bids-publish-bench"),
        help="trees (kept between runs) and outputs",
    )
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop the page cache before each method (root)"
    )
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed-cost part")
    parser.add_argument("--fixed-repeat", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the CLI (--workers 1) on the first size"
    )
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the outputs (the trees are always kept)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--cli-args", default="", help="extra arguments for `publish` (e.g. '--workers 2')")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(Path(args.root), args.sessions, _templates(Path(args.out)))
        return
    if args.child == "session-bytes":
        print(session_bytes(_templates(Path(args.out))))
        return
    if args.child == "push":
        push_path(Path(args.root), Path(args.out))
        return
    if args.child == "instance":
        print(instance_start(Path(args.root)))
        return
    if args.child == "breakdown":
        print(json.dumps(breakdown(Path(args.root))))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    caches = "drop" if args.drop_caches else "warm"
    extra = ["--max-shard-size", MAX_SHARD_SIZE, *args.cli_args.split()]
    methods = args.methods.split(",")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}, page cache: {caches}")
    print(f"load average before: {os.getloadavg()}", flush=True)
    md: list[str] = []
    first_root = None
    cli_rss: dict[float, Measured] = {}
    for gb in (float(s) for s in args.sizes.split(",") if s.strip()):
        sessions = sessions_for(gb, work)
        root, total = tree(work, sessions)
        first_root = first_root or root
        print(f"\n== {gb:g} GB: {root} ({sessions} sessions, {total / MB:,.0f} MB)", flush=True)
        results: dict[str, list[Measured]] = {m: [] for m in methods}
        best_cli: tuple[Measured, Path] | None = None
        for r in range(args.repeat):
            for method in methods:
                measured, out = measure(
                    method, root, work, caches, extra if method == "cli" else [], tag=f"-r{r + 1}"
                )
                results[method].append(measured)
                print(
                    f"  round {r + 1} {method:<5} {measured.seconds:8.2f} s  CPU {measured.cpu:7.2f} s  "
                    f"peak RSS MB: {process_lines(measured)}"
                    f"; sum {measured.sum_rss_mb:.0f}",
                    flush=True,
                )
                if method == "cli":  # the fastest round's output is kept for its breakdown
                    if best_cli is None or measured.seconds < best_cli[0].seconds:
                        best_cli, out = (measured, out), best_cli[1] if best_cli else None
                if out is not None and not args.keep:
                    shutil.rmtree(out)
        shards = len(list((best_cli[1] / "published" / "data").glob("*.parquet"))) if best_cli else 0
        md.append(size_table(gb, total, sessions, {m: v for m, v in results.items() if v}, shards))
        if best_cli is not None:
            measured, out = best_cli
            cli_rss[gb] = measured
            data = read_breakdown(out / "home")
            ended = measured.started + measured.seconds
            md.append(
                phase_table(
                    f"Where the fastest `publish` of {gb:g} GB went ({measured.seconds:.2f} s):",
                    phases(data, measured.started, ended),
                    measured.seconds,
                )
            )
            md.append(shard_table(shard_rows(data)))
            md.append(f"hub_upload metadata: {json.dumps(data['upload'])}")
            md.append(f"processes (peak RSS MB): {process_lines(measured)}")
            if not args.keep:
                shutil.rmtree(out)
        print("\n\n".join(md[-5:]), flush=True)
    if len(cli_rss) > 1:
        lines = [
            "RSS of `publish` as the tree grows:",
            "",
            "| size | main MB | largest other process MB | sum of the tree MB (max) |",
            "|---|---:|---:|---:|",
        ]
        for gb, m in cli_rss.items():
            kids = [p.hwm_mb for p in m.children()]
            lines.append(f"| {gb:g} GB | {m.main_mb:.0f} | {max(kids, default=0):.0f} | {m.sum_rss_mb:.0f} |")
        md.append("\n".join(lines))
        print("\n" + md[-1], flush=True)

    if not args.no_fixed:
        md.append(fixed_cost(work, args.fixed_repeat, caches))
        print("\n" + md[-1], flush=True)
    if args.profile and first_root is not None:
        md.append(profile_cli(first_root, work, args.profile_top))
        print("\n" + md[-1], flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    text = "\n\n".join(md) + "\n"
    print("\n\n======== markdown ========\n\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def fixed_cost(work: Path, repeat: int, caches: str) -> str:
    """Imports beside the publish of a one-shard tree (rounds interleaved, best of ``repeat``), and
    the breakdown of the fastest publish."""
    root, total = tree(work, 2)
    commands = {name: [sys.executable, "-c", code] for name, code in IMPORT_SNIPPETS.items()}
    commands["`bids-hub-dagster --help`"] = [CLI, "--help"]
    rounds: dict[str, list[Measured]] = {name: [] for name in commands}
    publishes = []
    for _ in range(repeat):
        for name, cmd in commands.items():
            rounds[name].append(run_measured(cmd))
        measured, out = measure("cli", root, work, caches, ["--num-shards", "1"])
        publishes.append((measured, read_breakdown(out / "home")))
        shutil.rmtree(out)
    measured, data = min(publishes, key=lambda r: r[0].seconds)
    # the imports the command really makes (one more publish, under -X importtime)
    out = work / "out-importtime"
    if out.exists():
        shutil.rmtree(out)
    cmd, env = method_command("cli", root, out, ["--num-shards", "1"])
    traced = run_measured([sys.executable, "-X", "importtime", *cmd], env)
    shutil.rmtree(out)
    imported, modules = import_seconds(traced.stderr)
    # opening the instance: a fresh DAGSTER_HOME (a first publish), then the same again
    home = work / "out-instance"
    if home.exists():
        shutil.rmtree(home)
    opens = [
        float(
            subprocess.run(
                [sys.executable, __file__, "--child", "instance", "--root", str(home)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **ENV},
            ).stdout.split()[-1]
        )
        for _ in range(2)
    ]
    shutil.rmtree(home)
    best = {name: min(runs, key=lambda m: m.seconds) for name, runs in rounds.items()}
    name_publish = "`bids-hub-dagster publish` of the one-shard tree"
    best[name_publish] = measured
    rounds[name_publish] = [m for m, _ in publishes]
    base = best['`python -c "import dagster, datasets"`']
    lines = [
        f"**Fixed cost**: a one-shard tree (2 sessions, {total / MB:.0f} MB, `--num-shards 1`), "
        f"best of {repeat} (rounds interleaved)",
        "",
        "| command | seconds (best) | every round | vs `import dagster, datasets` | CPU s | CPU vs imports | "
        "peak RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, m in best.items():
        lines.append(
            f"| {name} | {m.seconds:.2f} | {', '.join(f'{r.seconds:.2f}' for r in rounds[name])} | "
            f"{m.seconds / base.seconds:.2f}× | {m.cpu:.2f} | {m.cpu / base.cpu:.2f}× | {m.max_mb:.0f} |"
        )
    lines += [
        "",
        f"- the publish's own imports (`python -X importtime`, one more run of {traced.seconds:.2f} s): "
        f"{imported:.2f} s, {modules} modules",
        f"- opening the Dagster instance after the imports (`DagsterInstance.get()` + one query): "
        f"{opens[0]:.2f} s in a fresh DAGSTER_HOME (sqlite databases created), {opens[1]:.2f} s in the same "
        "home again",
    ]
    rows = phases(data, measured.started, measured.started + measured.seconds)
    lines += ["", phase_table("Its breakdown (the fastest round):", rows, measured.seconds)]
    lines += ["", shard_table(shard_rows(data)), "", f"hub_upload metadata: {json.dumps(data['upload'])}"]
    lines.append(f"processes (peak RSS MB): {process_lines(measured)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
