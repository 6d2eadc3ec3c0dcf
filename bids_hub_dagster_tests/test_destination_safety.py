"""The user's files are sacred: a publication replaces or deletes only files the tool wrote.

Each case asserts that every source and foreign file still exists with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_dataset

from bids_hub_dagster.defs.io_managers import preview_file
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.publish.destinations import STAGING_PREFIX, DestinationError, LocalFolder
from bids_hub_dagster.publish.manifest import MANIFEST_NAME, PREVIEW_PNG, Manifest
from bids_hub_dagster.publish.privacy_report import REPORT_NAME
from bids_hub_dagster.publish.publication import parse_destination
from bids_hub_dagster.spec import load_spec
from bids_hub_dagster_tests.conftest import materialize_all

CLI = [str(Path(sys.executable).with_name("bids-hub-dagster"))]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) with the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def publish_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "publish", *args, "--no-progress"], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def bids(tmp_path) -> Path:
    return build_demo_bids(tmp_path / "bids")


# -- refused up front, nothing touched ------------------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
def test_foreign_files_under_data_are_refused_by_name_and_kept(bids, tmp_path):
    dest = tmp_path / "dest"
    (dest / "data" / "raw").mkdir(parents=True)
    (dest / "data" / "results.csv").write_text("subject,score\n01,3\n")
    (dest / "data" / "raw" / "important.txt").write_text("do not lose me")
    before = snapshot(dest)
    run = publish_cli(str(bids), "--to", str(dest))
    assert run.returncode == 2, run.stderr
    assert "data/results.csv" in run.stderr and "data/raw/important.txt" in run.stderr
    assert "did not write" in run.stderr and "Traceback" not in run.stderr
    assert snapshot(dest) == before
    assert not (dest / "README.md").exists() and not (dest / MANIFEST_NAME).exists()


def test_a_foreign_readme_beside_a_data_folder_is_refused_and_kept(tmp_path):
    dest = tmp_path / "dest"
    (dest / "data").mkdir(parents=True)
    (dest / "README.md").write_text("# my project\n")
    before = snapshot(dest)
    with pytest.raises(DestinationError, match=r"did not write.*README\.md"):
        parse_destination(str(dest))
    assert snapshot(dest) == before


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda root: root.parent.parent, id="holds-the-bids-root"),
        pytest.param(lambda root: root, id="is-the-bids-root"),
        pytest.param(lambda root: root / "derivatives" / "published", id="inside-the-bids-root"),
    ],
)
@pytest.mark.slow  # the CLI in a subprocess
def test_a_destination_overlapping_the_bids_root_is_refused_before_anything_runs(tmp_path, where):
    # the reported case: a BIDS root at P/data/mybids published --to P
    root = build_demo_bids(tmp_path / "P" / "data" / "mybids")
    before = snapshot(tmp_path / "P")
    dest = where(root)
    run = publish_cli(str(root), "--to", str(dest))
    assert run.returncode == 2, run.stderr
    assert "source folder" in run.stderr and "Traceback" not in run.stderr
    assert snapshot(tmp_path / "P") == before  # every source file, same bytes, nothing added


def test_a_scope_folder_that_links_elsewhere_is_protected_too(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    elsewhere = tmp_path / "fmriprep"
    elsewhere.mkdir()
    (root / "derivatives").mkdir(exist_ok=True)
    (root / "derivatives" / "fmriprep").symlink_to(elsewhere, target_is_directory=True)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        f"name: x\nbids_root: {root}\ncolumns:\n  t1w: {{suffix: T1w, scope: derivatives/fmriprep}}\n"
    )
    spec = load_spec(spec_file)
    with pytest.raises(DestinationError, match="source folder"):
        parse_destination(str(elsewhere / "out"), sources=spec.source_folders())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: (d / "data").write_text("a file, not a folder"), id="data-is-a-file"),
        pytest.param(lambda d: (d / "README.md").mkdir(), id="readme-is-a-folder"),
        pytest.param(
            lambda d: (d / "data").symlink_to(d.parent / "other", target_is_directory=True),
            id="data-is-a-link",
        ),
    ],
)
@pytest.mark.slow  # the CLI in a subprocess
def test_an_unusable_local_destination_fails_at_once_without_retries(bids, tmp_path, make):
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "theirs.txt").write_text("theirs")
    make(dest)
    before = snapshot(dest)
    started = time.monotonic()
    run = publish_cli(str(bids), "--to", str(dest))
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - started < 60  # refused up front, not retried for minutes
    assert "move it away" in run.stderr
    assert snapshot(dest) == before and (tmp_path / "other" / "theirs.txt").read_text() == "theirs"
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))


# -- what the tool wrote, it may replace --------------------------------------------------------


def test_the_manifest_lists_what_was_written_and_is_never_loaded_as_data(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    manifest = Manifest.parse((dest / MANIFEST_NAME).read_bytes(), "manifest")
    assert (dest / REPORT_NAME).is_file()
    written = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} - {
        MANIFEST_NAME,
        ".bids_hub_lock",  # held while a publish writes here
        REPORT_NAME,  # the privacy gate's report, kept beside the data: never published, never listed
    }
    assert manifest.files == written
    assert {p for p in written if p.startswith("preview")} == {PREVIEW_PNG} | {
        f"preview/train-{i:05d}-of-00003.parquet" for i in range(3)
    }  # the preview config is the tool's too
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 4 and "files" not in ds.column_names and "tool" not in ds.column_names


def test_a_smaller_plan_removes_only_the_tools_own_files(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    (dest / "NOTES.md").write_text("my notes beside the dataset")
    (dest / "scripts").mkdir()
    (dest / "scripts" / "analysis.py").write_text("print('mine')\n")
    mine = {k: v for k, v in snapshot(dest).items() if k in ("NOTES.md", "scripts/analysis.py")}
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    result = LocalFolder(dest).publish(
        shards[:2],
        card="---\n---\n" + "Published with bids_hub_dagster.\n",
        preview_files=[preview_file(p) for p in shards[:2]],
        preview_png=(dest / PREVIEW_PNG).read_bytes(),
    )
    # the old plan's data files and their previews (preview.png is replaced, not removed)
    assert sorted(result.files_removed) == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)] + [
        f"preview/train-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    for top in ("data", "preview"):
        assert sorted(p.name for p in (dest / top).iterdir()) == [
            "train-00000-of-00002.parquet",
            "train-00001-of-00002.parquet",
        ]
    assert {k: v for k, v in snapshot(dest).items() if k in mine} == mine
    assert json.loads((dest / MANIFEST_NAME).read_text())["files"] == [
        "README.md",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "preview.png",
        "preview/train-00000-of-00002.parquet",
        "preview/train-00001-of-00002.parquet",
    ]


def test_a_folder_published_before_manifests_is_adopted_by_its_readme_mark(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    (dest / MANIFEST_NAME).unlink()  # as an older version left it
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    card = (dest / "README.md").read_text()
    png = (dest / PREVIEW_PNG).read_bytes()
    result = LocalFolder(dest).publish(
        shards[:1], card=card, preview_files=[preview_file(shards[0])], preview_png=png
    )
    # the card names the preview config and shows preview.png: the old previews were adopted too
    assert sorted(result.files_removed) == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)] + [
        f"preview/train-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    assert (dest / MANIFEST_NAME).is_file()
    # but an adopted folder with a file of someone else under data/ is refused
    (dest / "data" / "extra.csv").write_text("x")
    with pytest.raises(DestinationError, match="data/extra.csv"):
        LocalFolder(dest)
    assert (dest / "data" / "extra.csv").read_text() == "x"


def test_a_manifest_of_someone_else_is_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / MANIFEST_NAME).write_text('{"files": ["data/x"]}')
    with pytest.raises(DestinationError, match="not written by bids_hub_dagster"):
        LocalFolder(dest)


def test_a_users_folder_named_like_staging_is_never_removed(demo_spec, tmp_path):
    dest = Path(demo_spec.destination)
    users = dest / f"{STAGING_PREFIX}mine"
    users.mkdir(parents=True)
    (users / "keep.txt").write_text("keep")
    materialize_all(demo_spec, tmp_path / "storage")
    assert (users / "keep.txt").read_text() == "keep"


def test_a_failed_rename_puts_the_previous_publication_back(demo_spec, tmp_path, monkeypatch):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    before = snapshot(dest)
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    real_replace = os.replace

    def readme_rename_fails(src, dst):
        if Path(dst).name == "README.md":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", readme_rename_fails)
    with pytest.raises(DestinationError, match="previous publication is kept"):
        LocalFolder(dest).publish(shards[:1], card="---\n---\nPublished with bids_hub_dagster.\n")
    monkeypatch.setattr(os, "replace", real_replace)
    after = snapshot(dest)
    # the new publication has no preview: preview/ and preview.png were moved away, then put back too
    assert PREVIEW_PNG in before and any(k.startswith("preview/") for k in before)
    # same data and preview files and card; the manifest may have been widened, never narrowed
    assert {k: v for k, v in after.items() if k != MANIFEST_NAME} == {
        k: v for k, v in before.items() if k != MANIFEST_NAME
    }
    assert Manifest.parse((dest / MANIFEST_NAME).read_bytes(), "m").files >= {
        k for k in before if k not in (MANIFEST_NAME, ".bids_hub_lock", REPORT_NAME)
    }
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))


# -- the stored shards: a changed file is never reused ------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
def test_a_published_file_overwritten_in_place_is_rebuilt_not_republished(bids, tmp_path):
    dest = tmp_path / "dest"
    assert publish_cli(str(bids), "--to", str(dest), "--num-shards", "2").returncode == 0
    published = dest / "data" / "train-00000-of-00002.parquet"
    good = published.read_bytes()
    st = published.stat()
    # a user copies something over the published file: it is a hard link to the stored shard
    with open(published, "r+b") as fh:
        fh.seek(len(good) // 2)
        fh.write(b"\x00" * 64)
    os.utime(published, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    corrupted = published.read_bytes()
    run = publish_cli(str(bids), "--to", str(dest), "--num-shards", "2")
    assert run.returncode == 0, run.stderr
    assert "shard-00000" in run.stderr and "changed since it was written" in run.stderr
    assert "verified: OK" in run.stdout
    assert published.read_bytes() != corrupted


@pytest.mark.slow  # the CLI in a subprocess
def test_rebuild_builds_every_shard_again(bids, tmp_path):
    dest = tmp_path / "dest"
    assert publish_cli(str(bids), "--to", str(dest), "--num-shards", "2").returncode == 0
    again = publish_cli(str(bids), "--to", str(dest), "--num-shards", "2")
    assert "2 of 2 shard(s) unchanged since built: kept" in again.stderr
    rebuilt = publish_cli(str(bids), "--to", str(dest), "--num-shards", "2", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "unchanged since built" not in rebuilt.stderr and "verified: OK" in rebuilt.stdout


def test_a_stored_shard_that_is_not_parquet_names_itself(demo_spec, tmp_path):
    from bids_hub_dagster.publish.publication import ShardsNotReadyError, ordered_shard_files

    materialize_all(demo_spec, tmp_path / "storage")
    folder = tmp_path / "storage" / "demo" / "hub_shards"
    files = {p.stem: p for p in folder.glob("*.parquet")}
    victim = files["shard-00001"]
    data = victim.read_bytes()
    victim.unlink()  # the published copy keeps its bytes: a new file, not a write through the link
    victim.write_bytes(data[:-8] + b"garbage!")
    table = demo_spec.index_table()
    plan = demo_spec.shard_plan(table)
    with pytest.raises(ShardsNotReadyError, match=r"shard-00001 \(.*shard-00001\.parquet"):
        ordered_shard_files(plan, files, table)
    shutil.rmtree(folder)


# -- found by a review as a new user ---------------------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
def test_a_readme_that_only_quotes_the_mark_is_not_adopted(bids, tmp_path):
    dest = tmp_path / "proj"
    (dest / "data").mkdir(parents=True)
    (dest / "README.md").write_text(
        "# Lab project\nThe copy in ./published was Published with bids_hub_dagster.\n"
    )
    (dest / "data" / "train-00000-of-00002.parquet").write_bytes(b"the lab's own parquet")
    before = snapshot(dest)
    run = publish_cli(str(bids), "--to", str(dest))
    assert run.returncode == 2, run.stderr
    assert "README.md" in run.stderr and "data/train-00000-of-00002.parquet" in run.stderr
    assert snapshot(dest) == before


@pytest.mark.slow  # the CLI in a subprocess
def test_a_manifest_listing_files_the_tool_never_writes_is_refused(bids, tmp_path):
    dest = tmp_path / "dest"
    (dest / "data" / "raw").mkdir(parents=True)
    (dest / "data" / "results.csv").write_text("r")
    (dest / "data" / "raw" / "a.txt").write_text("a")
    (dest / MANIFEST_NAME).write_text(
        json.dumps({"tool": "bids_hub_dagster", "format": 1, "files": ["data/results.csv", "data/raw/a.txt"]})
    )
    before = snapshot(dest)
    run = publish_cli(str(bids), "--to", str(dest))
    assert run.returncode == 2 and "files the tool never writes" in run.stderr, run.stderr
    assert snapshot(dest) == before


@pytest.mark.slow  # the CLI in a subprocess
def test_an_empty_destination_is_refused(bids, tmp_path):
    run = subprocess.run(
        [*CLI, "publish", str(bids), "--to", "", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "destination is empty" in run.stderr, run.stderr
    assert sorted(os.listdir(tmp_path)) == ["bids"]


@pytest.mark.slow  # the CLI in a subprocess
def test_a_destination_inside_the_tools_own_storage_is_refused(bids, tmp_path):
    storage = Path(os.environ["DAGSTER_HOME"]) / "bids_hub_storage"
    run = publish_cli(str(bids), "--to", str(storage / "published"))
    assert run.returncode == 2 and "a folder of bids_hub_dagster itself" in run.stderr, run.stderr


def test_two_publishes_never_write_one_folder_together(demo_spec, tmp_path):
    import fcntl

    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    before = snapshot(dest)
    with open(dest / ".bids_hub_lock", "a+") as held:  # what a running publish holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DestinationError, match="is writing to this folder now"):
            LocalFolder(dest).publish(shards[:1], card=(dest / "README.md").read_text())
    assert snapshot(dest) == before


def test_ctrl_c_between_the_renames_puts_the_previous_publication_back(demo_spec, tmp_path, monkeypatch):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    before = {k: v for k, v in snapshot(dest).items() if k != MANIFEST_NAME}
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    real_replace = os.replace

    fired = []

    def interrupted(src, dst):
        if Path(dst).name == "data" and Path(src).name == "data" and not fired:
            fired.append(src)
            raise KeyboardInterrupt  # after data/ went to old-data, before the new one came in
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LocalFolder(dest).publish(shards[:1], card=(dest / "README.md").read_text())
    monkeypatch.setattr(os, "replace", real_replace)
    assert {k: v for k, v in snapshot(dest).items() if k != MANIFEST_NAME} == before
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))


def test_a_file_written_into_data_during_the_swap_is_kept(demo_spec, tmp_path, monkeypatch):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    real_replace = os.replace

    def someone_writes_first(src, dst):
        if Path(dst).name == "old-data":
            (dest / "data" / "late.csv").write_text("written meanwhile")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", someone_writes_first)
    LocalFolder(dest).publish(shards, card=(dest / "README.md").read_text())
    monkeypatch.setattr(os, "replace", real_replace)
    assert (dest / "data" / "late.csv").read_text() == "written meanwhile"
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))


@pytest.mark.slow  # the CLI in a subprocess
def test_verify_of_a_missing_folder_is_a_user_error(bids, tmp_path):
    run = subprocess.run(
        [*CLI, "verify", str(tmp_path / "nowhere"), "--bids-root", str(bids)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "no such folder" in run.stderr, run.stderr


@pytest.mark.parametrize("kind", ["link-to-a-users-file", "folder"])
def test_a_lock_path_that_is_not_the_tools_file_is_refused_untouched(demo_spec, tmp_path, kind):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    users = tmp_path / "thesis.txt"
    users.write_text("years of work")
    (dest / ".bids_hub_lock").unlink()
    if kind == "folder":
        (dest / ".bids_hub_lock").mkdir()
    else:
        (dest / ".bids_hub_lock").symlink_to(users)
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    with pytest.raises(DestinationError, match="lock"):
        LocalFolder(dest).publish(shards[:1], card=(dest / "README.md").read_text())
    assert users.read_text() == "years of work"


def test_a_readme_edited_after_publishing_is_the_users_and_is_kept(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    readme = dest / "README.md"
    readme.write_text(readme.read_text() + "\n## Acknowledgements\nHand-written.\n")
    before = snapshot(dest)
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    with pytest.raises(DestinationError, match=r"README\.md was edited after it was published"):
        LocalFolder(dest).publish(shards, card="---\n---\n")
    assert snapshot(dest) == before


def test_a_leftover_staging_folder_keeps_what_the_user_wrote(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    leftover = dest / f"{STAGING_PREFIX}dead1234"  # as a publish killed mid-swap leaves it
    (leftover / "old-data").mkdir(parents=True)
    (leftover / ".bids_hub_staging").write_text("marker")
    (leftover / "old-data" / "results.csv").write_text("the user's")
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").glob("*.parquet"))
    LocalFolder(dest).publish(shards, card=(dest / "README.md").read_text())
    assert (dest / "data" / "results.csv").read_text() == "the user's"  # put back, not deleted
    assert not leftover.exists()


def test_verify_reads_a_folder_with_extra_files_without_the_publishing_checks(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    (dest / "data" / "results.csv").write_text("x")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    run = subprocess.run(
        [*CLI, "verify", str(dest), "--spec", str(spec_file)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr  # a csv is not loaded as data
    assert "would replace or delete" not in run.stderr and "OK" in run.stdout
