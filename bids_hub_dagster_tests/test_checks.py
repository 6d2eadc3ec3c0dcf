"""The asset checks of the shards (defs/checks.py), run by Dagster on real built shards.

The demo is built and published once (4 shards, one row each); each test then damages the
stored shards the way a disk, a user or another plan would, and runs only the checks.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bids_hub_dagster.defs import build_definitions, names
from bids_hub_dagster.defs.assets import IO_MANAGER_KEY
from bids_hub_dagster.defs.checks import build_shard_checks
from bids_hub_dagster.defs.io_managers import BidsHubParquetIOManager
from bids_hub_dagster_tests.conftest import materialize_all, memory_instance


class Built:
    """The demo, materialized; runs the shard checks alone (no shard rebuilt) against its stored files.

    The coverage check runs in a real run (a job of that check only). A job of partitioned
    checks alone cannot take a partition key (Dagster infers partitions from the selected
    assets), so the per-shard checks are called as their body, with the partition key and
    the IO manager a run would give them.
    """

    def __init__(self, spec, storage, instance) -> None:
        self.spec, self.storage, self.instance = spec, storage, instance
        self.io = BidsHubParquetIOManager(base_dir=str(storage))
        defs = build_definitions([spec], storage_dir=str(storage))
        checks = build_shard_checks(spec, defs.resolve_assets_def(names(spec).hub_shards))
        self.nifti, self.row_count, self.coverage = (next(iter(c.check_keys)) for c in checks)
        self.bodies = {next(iter(c.check_keys)): c.node_def.compute_fn.decorated_fn for c in checks}
        coverage_only = dg.define_asset_job(
            "coverage_check", selection=dg.AssetSelection.checks(self.coverage)
        )
        self.defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[coverage_only]))

    def path(self, key: str):
        return self.io.partition_path(names(self.spec).hub_shards, key)

    def check(self, check: dg.AssetCheckKey, partition: str | None = None):
        if partition is not None:
            context = SimpleNamespace(
                partition_key=partition, resources=SimpleNamespace(**{IO_MANAGER_KEY: self.io})
            )
            return self.bodies[check](context)
        job = self.defs.resolve_job_def("coverage_check")
        result = job.execute_in_process(instance=self.instance, raise_on_error=False)
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation


def problems(evaluation) -> str:
    value = evaluation.metadata["problems"]
    return getattr(value, "value", value)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from bids_hub_dagster.demo import write_demo
    from bids_hub_dagster.spec import load_spec

    tmp = tmp_path_factory.mktemp("checks")
    spec = load_spec(write_demo(tmp / "demo")).with_overrides(
        destination=str(tmp / "published"), num_shards=4
    )
    with memory_instance() as instance:
        assert materialize_all(spec, tmp / "storage", instance) == [f"shard-{i:05d}" for i in range(4)]
        yield Built(spec, tmp / "storage", instance)


@pytest.fixture
def shards(built):
    """The stored shards, restored after each test."""
    saved = {key: built.path(key).read_bytes() for key in (f"shard-{i:05d}" for i in range(4))}
    yield built
    for key, data in saved.items():
        built.path(key).write_bytes(data)


def set_cell(path, column: str, row: int, data: bytes) -> str:
    """Replace the bytes of one NIfTI cell of a stored shard, keeping its schema and record; its name."""
    table = pq.read_table(path)
    cells = table.column(column).to_pylist()
    cells[row] = {"bytes": data, "path": cells[row]["path"]}
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, pa.array(cells, table.schema.field(column).type)), path)
    return cells[row]["path"]


def test_intact_shards_pass_every_check(shards):
    for key in ("shard-00000", "shard-00003"):
        assert shards.check(shards.nifti, key).passed
        assert shards.check(shards.row_count, key).passed
    coverage = shards.check(shards.coverage)
    assert coverage.passed and problems(coverage) == "none"


def test_a_zero_byte_cell_fails_shard_files_are_nifti_naming_row_column_and_file(shards):
    name = set_cell(shards.path("shard-00002"), "t1w", 0, b"")
    assert name == "sub-02_ses-1_T1w.nii"
    evaluation = shards.check(shards.nifti, "shard-00002")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert problems(evaluation) == f"- row 0 t1w: {name}: zero-byte cell"
    assert getattr(cells := evaluation.metadata["cells_checked"], "value", cells) == 1
    assert shards.check(shards.nifti, "shard-00003").passed  # the other shards are fine


def test_a_shard_of_other_rows_fails_its_row_count_check(shards):
    # the file of shard-00003 (row 3) stored as shard-00002 (row 2): a shard of another plan
    shutil.copyfile(shards.path("shard-00003"), shards.path("shard-00002"))
    evaluation = shards.check(shards.row_count, "shard-00002")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "shard-00002 was built for rows 3–3; the plan now gives it rows 2–2: rebuild it" in problems(
        evaluation
    )


def test_a_shard_with_rows_missing_fails_its_row_count_check(shards):
    path = shards.path("shard-00001")
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)  # same schema and record, no row
    evaluation = shards.check(shards.row_count, "shard-00001")
    assert not evaluation.passed
    assert "shard-00001 holds 0 rows; the plan gives it 1 (rows 1–1)" in problems(evaluation)


def test_coverage_warns_of_shards_not_built_and_fails_on_a_row_twice(shards):
    shards.path("shard-00001").unlink()
    missing = shards.check(shards.coverage)
    # not built yet: normal while a backfill runs; a warning, the upload names it itself
    assert not missing.passed and missing.severity == dg.AssetCheckSeverity.WARN
    assert problems(missing) == "- shard-00001: not built yet; materialize this hub_shards partition"

    shutil.copyfile(shards.path("shard-00003"), shards.path("shard-00002"))
    twice = shards.check(shards.coverage)
    assert not twice.passed and twice.severity == dg.AssetCheckSeverity.ERROR
    text = problems(twice)
    assert "row 3 is in 2 shards: shard-00002, shard-00003" in text
    assert "shard-00001: not built yet" in text
