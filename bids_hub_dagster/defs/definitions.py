"""Definitions for a list of dataset specs: assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from ..spec import DatasetSpec
from .assets import IO_MANAGER_KEY, build_dataset_assets
from .automation import build_automation
from .checks import build_shard_checks
from .io_managers import BidsHubParquetIOManager, default_storage_dir
from .resources import HUB_RESOURCE_KEY, hub_resource
from .runs import build_dead_run_sensor


@dataclass(frozen=True)
class JobNames:
    """The jobs of one dataset, in the order a full publish runs them."""

    prepare: str  # bids_index + hf_dataset (registers the shard partitions)
    shards: str  # hub_shards, one run per partition
    upload: str  # hub_upload


def job_names(spec: DatasetSpec) -> JobNames:
    return JobNames(
        prepare=f"{spec.name}_prepare", shards=f"{spec.name}_shards", upload=f"{spec.name}_upload"
    )


def build_definitions(specs: Sequence[DatasetSpec], storage_dir: str | None = None) -> dg.Definitions:
    """Per spec: an asset group, its checks, three jobs, a schedule and two sensors; shared resources."""
    assets: list = []
    checks: list[dg.AssetChecksDefinition] = []
    jobs = []
    sensors: list[dg.SensorDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    for spec in specs:
        files, index, dataset, shards, upload = build_dataset_assets(spec)
        nifti, row_count, coverage = build_shard_checks(spec, shards)
        assets += [files, index, dataset, shards, upload]
        checks += [nifti, row_count, coverage]
        names = job_names(spec)
        dataset_jobs = [
            dg.define_asset_job(
                names.prepare,
                selection=dg.AssetSelection.assets(index, dataset),
                description=f"Index {spec.bids_root} and type the dataset; plans the shards.",
            ),
            dg.define_asset_job(
                names.shards,
                selection=dg.AssetSelection.assets(shards).without_checks()
                | dg.AssetSelection.checks(nifti, row_count),
                partitions_def=shards.partitions_def,
                description="Build one shard partition (embed its NIfTI bytes), then check it.",
            ),
            dg.define_asset_job(
                names.upload,
                selection=dg.AssetSelection.assets(upload) | dg.AssetSelection.checks(coverage),
                description="Check that the shards hold every row once, publish them and the card, verify.",
            ),
        ]
        jobs += dataset_jobs
        dataset_sensors, dataset_schedules = build_automation(spec, dataset_jobs)
        sensors += dataset_sensors
        schedules += dataset_schedules
    sensors.append(build_dead_run_sensor())
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources={
            IO_MANAGER_KEY: BidsHubParquetIOManager(base_dir=storage_dir or default_storage_dir()),
            HUB_RESOURCE_KEY: hub_resource(),
        },
    )
