"""The privacy gate's own cost: indexing with the gate against without it.

    .venv/bin/python bench/gate.py                                  # 20k-file tree + 100-session shard tree
    .venv/bin/python bench/gate.py --files 5000 --shard-sessions 0 --repeat 2   # a quick look

The gate (``bids.privacy.run_gate``) scans every published sidecar and table and reads
every NIfTI header with ``nibabel.load`` (header only, on a pool of ``workers=4``
threads). bench/index.py's tree is made of empty files, which nibabel cannot read (the
gate would skip each at once), so this bench writes its own trees of real NIfTI:

``small``  bench/index.py's layout (per session a T1w, a FLAIR and 10 bold runs each
           with a JSON sidecar, a top-level sidecar, participants.tsv), every image a copy
           of one 4×4×4 int16 ``.nii.gz`` (NIfTI-1) of 169 bytes;
``shards`` bench/shards.py's tree (a T1w and a bold run per session, brain-like volumes
           of 3–6 MB as ``.nii.gz``).

Each method runs in its own child process after its imports, best of ``--repeat``
(rounds interleaved), side by side:

``index-nogate``  ``DatasetSpec.build_index(gate=False)`` of the zero-config spec
``index-gate``    ``DatasetSpec.build_index(gate=True)`` (the default of every command)
``headers-wN``    the header scan alone: ``run_gate`` over the image list only (no
                  sidecars, no tables) with ``workers=N``, N = 1, 2, 4
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import RUNS_PER_SESSION, generate  # noqa: E402  (bench/index.py's layout)
from shards import run_child  # noqa: E402  (bench/shards.py's child runner; its tree via --generate)

METHODS = ("index-nogate", "index-gate", "headers-w1", "headers-w2", "headers-w4")


def tiny_nifti() -> bytes:
    """A 4×4×4 int16 NIfTI-1 image, gzipped as OpenNeuro ships them."""
    import nibabel as nib
    import numpy as np

    data = np.arange(64, dtype="int16").reshape(4, 4, 4)
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes(), compresslevel=6)


def generate_small(root: Path, files: int) -> tuple[int, int]:
    """bench/index.py's layout with real images: (files, NIfTI files)."""
    root.mkdir(parents=True)
    count = generate(root, files, tiny_nifti())
    return count, count // (2 + 2 * RUNS_PER_SESSION) * (2 + RUNS_PER_SESSION)


# ----------------------------------------------------------------------------- child side


def child(method: str, root: Path) -> None:
    from bids_hub_dagster.bids import entities
    from bids_hub_dagster.bids.privacy import PrivacyPolicy, run_gate
    from bids_hub_dagster.spec import spec_for_folder

    entities.load_schema()
    import nibabel  # noqa: F401  (the gate imports it lazily)

    spec = spec_for_folder(root)
    if method.startswith("headers-"):
        index = spec.build_index(gate=False)  # the image list, before the clock
        files = [f.relpath for r in index.rows for f in r.files]
        workers = int(method.removeprefix("headers-w"))
        t0 = time.perf_counter()
        report = run_gate(spec.bids_root, {}, files, [], PrivacyPolicy(), workers=workers)
        seconds = time.perf_counter() - t0
        findings = len(report.sorted_findings())
    else:
        t0 = time.perf_counter()
        index = spec.build_index(gate=method == "index-gate")
        seconds = time.perf_counter() - t0
        files = [f for r in index.rows for f in r.files]
        findings = len(index.privacy_report.sorted_findings()) if index.privacy_report else -1
    print(seconds, len(files), findings)


# ----------------------------------------------------------------------------- driver


def run_tree(name: str, root: Path, methods: list[str], repeat: int) -> None:
    best: dict[str, tuple[float, float, int, int]] = {}
    for _ in range(repeat):
        for method in methods:
            stdout, rss = run_child(__file__, ["--child", method, "--root", str(root)])
            seconds, images, findings = stdout.split()[-3:]
            result = (float(seconds), rss, int(images), int(findings))
            if method not in best or result[0] < best[method][0]:
                best[method] = result
    base = best.get("index-nogate")
    w1 = best.get("headers-w1")
    print(
        f"\n{name}\n{'method':<14} {'images':>7} {'best s':>8} {'vs nogate':>10} "
        f"{'gate ms/image':>14} {'vs w1':>6} {'peak RSS MB':>12} {'findings':>9}"
    )
    for method in methods:
        seconds, rss, images, findings = best[method]
        vs = f"{seconds / base[0]:.2f}x" if base and method.startswith("index-") else ""
        if method == "index-gate" and base:
            per = f"{(seconds - base[0]) / images * 1000:.3f}"
        elif method.startswith("headers-"):
            per = f"{seconds / images * 1000:.3f}"
        else:
            per = ""
        vs1 = f"{w1[0] / seconds:.2f}x" if w1 and method.startswith("headers-") else ""
        print(
            f"{method:<14} {images:>7} {seconds:>8.3f} {vs:>10} {per:>14} {vs1:>6} {rss:>12.0f} {findings:>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20_000, help="files of the small tree (0: skip it)")
    parser.add_argument(
        "--shard-sessions", type=int, default=100, help="sessions of the shard tree (0: skip)"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--generate-small", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.root))
        return
    if args.generate_small:
        print(*generate_small(Path(args.root), args.generate_small))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bids-gate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}; warm page cache")
    try:
        if args.files:
            root = work / "small"
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            # trees are generated in children, so that this process stays small (see shards.measure)
            gen = [sys.executable, __file__, "--generate-small", str(args.files), "--root", str(root)]
            total, images = map(
                int, subprocess.run(gen, capture_output=True, text=True, check=True).stdout.split()
            )
            print(
                f"small tree: {total} files, {images} images of 4x4x4 int16 ({time.perf_counter() - t0:.1f} s)"
            )
            run_tree(f"small tree ({images} images), best of {args.repeat}", root, methods, args.repeat)
        if args.shard_sessions:
            root = work / "shards"
            shutil.rmtree(root, ignore_errors=True)
            shards_py = str(Path(__file__).resolve().parent / "shards.py")
            gen = [sys.executable, shards_py, "--generate", str(args.shard_sessions), "--root", str(root)]
            gen += ["--out", str(work / "templates")]
            total = int(subprocess.run(gen, capture_output=True, text=True, check=True).stdout)
            print(f"\nshard tree: {args.shard_sessions} sessions, {total / 1e6:.0f} MB of .nii.gz")
            run_tree(
                f"shard tree ({2 * args.shard_sessions} images), best of {args.repeat}",
                root,
                methods,
                args.repeat,
            )
    finally:
        if not args.workdir:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
