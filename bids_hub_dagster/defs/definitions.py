"""Definitions for a list of dataset specs: assets, jobs and the parquet IO manager."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from ..spec import DatasetSpec
from .assets import IO_MANAGER_KEY, build_dataset_assets
from .io_managers import BidsHubParquetIOManager, default_storage_dir
from .resources import HUB_RESOURCE_KEY, hub_resource


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
    """One asset group and three jobs per spec, sharing one parquet IO manager and the Hub resource."""
    assets: list[dg.AssetsDefinition] = []
    jobs = []
    for spec in specs:
        index, dataset, shards, upload = build_dataset_assets(spec)
        assets += [index, dataset, shards, upload]
        names = job_names(spec)
        jobs += [
            dg.define_asset_job(
                names.prepare,
                selection=dg.AssetSelection.assets(index, dataset),
                description=f"Index {spec.bids_root} and type the dataset; plans the shards.",
            ),
            dg.define_asset_job(
                names.shards,
                selection=dg.AssetSelection.assets(shards),
                partitions_def=shards.partitions_def,
                description="Build one shard partition (embed its NIfTI bytes).",
            ),
            dg.define_asset_job(
                names.upload,
                selection=dg.AssetSelection.assets(upload),
                description="Publish every shard and the card, then verify the published copy.",
            ),
        ]
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        resources={
            IO_MANAGER_KEY: BidsHubParquetIOManager(base_dir=storage_dir or default_storage_dir()),
            HUB_RESOURCE_KEY: hub_resource(),
        },
    )
