"""Shared fixtures: real NIfTI images in BIDS-shaped trees, the vendored bids-examples, Dagster instances."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from bids_hub_dagster.cli import cli
from bids_hub_dagster.defs import build_definitions, job_names, names
from bids_hub_dagster.demo import NIBABEL_DATA, write_demo
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster_tests.hub_server import hub_server  # noqa: F401  (the Hub test server fixture)

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
# BIDS' own example layouts, vendored as test data (see data/README.md). BIDS_EXAMPLES=/path runs
# the tests against another copy, e.g. a full checkout of bids-standard/bids-examples.
BIDS_EXAMPLES = Path(os.environ.get("BIDS_EXAMPLES") or TEST_DATA / "bids-examples")

# The examples the tests use, named here rather than listed from the folder: a test parametrized
# over them always has its cases, and a missing folder fails those cases (never collects nothing).
BIDS_EXAMPLE_NAMES = (
    "7t_trt",
    "ds000001-fmriprep",
    "ds000117",
    "ds001",
    "ds005",
    "eeg_cbm",
    "genetics_ukbb",
    "mri_chunk",
    "pet001",
    "qmri_mp2rage",
    "synthetic",
)

collect_ignore = ["data"]  # test data only: nothing to collect among its ~4,500 files


def pytest_collection_modifyitems(config, items):
    """A parametrized test whose parameter list came out empty is an error, never a silent skip."""
    empty = [
        item.nodeid
        for item in items
        for mark in item.iter_markers("skip")
        if str(mark.kwargs.get("reason", "")).startswith("got empty parameter set")
    ]
    if empty:
        raise pytest.UsageError("parametrized with no cases (is its test data missing?): " + ", ".join(empty))


def example_source(name: str) -> Path:
    """The vendored example ``name`` (read it, never write it); fails the test if it is missing."""
    src = BIDS_EXAMPLES / name
    if not src.is_dir():
        pytest.fail(
            f"{src} is missing: the BIDS examples are test data in bids_hub_dagster_tests/data/bids-examples "
            "(or set BIDS_EXAMPLES to a folder that holds them)"
        )
    return src


def isolate_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point DAGSTER_HOME and the HF cache into ``home`` (offline), and unset the project's variables."""
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BIDS_HUB_SPECS", raising=False)
    monkeypatch.delenv("BIDS_HUB_STORAGE", raising=False)
    (home / "dagster").mkdir(parents=True, exist_ok=True)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep DAGSTER_HOME, the HF cache and shard storage of each test out of the user's home.

    Module- or session-scoped fixtures run before it: they isolate themselves with :func:`isolate_home`.
    """
    isolate_home(monkeypatch, tmp_path_factory.mktemp("home"))


@pytest.fixture
def nibabel_data() -> Path:
    return NIBABEL_DATA


@pytest.fixture
def demo_spec(tmp_path) -> DatasetSpec:
    """The demo BIDS tree (real nibabel images) and its spec, publishing to tmp_path/published."""
    spec = load_spec(write_demo(tmp_path / "demo"))
    return spec.with_overrides(destination=str(tmp_path / "published"))


@pytest.fixture
def bids_example(tmp_path):
    """Copy one of the vendored bids-examples into tmp_path (never write into the test data)."""

    def copy(name: str) -> Path:
        src = example_source(name)
        dest = tmp_path / "examples" / name
        shutil.copytree(src, dest, symlinks=True)
        return dest

    return copy


def memory_instance() -> dg.DagsterInstance:
    """A real Dagster instance whose storage is in memory: runs, event log, dynamic partitions and
    checks as on disk, 4× faster than SQLite. For tests that read the instance only while it is
    open; tests of the persistent instance (CLI, interrupts, automation, UI) use DAGSTER_HOME."""
    return dg.DagsterInstance.ephemeral()


def materialize_all(
    spec: DatasetSpec, storage: Path, instance: dg.DagsterInstance | None = None
) -> list[str]:
    """Run prepare, every shard partition and the upload of ``spec``, each run asserted green.

    Uses ``instance`` when given, else a fresh in-memory instance (4× faster than a SQLite
    one, and nothing of it is read afterwards); returns the shard keys.
    """
    if instance is None:
        with memory_instance() as fresh:
            return materialize_all(spec, storage, fresh)
    defs = build_definitions([spec], storage_dir=str(storage))
    jobs = job_names(spec)
    assert defs.resolve_job_def(jobs.prepare).execute_in_process(instance=instance).success
    keys = instance.get_dynamic_partitions(names(spec).shard_partitions)
    for key in keys:
        assert (
            defs.resolve_job_def(jobs.shards).execute_in_process(instance=instance, partition_key=key).success
        )
    assert defs.resolve_job_def(jobs.upload).execute_in_process(instance=instance).success
    return keys


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console entry point in this process: its exit code and everything it printed."""
    monkeypatch.setattr(sys, "argv", ["bids-hub-dagster", *args])
    try:
        cli()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- object storage: moto's S3 server (test_storage*.py) ---


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a spare port, see ``testing.services``), for the tests of a module."""
    from bids_hub_dagster.testing.services import moto_s3_server

    with moto_s3_server() as s3:
        yield s3.endpoint_url


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, tmp_path) -> str:
    """A fresh bucket; the environment points every S3 client (and subprocess) at the test server."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("BIDS_HUB_SCRATCH", str(tmp_path / "scratch"))
    name = f"bids-hub-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
