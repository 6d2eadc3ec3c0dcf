"""What the full gzip check costs a shard build: every `.nii.gz` decompressed once, CRC-32 and length.

    .venv/bin/python bench/gzip_check.py                          # 80 sessions (~0.7 GB), under 2 min
    .venv/bin/python bench/gzip_check.py --sessions 30 --repeat 1  # a quick look

Builds every shard of one generated tree (bench/shards.py's: per session a T1w and a bold
run, brain-like int16 volumes written by nibabel and gzipped, as OpenNeuro ships them) with
``build_shard`` + ``write_row_groups``, for each embedding strategy with the check on (as
shipped) and off (``dataset.embed.check_file_bytes`` replaced by a no-op in the child: the
build as it was before the check). Each build runs in its own child process, best of
``--repeat``; the page cache is warm. Printed side by side: seconds, MB/s of `.nii.gz`,
the child's peak RSS, and the ratio to the same strategy without the check.

Then the audit of the built shards read back (the ``shard_files_are_nifti`` asset check):
the full check beside the header-only check it did before. Then the check alone, on the
same files already in memory: ``check_gzip_bytes`` (bounded
pieces, nothing kept) beside Python's ``gzip.decompress`` (the whole image at once), in
MB/s of compressed input and of decompressed output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = ("core-pandas", "core-arrow")
MB = 10**6


def _child_build(strategy: str, check: bool, root: Path, out: Path) -> str:
    import datasets  # noqa: F401  imports before the clock: interpreter start-up is not the build

    import bids_hub_dagster.dataset.embed as embed
    from bids_hub_dagster.dataset.parquet import write_row_groups
    from bids_hub_dagster.dataset.shards import build_shard
    from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table
    from bids_hub_dagster.spec import spec_for_folder

    if not check:
        embed.check_file_bytes = lambda path, data: None
    t0 = time.perf_counter()
    spec = spec_for_folder(root, destination=str(out / "published"))
    table = index_to_table(spec.build_index())
    ds = dataset_from_index(table)
    plan = spec.shard_plan(table)
    out.mkdir(parents=True, exist_ok=True)
    for key in plan.keys():
        shard = build_shard(ds, table, plan, key, shard_strategy=strategy)
        write_row_groups(out / f"{key}.parquet", shard.schema, shard.groups, **shard.write_options)
    return f"{time.perf_counter() - t0} {plan.num_shards}"


def _child_check_alone(root: Path) -> str:
    import concurrent.futures
    import gzip

    from bids_hub_dagster.dataset.nifti import CHECK_THREADS, check_gzip_bytes

    files = [p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))]
    t0 = time.perf_counter()
    raw = sum(check_gzip_bytes(data).size for data in files)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        list(pool.map(check_gzip_bytes, files))
    threads = time.perf_counter() - t0
    t0 = time.perf_counter()
    for data in files:
        gzip.decompress(data)
    python = time.perf_counter() - t0
    return f"{ours} {threads} {CHECK_THREADS} {python} {sum(map(len, files))} {raw}"


def _header_only_problem(data: bytes | None, name: str) -> str | None:
    """The audit's cell check as it was before the full check: the header of the first 64 KB."""
    import zlib

    from bids_hub_dagster.dataset.nifti import _expected_data_end

    if not data:
        return "empty"
    header = data[:544]
    if name.lower().endswith(".gz"):
        try:
            header = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
        except zlib.error as exc:
            return f"not a valid gzip stream ({exc})"
    return None if _expected_data_end(header) else "not NIfTI"


def _child_audit(shards: Path, check: bool) -> str:
    import bids_hub_dagster.dataset.audit as audit

    if not check:
        audit.nifti_bytes_problem = _header_only_problem
    t0 = time.perf_counter()
    cells = 0
    for path in sorted(shards.glob("*.parquet")):
        result = audit.audit_shard_file(path)
        assert not result.problems, result.problems
        cells += result.cells
    return f"{time.perf_counter() - t0} {cells}"


