"""Shard-building benchmark: ours against cp, datasets' push_to_hub path and the seed loop.

    .venv/bin/python bench/shards.py                       # 200 sessions of ~10 MB, then 10x that
    .venv/bin/python bench/shards.py --sessions 50 --scales 1   # a quick look

Generates a BIDS tree of real NIfTI content (brain-like int16 volumes written by
nibabel: a T1w and a bold run per session, ``.nii.gz`` as OpenNeuro ships them), then
runs each method in a child process on the same tree and the same shard count, and
prints wall time, throughput and the child's peak RSS side by side:

1. ``cp``            ``cp -r`` of the same files: the floor on this disk
2. ``datasets``      ``Dataset.shard`` + ``map(embed_table_storage, batched=True)`` +
                     ``to_parquet``, as ``push_to_hub`` does it (datasets 5.2)
3. ``seed``          the plain pandas workaround on whole shards, then ``pq.write_table``
4. ``core-pandas``   ours, ``build_shard`` + ``write_row_groups``, pandas strategy
   ``core-arrow``    the same, arrow strategy
   ``dagster-pandas`` ours through Dagster: one run per shard partition, in-process
   ``dagster-arrow``

With ``--drop-caches`` (root only) the page cache is dropped before each method, so
every method reads from the disk; otherwise every method reads a warm cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("cp", "datasets", "seed", "core-pandas", "core-arrow", "dagster-pandas", "dagster-arrow")
MB = 10**6


# ----------------------------------------------------------------------------- tree


def _brain(shape: tuple[int, ...], seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    spatial = shape[:3]
    z, y, x = np.ogrid[-1 : 1 : spatial[0] * 1j, -1 : 1 : spatial[1] * 1j, -1 : 1 : spatial[2] * 1j]
    mask = (x**2 / 0.6 + y**2 / 0.8 + z**2 / 0.7) < 1
    base = np.where(mask, 600 + 200 * np.sin(5 * x + seed) * np.cos(4 * y), 0)
    if len(shape) == 4:
        base = base[..., None] + np.zeros(shape[3])
    noise = rng.normal(0, 30, shape)
    return np.where(base > 0, base + noise, np.abs(noise) / 10).astype("int16")


def _templates(folder: Path) -> dict[str, list[Path]]:
    """Three T1w and three bold images (real NIfTI-1 written by nibabel)."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"T1w": [], "bold": []}
    for i in range(3):
        for kind, shape in (("T1w", (176, 208, 176)), ("bold", (64, 64, 36, 30))):
            path = folder / f"{kind}{i}.nii.gz"
            if not path.exists():
                raw = nib.Nifti1Image(_brain(shape, i), np.eye(4)).to_bytes()
                path.write_bytes(gzip.compress(raw, compresslevel=1))
            out[kind].append(path)
    return out


