"""One name for one thing: every Dagster name of a dataset comes from ``defs.names``.

And a spec named the way Hub repos and OpenNeuro datasets are (``ds004884-arc``) runs
under its Dagster-safe key, while people keep reading the name they wrote.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from datasets import load_dataset

from bids_hub_dagster.cli import main
from bids_hub_dagster.defs import build_definitions, names
from bids_hub_dagster.defs.io_managers import default_storage_dir
from bids_hub_dagster.defs.names import CHECKS, HUB_POOL
from bids_hub_dagster.defs.resources import HUB_RESOURCE_KEY
from bids_hub_dagster.defs.runs import DEAD_RUNS_SENSOR
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.spec import DatasetSpec, SpecError
from bids_hub_dagster_tests.conftest import materialize_all, memory_instance


def _named(spec: DatasetSpec, name: str) -> DatasetSpec:
    return dataclasses.replace(spec, name=name)


def test_every_name_in_the_definitions_comes_from_the_names_object(demo_spec, tmp_path):
    specs = [demo_spec, _named(demo_spec, "ds004884-arc")]
    defs = build_definitions(specs, storage_dir=str(tmp_path / "storage"))
    every = [names(s) for s in specs]
    graph = defs.resolve_asset_graph()

    assert set(graph.get_all_asset_keys()) == {k for n in every for k in n.asset_keys}
    assert set(graph.asset_check_keys) == {k for n in every for k in n.check_keys}
    jobs = {j.name for j in defs.resolve_all_job_defs()} - {"__ASSET_JOB"}
    assert jobs == {j for n in every for j in n.jobs}
    assert {s.name for s in defs.sensors} == {s for n in every for s in n.sensors} | {DEAD_RUNS_SENSOR}
    assert {s.name for s in defs.schedules} == {n.refresh_schedule for n in every}
    for n in every:
        shards = defs.resolve_assets_def(n.hub_shards)
        assert shards.partitions_def.name == n.shard_partitions
        assert defs.resolve_job_def(n.jobs.shards).partitions_def.name == n.shard_partitions
        assert graph.get(n.hub_shards).group_name == n.group
        assert defs.resolve_assets_def(n.hub_upload).op.pool == n.pool
    # one name, one thing: the pool is not the resource key, the partitions are not the shards job
    assert HUB_POOL != HUB_RESOURCE_KEY
    assert all(n.shard_partitions not in set(n.jobs) for n in every)
    assert set(CHECKS) == {k.name for k in graph.asset_check_keys}


def test_the_names_of_the_demo(demo_spec):
    n = names(demo_spec)
    assert n.hub_shards == dg.AssetKey(["demo", "hub_shards"])
    assert tuple(n.jobs) == ("demo_prepare", "demo_shards", "demo_upload")
    assert n.shard_partitions == "demo_shard_partitions"
    assert (n.watch_sensor, n.refresh_chain_sensor, n.refresh_schedule) == (
        "demo_watch",
        "demo_refresh_chain",
        "demo_refresh",
    )
    assert n.pool == "hub_commits"


def test_two_names_with_one_key_are_refused_when_the_definitions_are_built(demo_spec):
    with pytest.raises(SpecError, match="'ds004884-arc' and 'ds004884.arc' give the same key 'ds004884_arc'"):
        build_definitions([_named(demo_spec, "ds004884-arc"), _named(demo_spec, "ds004884.arc")])


def test_a_hyphenated_name_publishes_under_its_key_and_shows_as_written(demo_spec, tmp_path):
    # without a Name in dataset_description.json, the card's title is the spec's name
    description = demo_spec.bids_root / "dataset_description.json"
    fields = json.loads(description.read_text())
    del fields["Name"]
    description.write_text(json.dumps(fields))
    spec = _named(demo_spec, "ds004884-arc").with_overrides(num_shards=2)
    storage = tmp_path / "storage"
    with memory_instance() as instance:
        keys = materialize_all(spec, storage, instance)
        assert keys == ["shard-00000", "shard-00001"]
        n = names(spec)
        assert instance.get_latest_materialization_event(n.hub_upload) is not None
        assert sorted(p.name for p in (storage / "ds004884_arc" / "hub_shards").glob("*.parquet")) == [
            "shard-00000.parquet",
            "shard-00001.parquet",
        ]
    card = (Path(spec.destination) / "README.md").read_text()
    assert "# ds004884-arc\n" in card and "pretty_name: ds004884-arc" in card
    defs = build_definitions([spec], storage_dir=str(storage))
    assert "ds004884-arc" in defs.resolve_assets_def(n.hub_upload).descriptions_by_key[n.hub_upload]
    assert len(load_dataset(spec.destination, split="train")) == 4


def test_shard_partitions_of_an_earlier_release_move_to_the_new_name(demo_spec, tmp_path):
    """An instance that kept the partitions under the shards job's name gets them under the new name."""
    n = names(demo_spec)
    with memory_instance() as instance:
        instance.add_dynamic_partitions(n.legacy_shard_partitions, ["shard-00000", "shard-00001"])
        defs = build_definitions([demo_spec], storage_dir=str(tmp_path / "storage"))
        assert defs.resolve_job_def(n.jobs.prepare).execute_in_process(instance=instance).success
        assert instance.get_dynamic_partitions(n.legacy_shard_partitions) == []
        assert instance.get_dynamic_partitions(n.shard_partitions)


def test_the_cli_publishes_a_folder_named_like_an_openneuro_dataset(tmp_path):
    root = build_demo_bids(tmp_path / "ds004884-ARC")
    out = tmp_path / "out"
    args = ["publish", str(root), "--to", str(out), "--num-shards", "2", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"published ds004884-arc to {out}" in result.output  # the name, as people write it
    shards = Path(default_storage_dir()) / "ds004884_arc" / "hub_shards"  # the storage folder: the key
    assert sorted(p.name for p in shards.glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    with dg.DagsterInstance.get() as instance:
        assert {r.job_name for r in instance.get_runs()} == {
            "ds004884_arc_prepare",
            "ds004884_arc_shards",
            "ds004884_arc_upload",
        }