def _run_child(args: list[str]) -> tuple[list[str], float]:
    """Run this script as a child; its last stdout line split, and its peak RSS in MB."""
    from shards import run_child  # bench/shards.py (the script's folder is on sys.path)

    stdout, rss = run_child(__file__, args)
    return stdout.split("\n")[-2].split(), rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sessions", type=int, default=80, help="sessions in the tree (~9 MB of .nii.gz each)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="builds per method; the best is shown")
    parser.add_argument("--workdir", default=None, help="where the tree and outputs go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--check", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "audit":
        print(_child_audit(Path(args.out), args.check == "on"))
        return
    if args.child == "check-alone":
        print(_child_check_alone(Path(args.root)))
        return
    if args.child:
        print(_child_build(args.child.split("-")[1], args.check == "on", Path(args.root), Path(args.out)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bids-gzip-bench-"))
    root = work / "bids"
    if root.exists():
        shutil.rmtree(root)
    generate = [
        sys.executable,
        str(HERE / "shards.py"),
        "--generate",
        str(args.sessions),
        "--root",
        str(root),
    ]
    total = int(
        subprocess.run(
            [*generate, "--out", str(work / "templates")], capture_output=True, text=True, check=True
        ).stdout
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}, page cache warm")
    print(f"{args.sessions} sessions, {total / MB:.0f} MB of .nii.gz, best of {args.repeat}\n")
    print(
        f"{'method':<14} {'check':>5} {'shards':>6} {'seconds':>8} {'MB/s':>6} {'peak RSS MB':>12} {'vs off':>7}"
    )
    for build in BUILDS:
        best: dict[str, tuple[float, float, int]] = {}
        for _ in range(args.repeat):
            for check in ("off", "on"):  # interleaved: both see the same machine weather
                out = work / f"out-{build}-{check}"
                (seconds, shards), rss = _run_child(
                    ["--child", build, "--check", check, "--root", str(root), "--out", str(out)]
                )
                shutil.rmtree(out)
                if check not in best or float(seconds) < best[check][0]:
                    best[check] = (float(seconds), rss, int(shards))
        for check in ("off", "on"):
            seconds, rss, shards = best[check]
            ratio = seconds / best["off"][0]
            print(
                f"{build:<14} {check:>5} {shards:>6} {seconds:>8.2f} {total / MB / seconds:>6.0f} "
                f"{rss:>12.0f} {ratio:>6.2f}x",
                flush=True,
            )
    shards = work / "out-audit"  # the shards of one build, read back as the asset check does
    _run_child(["--child", "core-arrow", "--check", "on", "--root", str(root), "--out", str(shards)])
    print(f"\n{'audit of the shards':<22} {'seconds':>8} {'MB/s':>6} {'vs header only':>15}")
    audits = {}
    for check, label in (("off", "header only (before)"), ("on", "full gzip check")):
        (seconds, _cells), _ = _run_child(["--child", "audit", "--check", check, "--out", str(shards)])
        audits[check] = float(seconds)
        print(
            f"{label:<22} {audits[check]:>8.2f} {total / MB / audits[check]:>6.0f} "
            f"{audits[check] / audits['off']:>14.2f}x",
            flush=True,
        )
    shutil.rmtree(shards)
    (ours, threads, n, python, compressed, raw), _ = _run_child(
        ["--child", "check-alone", "--root", str(root)]
    )
    compressed, raw = int(compressed), int(raw)
    print(f"\nthe check alone, files in memory: {compressed / MB:.0f} MB .nii.gz -> {raw / MB:.0f} MB raw")
    for name, seconds in (
        ("check_gzip_bytes", float(ours)),
        (f"  on {n} threads", float(threads)),
        ("gzip.decompress", float(python)),
    ):
        print(
            f"{name:<18} {seconds:>6.2f} s  {compressed / MB / seconds:>5.0f} MB/s in  "
            f"{raw / MB / seconds:>5.0f} MB/s out"
        )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
