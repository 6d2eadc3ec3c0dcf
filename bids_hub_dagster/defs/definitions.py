"""Definitions for a list of dataset specs: assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ..spec import DatasetSpec, check_unique_keys
from .assets import IO_MANAGER_KEY, build_dataset_assets
from .automation import build_automation
from .checks import build_shard_checks
from .io_managers import BidsHubParquetIOManager, default_storage_dir
from .names import JobNames, names
from .resources import HUB_RESOURCE_KEY, hub_resource
from .runs import build_dead_run_sensor


def job_names(spec: DatasetSpec) -> JobNames:
    """The jobs of ``spec``'s dataset: ``names(spec).jobs``."""
    return names(spec).jobs


def build_definitions(specs: Sequence[DatasetSpec], storage_dir: str | None = None) -> dg.Definitions:
    """Per spec: an asset group, its checks, three jobs, a schedule and two sensors; shared resources."""
    assets: list = []
    checks: list[dg.AssetChecksDefinition] = []
    jobs = []
    sensors: list[dg.SensorDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    check_unique_keys(list(specs))  # two names with one key would share every asset, job and folder
    io_manager = BidsHubParquetIOManager(base_dir=storage_dir or default_storage_dir())
    for spec in specs:
        files, index, dataset, shards, upload = build_dataset_assets(spec)
        nifti, row_count, coverage = build_shard_checks(spec, shards)
        assets += [files, index, dataset, shards, upload]
        checks += [nifti, row_count, coverage]
        jobs_of = names(spec).jobs
        dataset_jobs = [
            dg.define_asset_job(
                jobs_of.prepare,
                selection=dg.AssetSelection.assets(index, dataset),
                description=f"Index {spec.bids_root} and type the dataset {spec.name}; plans the shards.",
            ),
            dg.define_asset_job(
                jobs_of.shards,
                selection=dg.AssetSelection.assets(shards).without_checks()
                | dg.AssetSelection.checks(nifti, row_count),
                partitions_def=shards.partitions_def,
                description="Build one shard partition (embed its NIfTI bytes), then check it.",
            ),
            dg.define_asset_job(
                jobs_of.upload,
                selection=dg.AssetSelection.assets(upload) | dg.AssetSelection.checks(coverage),
                description=f"Check that the shards hold every row once, publish them and the card to "
                f"{spec.destination or '(no destination set)'}, verify.",
            ),
        ]
        jobs += dataset_jobs
        dataset_sensors, dataset_schedules = build_automation(spec, dataset_jobs, io_manager)
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
            IO_MANAGER_KEY: io_manager,
            HUB_RESOURCE_KEY: hub_resource(),
        },
    )
