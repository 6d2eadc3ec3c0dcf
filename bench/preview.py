"""Preview cost: publishing with the preview config (thumbnails) against without it.

    .venv/bin/python bench/preview.py                          # 100 sessions, every method
    .venv/bin/python bench/preview.py --sessions 50 --methods core-arrow-off,core-arrow-on
    .venv/bin/python bench/preview.py --profile                # + cProfile of core-arrow-on

Generates bench/shards.py's tree (a T1w and a bold run per session, brain-like int16
volumes written by nibabel, ``.nii.gz`` at gzip level 1), then runs each method in its own
child process on the same tree, side by side, and prints seconds, the ratio on/off, the
child's peak RSS and the number of thumbnails made:

``core-{pandas,arrow}-{off,on}``
    ``build_shard`` + ``write_row_groups`` of every shard, then (preview on) the shard's
    preview table written and its digest recorded, as ``BidsHubParquetIOManager.store_shard``
    does it. The index table is made with ``index_to_table(index, preview=off|on)``; the
    index and the plan are made before the clock starts (the same work either way).
``cli-{off,on}``
    the whole ``bids-hub-dagster publish --spec SPEC`` command as a user times it (fresh
    ``DAGSTER_HOME`` and ``BIDS_HUB_STORAGE`` each), with ``preview: {enabled: false}`` in
    the spec, or the default (on). Wall time from the parent, peak RSS from
    ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process (the command's largest process).

``pass-{off,on}``
    the shared pass alone, on one thread, every file already in memory:
    ``check_file_bytes(path, data, consume)`` with ``consume`` = a ``ThumbnailBuilder``'s
    (on, then ``finish()``: the PNG) or None (off): what a thumbnail adds to the gzip check.

``--profile`` runs cProfile on the core build with the preview on, made serial (the
embedders' check threads and the prefetch thread replaced by a synchronous executor, so
that the profile sees every call), and prints the top entries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shards import MB, run_child  # noqa: E402  (bench/shards.py: its tree via --generate, its child runner)

METHODS = (
    "core-pandas-off",
    "core-pandas-on",
    "core-arrow-off",
    "core-arrow-on",
    "cli-off",
    "cli-on",
    "pass-off",
    "pass-on",
)


# ----------------------------------------------------------------------------- child side


def _prepare(root: Path, preview: bool):
    from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table
    from bids_hub_dagster.spec import spec_for_folder

    spec = spec_for_folder(root)
    table = index_to_table(spec.build_index(gate=False), preview=preview)
    return table, dataset_from_index(table), spec.shard_plan(table)


def _thumbnails(tables) -> int:
    """Thumbnail cells that hold a PNG, over preview tables."""
    n = 0
    for table in tables:
        for name in table.column_names:
            if name.endswith("_thumbnail"):
                for cell in table.column(name).to_pylist():
                    cells = cell if isinstance(cell, list) else [cell]
                    n += sum(1 for c in cells if c is not None and c.get("bytes"))
    return n


def core(strategy: str, table, ds, plan, out: Path) -> tuple[int, int]:
    """Every shard built and written (preview too when the table says so): (shards, thumbnails)."""
    import pyarrow as pa

    from bids_hub_dagster.dataset.parquet import write_row_groups, write_table
    from bids_hub_dagster.dataset.shards import build_shard
    from bids_hub_dagster.defs.io_managers import preview_file
    from bids_hub_dagster.publish.digests import record_digest

    out.mkdir(parents=True, exist_ok=True)
    thumbs = 0
    for key in plan.keys():
        shard = build_shard(ds, table, plan, key, shard_strategy=strategy)
        written = write_row_groups(out / f"{key}.parquet", shard.schema, shard.groups, **shard.write_options)
        if shard.preview_schema is not None:  # as store_shard does it
            previews = (
                pa.concat_tables(shard.preview_tables)
                if shard.preview_tables
                else shard.preview_schema.empty_table()
            )
            record_digest(write_table(preview_file(written.path), previews.cast(shard.preview_schema)).path)
            thumbs += _thumbnails([previews])
    return plan.num_shards, thumbs


def shared_pass(root: Path, on: bool) -> tuple[float, int, int]:
    """(seconds, files, thumbnails) of the gzip check alone, thumbnails made on it or not."""
    from bids_hub_dagster.dataset.nifti import check_file_bytes
    from bids_hub_dagster.dataset.preview import ThumbnailBuilder

    files = [(str(p), p.read_bytes()) for p in sorted(root.rglob("*.nii.gz"))]
    thumbs = 0
    t0 = time.perf_counter()
    for path, data in files:
        builder = ThumbnailBuilder(path) if on else None
        check_file_bytes(path, data, builder.consume if builder else None)
        if builder is not None and builder.finish() is not None:
            thumbs += 1
    return time.perf_counter() - t0, len(files), thumbs


class _SerialExecutor:
    """A ThreadPoolExecutor that runs each call at once, in the caller's thread (for cProfile)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, fn, *args, **kwargs):
        import concurrent.futures

        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001  (handed over as the future's)
            future.set_exception(exc)
        return future

    def shutdown(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def child(method: str, root: Path, out: Path, profile: bool) -> None:
    import bids_hub_dagster.dataset.shards  # noqa: F401  imports before the clock
    import bids_hub_dagster.defs.io_managers  # noqa: F401
    import bids_hub_dagster.spec  # noqa: F401

    if method.startswith("pass-"):
        seconds, files, thumbs = shared_pass(root, method == "pass-on")
        print(seconds, files, thumbs)
        return
    _, strategy, onoff = method.split("-")
    table, ds, plan = _prepare(root, onoff == "on")
    t0 = time.perf_counter()
    if profile:
        import concurrent.futures
        import cProfile
        import pstats

        concurrent.futures.ThreadPoolExecutor = _SerialExecutor  # every call in this thread

        prof = cProfile.Profile()
        prof.enable()
        shards, thumbs = core(strategy, table, ds, plan, out)
        prof.disable()
        seconds = time.perf_counter() - t0
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(35)
        stats.sort_stats("tottime").print_stats(25)
    else:
        shards, thumbs = core(strategy, table, ds, plan, out)
        seconds = time.perf_counter() - t0
    print(seconds, shards, thumbs)


# ----------------------------------------------------------------------------- CLI


def preview_thumbnails(dest: Path) -> int:
    import pyarrow.parquet as pq

    files = sorted(dest.rglob("preview/*.parquet")) or sorted(
        p for p in dest.rglob("*.parquet") if "preview" in p.as_posix()
    )
    return _thumbnails(pq.read_table(f) for f in files)


def cli(onoff: str, root: Path, work: Path) -> tuple[float, float, int, int]:
    """(seconds, peak RSS MB, shards, thumbnails) of the publish command, preview ``onoff``."""
    base = work / f"cli-{onoff}"
    if base.exists():
        shutil.rmtree(base)
    (base / "home").mkdir(parents=True)
    dest = base / "published"
    spec = {"bids_root": str(root), "destination": str(dest)}
    if onoff == "off":
        spec["preview"] = {"enabled": False}
    (base / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    exe = Path(sys.executable).with_name("bids-hub-dagster")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(base / "home"),
        "BIDS_HUB_STORAGE": str(base / "storage"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    # A wrapper process, so that its RUSAGE_CHILDREN is the command's own high-water mark
    # (this driver's children so far do not count in it).
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "t = time.perf_counter() - t0\n"
        "if p.returncode: sys.stderr.write(p.stdout + p.stderr); sys.exit(p.returncode)\n"
        "sys.stderr.write(p.stderr[-3000:])\n"
        "print(t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    cmd = [str(exe), "publish", "--spec", str(base / "spec.yaml"), "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    (base / "stderr.txt").write_text(proc.stderr)
    seconds, rss = (float(x) for x in proc.stdout.split()[-2:])
    shards = len(list((dest / "data").rglob("*.parquet"))) if (dest / "data").exists() else -1
    return seconds, rss, shards, preview_thumbnails(dest)


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeat", type=int, default=1, help="best of N per method (rounds interleaved)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--profile", action="store_true", help="cProfile core-arrow-on (and pandas) after")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.root), Path(args.out), args.profile)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bids-preview-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "bids"
    if root.exists():
        shutil.rmtree(root)
    shards_py = str(Path(__file__).resolve().parent / "shards.py")
    gen = [sys.executable, shards_py, "--generate", str(args.sessions), "--root", str(root)]
    total = int(
        subprocess.run(
            [*gen, "--out", str(work / "templates")], capture_output=True, text=True, check=True
        ).stdout
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}")
    print(
        f"tree: {args.sessions} sessions, {2 * args.sessions} .nii.gz files, {total / MB:.0f} MB; warm page cache"
    )
    methods = args.methods.split(",")
    best: dict[str, tuple[float, float, int, int]] = {}
    for round_ in range(args.repeat):
        for method in methods:
            if method.startswith("cli-"):
                result = cli(method.split("-")[1], root, work)
            else:
                out = work / f"out-{method}"
                stdout, rss = run_child(__file__, ["--child", method, "--root", str(root), "--out", str(out)])
                seconds, shards, thumbs = stdout.split()[-3:]
                result = (float(seconds), rss, int(shards), int(thumbs))
                shutil.rmtree(out, ignore_errors=True)
            print(f"  round {round_ + 1} {method:<16} {result[0]:8.2f} s {result[1]:7.0f} MB", flush=True)
            if method not in best or result[0] < best[method][0]:
                best[method] = result
    print(
        f"\n{'method':<16} {'shards':>6} {'seconds':>8} {'MB/s':>6} {'peak RSS MB':>12} {'thumbnails':>10} {'on/off':>7}"
    )
    for method in methods:
        seconds, rss, shards, thumbs = best[method]
        off = best.get(method.rsplit("-", 1)[0] + "-off")
        ratio = f"{seconds / off[0]:.2f}x" if method.endswith("-on") and off else ""
        print(
            f"{method:<16} {shards:>6} {seconds:>8.2f} {total / MB / seconds:>6.0f} {rss:>12.0f} "
            f"{thumbs:>10} {ratio:>7}"
        )
    if args.profile:
        for method in ("core-arrow-on", "core-pandas-on"):
            out = work / "out-profile"
            print(f"\ncProfile of {method}:", flush=True)
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    method,
                    "--root",
                    str(root),
                    "--out",
                    str(out),
                    "--profile",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            print(proc.stderr)
            shutil.rmtree(out, ignore_errors=True)
    if not args.keep and not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