def generate(root: Path, sessions: int, templates: dict[str, list[Path]]) -> int:
    """A BIDS tree of ``sessions`` sessions (two per subject); returns its bytes of NIfTI."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    total = 0
    for s in range(sessions):
        sub, ses = f"sub-{s // 2 + 1:05d}", f"ses-{s % 2 + 1}"
        for kind, datatype, name in (("T1w", "anat", "T1w"), ("bold", "func", "task-rest_bold")):
            dest = root / sub / ses / datatype / f"{sub}_{ses}_{name}.nii.gz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = templates[kind][s % 3]
            shutil.copyfile(src, dest)
            total += src.stat().st_size
    return total


# ----------------------------------------------------------------------------- methods (child side)


def _spec(root: Path, out: Path):
    from bids_hub_dagster.spec import spec_for_folder

    return spec_for_folder(root, destination=str(out / "published"))


def _plan(spec):
    from bids_hub_dagster.dataset.tables import dataset_from_index, index_to_table

    table = index_to_table(spec.build_index())
    return table, dataset_from_index(table), spec.shard_plan(table)


def import_for(method: str) -> None:
    """Import what a method needs before its clock starts: interpreter start-up is not the method."""
    if method == "cp":
        return
    import datasets  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import bids_hub_dagster.dataset.shards  # noqa: F401
    import bids_hub_dagster.spec  # noqa: F401

    if method.startswith("dagster-"):
        import dagster  # noqa: F401

        import bids_hub_dagster.defs  # noqa: F401


def run_method(method: str, root: Path, out: Path) -> int:
    """Build every shard of ``root`` into ``out`` with ``method`` (index and plan included).

    Returns the number of shards written.
    """
    out.mkdir(parents=True, exist_ok=True)
    if method == "cp":
        subprocess.run(["cp", "-r", str(root), str(out / "copy")], check=True)
        return 0
    spec = _spec(root, out)
    if method.startswith("dagster-"):
        import dagster as dg

        from bids_hub_dagster.defs import build_definitions, names

        spec = spec.with_overrides(shard_strategy=method.split("-")[1])
        defs = build_definitions([spec], storage_dir=str(out / "storage"))
        jobs = names(spec).jobs
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        with dg.instance_for_test() as instance:
            assert (
                defs.resolve_job_def(jobs.prepare)
                .execute_in_process(instance=instance, run_config=quiet)
                .success
            )
            keys = instance.get_dynamic_partitions(names(spec).shard_partitions)
            job = defs.resolve_job_def(jobs.shards)
            for key in keys:
                assert job.execute_in_process(instance=instance, partition_key=key, run_config=quiet).success
        return len(keys)
    table, ds, plan = _plan(spec)
    n = plan.num_shards
    if method.startswith("core-"):
        from bids_hub_dagster.dataset.parquet import write_row_groups
        from bids_hub_dagster.dataset.shards import build_shard

        for key in plan.keys():
            shard = build_shard(ds, table, plan, key, shard_strategy=method.split("-")[1])
            write_row_groups(out / f"{key}.parquet", shard.schema, shard.groups, **shard.write_options)
        return n
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.arrow_writer import (
        get_writer_batch_size_from_data_size,
        get_writer_batch_size_from_features,
    )
    from datasets.table import embed_table_storage

    if method == "datasets":
        nbytes = sum(plan.sizes)
        batch = get_writer_batch_size_from_features(ds.features) or get_writer_batch_size_from_data_size(
            len(ds), nbytes
        )
        for i in range(n):
            shard = ds.shard(num_shards=n, index=i, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True, batch_size=batch, keep_in_memory=True)
            shard.with_format(None).to_parquet(
                str(out / f"train-{i:05d}-of-{n:05d}.parquet"), batch_size=batch
            )
        return n
    if method == "seed":
        for i in range(n):
            shard = ds.shard(num_shards=n, index=i, contiguous=True)
            fresh = Dataset.from_pandas(shard.to_pandas(), preserve_index=False).cast(ds.features)
            embedded = embed_table_storage(fresh._data.table.combine_chunks())
            pq.write_table(embedded, out / f"train-{i:05d}-of-{n:05d}.parquet")
        return n
    raise ValueError(method)


# ----------------------------------------------------------------------------- driver


def run_child(script: str, args: list[str]) -> tuple[str, float]:
    """Run ``script`` with ``args`` in a fresh Python: its stdout, and its peak RSS in MB."""
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"},
    )
    stdout = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    if status != 0:
        raise RuntimeError(f"{args} failed with status {status}: {stdout}")
    return stdout, usage.ru_maxrss / 1024


def measure(method: str, root: Path, out: Path, drop_caches: bool) -> tuple[float, float, int]:
    """(seconds, peak RSS MB of the child, shards) for one method in a fresh child process.

    The seconds are timed inside the child from after its imports to the last byte
    written; the RSS is the child's high-water mark (the parent stays small, since
    Linux carries it over into a forked child).
    """
    if drop_caches:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    stdout, rss = run_child(__file__, ["--child", method, "--root", str(root), "--out", str(out)])
    seconds, shards = stdout.split()[-2:]
    return float(seconds), rss, int(shards)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=200, help="sessions at scale 1 (~10 MB each)")
    parser.add_argument("--scales", default="1,10", help="comma-separated multiples of --sessions")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--big-methods", default="cp,datasets,core-pandas,core-arrow", help="methods run at scales > 1"
    )
    parser.add_argument("--workdir", default=None, help="where trees and outputs go (default: a temp dir)")
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop the page cache before each method (root)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import_for(args.child)
        t0 = time.perf_counter()
        shards = run_method(args.child, Path(args.root), Path(args.out))
        print(time.perf_counter() - t0, shards)
        return
    if args.generate:
        print(generate(Path(args.root), args.generate, _templates(Path(args.out))))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bids-shard-bench-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}")
    print(f"page cache: {'dropped before each method' if args.drop_caches else 'warm'}")
    for scale in (int(s) for s in args.scales.split(",")):
        root = work / f"bids-x{scale}"
        if root.exists():
            shutil.rmtree(root)
        # generated in a child, so that this process stays small (see measure)
        gen = [sys.executable, __file__, "--generate", str(args.sessions * scale), "--root", str(root)]
        total = int(
            subprocess.run(
                [*gen, "--out", str(work / "templates")], capture_output=True, text=True, check=True
            ).stdout
        )
        methods = args.methods.split(",") if scale == 1 else args.big_methods.split(",")
        print(f"\nscale x{scale}: {args.sessions * scale} sessions, {total / MB:.0f} MB of NIfTI")
        print(
            f"{'method':<16} {'shards':>6} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12} {'vs cp':>7} {'vs datasets':>12}"
        )
        results = {}
        for method in methods:
            out = work / f"out-x{scale}-{method}"
            wall, rss, shards = measure(method, root, out, args.drop_caches)
            results[method] = (wall, rss, shards)
            shutil.rmtree(out)
            cp = results.get("cp", (None,))[0]
            ds = results.get("datasets", (None,))[0]
            print(
                f"{method:<16} {shards:>6} {wall:>8.2f} {total / MB / wall:>8.0f} {rss:>12.0f} "
                f"{(f'{wall / cp:.2f}x') if cp else '':>7} {(f'{wall / ds:.2f}x') if ds else '':>12}",
                flush=True,
            )
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
