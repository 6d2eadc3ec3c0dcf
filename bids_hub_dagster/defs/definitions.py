"""Definitions for a list of dataset specs: assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ..cluster.sizing import k8s_run_tags, run_resources, upload_run_resources
from ..pipeline.shard_range import MAX_AUTO_THREADS
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
                # the per-shard checks are recorded by the shard asset itself, on each partition it builds
                selection=dg.AssetSelection.assets(shards).without_checks()
                | dg.AssetSelection.checks(names(spec).shards_of_run_pass_checks),
                partitions_def=shards.partitions_def,
                # cpu, memory and scratch for the K8sRunLauncher (other launchers ignore the tag)
                tags=k8s_run_tags(
                    run_resources(
                        spec.max_shard_size, spec.row_group_size, spec.shards_per_run, MAX_AUTO_THREADS
                    )
                ),
                description="Build shard partitions (one, or a range: shards_per_run), embed their NIfTI "
                "bytes, read each back and check it on its own partition.",
            ),
            dg.define_asset_job(
                jobs_of.upload,
                selection=dg.AssetSelection.assets(upload) | dg.AssetSelection.checks(coverage),
                # scratch for one commit batch of shards copied back from object storage
                tags=k8s_run_tags(upload_run_resources(spec.max_shard_size, spec.hub.files_per_commit)),
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
        # one process per run: a shard run builds its shards in threads (pipeline.shard_range), and a
        # run worker inside a Celery worker (a daemonic process) cannot start step processes
        executor=dg.in_process_executor,
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
