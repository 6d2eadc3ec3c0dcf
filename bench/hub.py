"""Publishing many shards to a Hub repo: this project's publisher beside ``HfApi.upload_folder``.

    .venv/bin/python bench/hub.py [--shards 300] [--size 200KB] [--files-per-commit 50]

Runs against the offline Hub test server (bids_hub_dagster/testing/hub_server), through the
real huggingface_hub client over HTTP on 127.0.0.1, so it measures the protocol work
(requests, commits, bytes sent), not a network. Three scenarios, each for both:

1. first publish of N shard files and a card into an empty repo;
2. the same again, nothing changed;
3. the first publish with one HTTP 500 on the first commit request (a Hub hiccup).

upload_folder is the baseline: what a user would call to push a folder laid out like a
Hub dataset repo. Figures are ratios and counts from the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bids_hub_dagster.testing.hub_server import HubServer


def make_shards(folder: Path, n: int, size: int) -> list[Path]:
    (folder / "data").mkdir(parents=True)
    files = []
    for i in range(n):
        path = folder / "data" / f"train-{i:05d}-of-{n:05d}.parquet"
        path.write_bytes(os.urandom(size))
        files.append(path)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: data/*\n---\n# bench\n"
    )
    return files


def run(server: HubServer, label: str, fn) -> dict:
    before_requests, before_puts = len(server.requests), len(server.lfs_uploads())
    t0 = time.perf_counter()
    try:
        fn()
        error = ""
    except Exception as exc:  # the baseline fails on a fault: that is a result
        error = type(exc).__name__
    seconds = time.perf_counter() - t0
    requests = server.requests[before_requests:]
    return {
        "label": label,
        "seconds": seconds,
        "requests": len(requests),
        "commits": sum(1 for r in requests if "/commit/" in r.path and r.status == 200),
        "puts": len(server.lfs_uploads()) - before_puts,
        "error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=300)
    parser.add_argument("--size", default="200KB")
    parser.add_argument("--files-per-commit", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    server = HubServer(tmp / "hub").start()
    os.environ.update(
        HF_ENDPOINT=server.endpoint,
        HF_TOKEN=server.token,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    from huggingface_hub import DatasetCard, HfApi  # after HF_ENDPOINT is set: read at import

    from bids_hub_dagster.publish.hub import Backoff, HubOptions, HubRepo
    from bids_hub_dagster.spec import parse_size

    size = parse_size(args.size)
    folder = tmp / "published"
    files = make_shards(folder, args.shards, size)
    card = DatasetCard((folder / "README.md").read_text())
    api = HfApi()
    options = HubOptions(files_per_commit=args.files_per_commit)

    def ours(repo_id: str):
        return lambda: HubRepo(repo_id, options=options, backoff=Backoff(base=0.05)).publish(files, card)

    def baseline(repo_id: str):
        def push():
            api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset")

        return push

    rows = []
    for name, make in (("publisher", ours), ("upload_folder", baseline)):
        rows.append(run(server, f"{name}: first publish", make(f"bench/{name}-a")))
        rows.append(run(server, f"{name}: rerun, unchanged", make(f"bench/{name}-a")))
        server.inject("POST", rf"^/api/datasets/bench/{name}-b/commit/", status=500)
        rows.append(run(server, f"{name}: one 500 on the 1st commit", make(f"bench/{name}-b")))
        server.clear_faults()
    server.stop()

    print(f"{args.shards} shards of {size / 1e3:.0f} KB, files_per_commit={args.files_per_commit}")
    print(f"{'scenario':<38} {'s':>6} {'time x':>7} {'requests':>9} {'commits':>8} {'LFS PUTs':>9}  outcome")
    base = {
        r["label"].split(": ", 1)[1]: r["seconds"] for r in rows if r["label"].startswith("upload_folder")
    }
    for r in rows:
        ratio = r["seconds"] / base[r["label"].split(": ", 1)[1]]
        outcome = f"failed ({r['error']})" if r["error"] else "complete"
        print(
            f"{r['label']:<38} {r['seconds']:>6.2f} {ratio:>7.2f} {r['requests']:>9} {r['commits']:>8} "
            f"{r['puts']:>9}  {outcome}"
        )


if __name__ == "__main__":
    main()
