"""Index benchmark: bids_hub_dagster's index against bids2table and pybids on one tree.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python bench/index.py --files 100000

Generates a BIDS tree of empty files (names are what indexing reads; content is not)
with a JSON sidecar per run, then times each indexer in a fresh child process (after
its imports), best of --repeat, side by side. Prints ratios against bids2table, the
baseline. pybids runs once (``--pybids-repeat``), since it takes minutes at 100k files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS_PER_SESSION = 10


def generate(root: Path, files: int, image: bytes = b"") -> int:
    """A tree of about ``files`` files: per session a T1w, a FLAIR, bold runs with sidecars.

    Every image holds ``image`` (empty by default: names are what indexing reads).
    """
    per_session = 2 + 2 * RUNS_PER_SESSION
    sessions = max(1, files // per_session)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    lines = ["participant_id\tage"]
    count = 0
    for s in range(sessions):
        sub, ses = f"sub-{s // 2 + 1:05d}", f"ses-{s % 2 + 1}"
        if s % 2 == 0:
            lines.append(f"{sub}\t{20 + s % 50}")
        anat = root / sub / ses / "anat"
        func = root / sub / ses / "func"
        anat.mkdir(parents=True)
        func.mkdir(parents=True)
        (anat / f"{sub}_{ses}_T1w.nii.gz").write_bytes(image)
        (anat / f"{sub}_{ses}_FLAIR.nii.gz").write_bytes(image)
        for r in range(1, RUNS_PER_SESSION + 1):
            (func / f"{sub}_{ses}_task-rest_run-{r}_bold.nii.gz").write_bytes(image)
            (func / f"{sub}_{ses}_task-rest_run-{r}_bold.json").write_text("{}")
        count += per_session
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return count


CHILD = {
    "bids_hub_dagster": (
        "from bids_hub_dagster.bids import build_index\n"
        "idx = build_index(ROOT)\n"
        "n = sum(len(r.files) for r in idx.rows)\n"
    ),
    "bids2table": (
        "import bids2table\n"
        "t = bids2table.index_dataset(ROOT)\n"
        "n = sum(1 for e in t.column('ext').to_pylist() if e in ('.nii', '.nii.gz'))\n"
    ),
    "pybids": (
        "import bids\n"
        "layout = bids.BIDSLayout(ROOT, validate=False)\n"
        "n = len(layout.get(extension=['.nii', '.nii.gz']))\n"
    ),
}
IMPORTS = {
    "bids_hub_dagster": "import bids_hub_dagster.bids\nbids_hub_dagster.bids.entities.load_schema()\n",
    "bids2table": "import bids2table\n",
    "pybids": "import bids\n",
}


def time_child(name: str, root: Path) -> tuple[float, int]:
    code = (
        "import time, sys\nROOT = sys.argv[1]\n"
        + IMPORTS[name]
        + "t0 = time.perf_counter()\n"
        + CHILD[name]
        + "print(time.perf_counter() - t0, n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    seconds, n = out.stdout.split()[-2:]
    return float(seconds), int(n)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pybids-repeat", type=int, default=1, help="0 skips pybids")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bids-bench-") as tmp:
        root = Path(tmp) / "ds"
        root.mkdir()
        t0 = time.perf_counter()
        total = generate(root, args.files)
        print(f"tree: {total} files ({time.perf_counter() - t0:.1f} s to generate)")
        results = {}
        for name in CHILD:
            repeat = args.pybids_repeat if name == "pybids" else args.repeat
            if repeat == 0:
                continue
            runs = [time_child(name, root) for _ in range(repeat)]
            results[name] = (min(r[0] for r in runs), runs[0][1])
        base = results["bids2table"][0]
        print(f"{'indexer':<18} {'best s':>8} {'NIfTI files':>12} {'vs bids2table':>14}")
        for name, (secs, n) in results.items():
            print(f"{name:<18} {secs:>8.2f} {n:>12} {secs / base:>13.2f}x")


if __name__ == "__main__":
    main()
