"""Every Dagster name of a dataset, made in one place.

Asset keys, the asset group, jobs, the shard partitions, checks, sensors, the schedule
and the pool are all derived here from the spec's ``key`` (``spec.key``: the spec's
``name`` with ``-`` and ``.`` made ``_``, which Dagster accepts in every kind of name).
Code that needs a name asks :func:`names`; nothing rebuilds one from a string.

    names(spec).hub_shards          AssetKey(["arc", "hub_shards"])
    names(spec).jobs.shards         "arc_shards"           (the job: one run per shard)
    names(spec).shard_partitions    "arc_shard_partitions" (the dynamic partitions definition)
    names(spec).pool                "hub_commits"          (shared by every dataset)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import dagster as dg

from ..spec import DatasetSpec

#: The concurrency pool ``hub_upload`` runs in (one slot: two publications never commit
#: together). Not to be confused with ``hf_hub``, the resource key of the Hub credentials.
HUB_POOL = "hub_commits"


@dataclass(frozen=True)
class JobNames:
    """The jobs of one dataset, in the order a full publish runs them."""

    prepare: str  # bids_index + hf_dataset (registers the shard partitions)
    shards: str  # hub_shards, one run per partition
    upload: str  # hub_upload: check the shards, publish them and the card, verify

    def __iter__(self):
        return iter(dataclasses.astuple(self))


@dataclass(frozen=True)
class CheckNames:
    """The asset checks of one dataset (check names are per asset, so the same in every dataset)."""

    shard_files_are_nifti: str = "shard_files_are_nifti"  # on each hub_shards partition
    shard_row_count_matches_plan: str = "shard_row_count_matches_plan"  # on each hub_shards partition
    shards_hold_every_row_once: str = "shards_hold_every_row_once"  # on hub_shards, before the upload
    shards_of_run_pass_checks: str = "shards_of_run_pass_checks"  # on hub_shards: every shard a run built
    published_copy_verifies: str = "published_copy_verifies"  # on hub_upload

    def __iter__(self):
        return iter(dataclasses.astuple(self))


CHECKS = CheckNames()


@dataclass(frozen=True)
class DatasetNames:
    """The Dagster names of one dataset; build it with :func:`names` (or ``DatasetNames.of``)."""

    key: str  # the asset key prefix and group name: spec.key
    display: str  # the name as the user wrote it (spec.name): messages, descriptions, the card
    bids_files: dg.AssetKey
    bids_index: dg.AssetKey
    hf_dataset: dg.AssetKey
    hub_shards: dg.AssetKey
    hub_upload: dg.AssetKey
    jobs: JobNames
    shard_partitions: str  # the DynamicPartitionsDefinition of bids_files and hub_shards
    watch_sensor: str
    refresh_chain_sensor: str
    refresh_schedule: str
    #: where releases before the rename kept the shard partitions (the shards job's name);
    #: ``hf_dataset`` moves them to ``shard_partitions``
    legacy_shard_partitions: str
    checks: CheckNames = CHECKS
    pool: str = HUB_POOL

    @classmethod
    def of(cls, spec: DatasetSpec) -> DatasetNames:
        key = spec.key
        asset = lambda name: dg.AssetKey([key, name])  # noqa: E731
        return cls(
            key=key,
            display=spec.name,
            bids_files=asset("bids_files"),
            bids_index=asset("bids_index"),
            hf_dataset=asset("hf_dataset"),
            hub_shards=asset("hub_shards"),
            hub_upload=asset("hub_upload"),
            jobs=JobNames(prepare=f"{key}_prepare", shards=f"{key}_shards", upload=f"{key}_upload"),
            shard_partitions=f"{key}_shard_partitions",
            legacy_shard_partitions=f"{key}_shards",
            watch_sensor=f"{key}_watch",
            refresh_chain_sensor=f"{key}_refresh_chain",
            refresh_schedule=f"{key}_refresh",
        )

    @property
    def group(self) -> str:
        return self.key

    @property
    def asset_keys(self) -> tuple[dg.AssetKey, ...]:
        """Every asset of the dataset, upstream first (``bids_files`` is an observable source)."""
        return (self.bids_files, self.bids_index, self.hf_dataset, self.hub_shards, self.hub_upload)

    @property
    def check_keys(self) -> tuple[dg.AssetCheckKey, ...]:
        return (
            dg.AssetCheckKey(self.hub_shards, self.checks.shard_files_are_nifti),
            dg.AssetCheckKey(self.hub_shards, self.checks.shard_row_count_matches_plan),
            dg.AssetCheckKey(self.hub_shards, self.checks.shards_hold_every_row_once),
            self.shards_of_run_pass_checks,
            self.published_copy_verifies,
        )

    @property
    def shards_of_run_pass_checks(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.hub_shards, self.checks.shards_of_run_pass_checks)

    @property
    def published_copy_verifies(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.hub_upload, self.checks.published_copy_verifies)

    @property
    def sensors(self) -> tuple[str, ...]:
        return (self.watch_sensor, self.refresh_chain_sensor)

    def owns_run(self, run: dg.DagsterRun) -> bool:
        """Whether a run belongs to this dataset: one of its jobs, or a selection of its assets."""
        return run.job_name in set(self.jobs) or any(
            key.path[0] == self.key for key in run.asset_selection or ()
        )


def names(spec: DatasetSpec) -> DatasetNames:
    """The Dagster names of ``spec``'s dataset."""
    return DatasetNames.of(spec)
