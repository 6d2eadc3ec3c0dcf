"""What to rebuild to bring a published dataset up to date with its BIDS folder.

Compares a fresh index of the folder with what was last built (the versions of
``pipeline.versions`` that each materialization recorded) and names the next step of the
pipeline that has work to do. Steps run in order, each on the previous one's output:

1. re-index, when any source file changed (the stored index's fingerprint differs) or
   the shard plan did (the spec's shard size); this re-plans the shards;
2. rebuild the shards whose version differs (or that were never built);
3. publish, when the publication would differ from the last one.

An unchanged shard is never rebuilt, and an unchanged publication never re-sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from ..dataset.shards import ShardPlan
from .versions import index_fingerprint, plan_version, publication_version, shard_versions


@dataclass(frozen=True)
class BuiltState:
    """What the last materializations recorded."""

    index_fingerprint: str | None  # of the stored bids_index
    plan_version: str | None  # recorded by the last hf_dataset: structure and shard plan
    partitions: Sequence[str]  # registered shard partitions
    shard_versions: Mapping[str, str]  # data version of each partition's last materialization
    publication_version: str | None  # of the last hub_upload


@dataclass(frozen=True)
class RefreshPlan:
    fingerprint: str  # of the fresh index
    plan_key: str  # the fresh index and its shard plan
    shard_versions: dict[str, str]  # of the fresh plan
    add_partitions: list[str] = field(default_factory=list)
    remove_partitions: list[str] = field(default_factory=list)
    reindex: bool = False
    stale_shards: list[str] = field(default_factory=list)
    publish: bool = False
    publication: str = ""

    @property
    def up_to_date(self) -> bool:
        return not (self.reindex or self.stale_shards or self.publish)

    def summary(self) -> str:
        if self.reindex:
            return "source files changed: re-index" + (
                f" (+{len(self.add_partitions)}/-{len(self.remove_partitions)} shard partitions)"
                if self.add_partitions or self.remove_partitions
                else ""
            )
        if self.stale_shards:
            return f"{len(self.stale_shards)} shard(s) to rebuild: {', '.join(self.stale_shards)}"
        if self.publish:
            return "every shard is current: publish"
        return "up to date"


def plan_refresh(
    index_table: pa.Table, plan: ShardPlan, destination: str | None, built: BuiltState
) -> RefreshPlan:
    """The next step to take (see the module docstring); ``index_table`` is a fresh index."""
    fingerprint = index_fingerprint(index_table)
    planned = plan_version(index_table, plan)
    versions = shard_versions(index_table, plan)
    keys = list(versions)
    add = [k for k in keys if k not in set(built.partitions)]
    remove = [k for k in built.partitions if k not in versions]
    common = {
        "fingerprint": fingerprint,
        "plan_key": f"{fingerprint[:16]}{planned[:16]}",
        "shard_versions": versions,
    }
    if built.index_fingerprint != fingerprint or built.plan_version != planned or add or remove:
        return RefreshPlan(**common, add_partitions=add, remove_partitions=remove, reindex=True)
    stale = [k for k in keys if built.shard_versions.get(k) != versions[k]]
    if stale:
        return RefreshPlan(**common, stale_shards=stale)
    publication = publication_version(versions, destination or "")
    return RefreshPlan(
        **common,
        publish=bool(destination) and built.publication_version != publication,
        publication=publication,
    )
