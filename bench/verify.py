"""Verification of a local publish beside the disk's read speed, in one run.

    .venv/bin/python bench/verify.py [--sessions 50] [--repeat 3]

Builds bench/shards.py's tree of real ``.nii.gz`` images (a T1w and a bold run per session),
its shards (100 MB, pandas strategy) with the source files' digests hashed from the bytes the
build embeds (``publish.digests.SourceDigests`` as the embedder's ``on_file`` hook, as the
shard build records them), publishes them to a local folder (hard links), then times, best
of ``--repeat`` with the rounds interleaved, warm page cache:

- ``disk data``   ``dd iflag=direct`` of the published data files: the disk's own read speed
                  (O_DIRECT, past the page cache);
- ``cat data``    ``cat`` of the published data files to /dev/null: reading each byte once;
- ``cat both``    the same plus every source NIfTI file: what a read-back that hashes the
                  sources again has to read;
- ``sha256 data`` hashlib over the published files (8 MiB blocks): hashing each byte once;
- ``verify old``  ``verify_published`` hashing every source file again (no recorded digests);
- ``verify new``  ``verify_published`` with the digests the build recorded: each published
                  byte read once, no source byte.

Bytes read by each verify are counted from /proc/self/io (``rchar``), so the figure says
whether the sources were read.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 10**6


def _shards_bench():
    spec = importlib.util.spec_from_file_location("bench_shards", Path(__file__).with_name("shards.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rchar() -> int:
    """Bytes this process has read through read() calls so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def build_and_publish(root: Path, work: Path):
    """Index, build every shard (recording its sources' digests) and publish to ``work/published``."""
    from bids_hub_dagster.dataset import embed as embed_module
    from bids_hub_dagster.dataset.parquet import write_row_groups
    from bids_hub_dagster.dataset.shards import build_shard
    from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table
    from bids_hub_dagster.publish.destinations import LocalFolder
    from bids_hub_dagster.publish.digests import SourceDigests, record_digest
    from bids_hub_dagster.publish.publication import publish_shards
    from bids_hub_dagster.spec import spec_for_folder

    spec = spec_for_folder(root, max_shard_size=100 * MB)
    table = index_to_table(spec.build_index(gate=False))
    ds, plan = dataset_from_index(table), spec.shard_plan(table)
    store = work / "store"
    store.mkdir()
    plain = embed_module.STRATEGIES["pandas"]
    files = {}
    for key in plan.keys():
        digests = SourceDigests()

        def embed(part, features, on_file=None, digests=digests):
            def hook(path, data):
                digests(path, data)
                return on_file(path, data) if on_file is not None else None

            return plain(part, features, hook)

        embed_module.STRATEGIES["pandas"] = embed  # the wiring the shard build does with its hook
        try:
            shard = build_shard(ds, table, plan, key)
            written = write_row_groups(store / f"{key}.parquet", shard.schema, shard.groups, **shard.write_options)
        finally:
            embed_module.STRATEGIES["pandas"] = plain
        record_digest(written.path)
        digests.write(written.path)
        files[key] = written.path
    dest = LocalFolder(work / "published", sources=[root], tool_folders=[store])
    result = publish_shards(spec.name, table, plan, files, dest)
    return table, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build in this (new) folder and keep it, to compare later")
    args = parser.parse_args()

    from bids_hub_dagster.publish.digests import CHANGE_MARGIN_NS, load_source_digests
    from bids_hub_dagster.publish.verify import verify_published

    shards_bench = _shards_bench()
    with tempfile.TemporaryDirectory(prefix="bids-bench-verify-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        if args.keep is not None:
            work.mkdir(parents=True)
            import pyarrow.parquet as pq
        root = work / "ds"
        nifti_bytes = shards_bench.generate(root, args.sessions, shards_bench._templates(work / "templates"))
        time.sleep(CHANGE_MARGIN_NS / 1e9 + 0.5)  # sources older than the build: their digests are kept
        t0 = time.perf_counter()
        table, result = build_and_publish(root, work)
        print(f"tree: {args.sessions} sessions, {nifti_bytes / MB:.0f} MB of NIfTI; "
              f"{len(result.shard_files)} shards built and published in {time.perf_counter() - t0:.1f} s")
        published = sorted(str(p) for p in (work / "published" / "data").glob("*.parquet"))
        sources = sorted(str(p) for p in root.rglob("*.nii.gz"))
        data_bytes = sum(Path(p).stat().st_size for p in published)
        recorded = load_source_digests(result.shard_files)
        if args.keep is not None:
            pq.write_table(table, work / "index.parquet")

        def cat(paths):
            subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)

        def sha_all():
            for p in published:
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    while block := fh.read(8 * 2**20):
                        h.update(block)

        reads: dict[str, int] = {}
        reports = {}

        def verify(name, digests):
            def run():
                before = rchar()
                reports[name] = verify_published(str(work / "published"), table, source_digests=digests)
                reads[name] = rchar() - before

            return run

        def disk(paths):
            for p in paths:
                subprocess.run(
                    ["dd", f"if={p}", "of=/dev/null", "bs=8M", "iflag=direct"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                )

        methods = {
            "disk data": lambda: disk(published),
            "cat data": lambda: cat(published),
            "cat both": lambda: cat(published + sources),
            "sha256 data": sha_all,
            "verify old": verify("verify old", None),
            "verify new": verify("verify new", recorded),
        }
        cat(published + sources)  # warm the page cache: every method reads from memory
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeat):
            for name, fn in methods.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        base = min(times["disk data"])
        print(f"published data: {len(published)} files, {data_bytes / MB:.0f} MB; "
              f"{len(recorded)} source digests recorded by the build")
        print(f"{'method':<12} {'best s':>8} {'MB/s':>8} {'vs disk data':>13} {'MB read':>9}  note")
        for name, runs in times.items():
            best = min(runs)
            note = ""
            if name in reports:
                r = reports[name]
                note = (f"{'OK' if r.ok else 'FAILED'}; {r.digests_reused} digests reused, "
                        f"{r.sources_hashed} sources hashed")
            read = f"{reads[name] / MB:.0f}" if name in reads else ""
            print(f"{name:<12} {best:>8.2f} {data_bytes / MB / best:>8.0f} {best / base:>12.2f}x {read:>9}  {note}")


if __name__ == "__main__":
    sys.exit(main())
