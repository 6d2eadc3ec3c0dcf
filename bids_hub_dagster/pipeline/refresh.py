"""What to rebuild to bring a published dataset up to date with its BIDS folder.

Compares a fresh index of the folder with what was last built (the versions of
``pipeline.versions`` that each materialization recorded) and names the next step of the
pipeline that has work to do. Steps run in order, each on the previous one's output:

1. re-index, when any source file changed (the stored index's fingerprint differs) or
   the shard plan did (the spec's shard size); this re-plans the shards;
2. rebuild the stale shards (:func:`shards_to_build`);
3. publish, when the publication would differ from the last one.

An unchanged shard is never rebuilt, and an unchanged publication never re-sent.

:func:`shards_to_build` is the one rule of what a stale shard is, for the CLI
(``publish``), the sensors and the schedule: a shard is rebuilt when it was never built,
when its source files changed since it was built (its data version differs), when its
stored file is gone, or when its stored file no longer holds the bytes written then
(sha256 against the digest recorded at write time, ``publish.digests.check_recorded``;
the user is warned). The stored-file part costs a ``stat`` and a sidecar read per shard:
a file is hashed again only when its stamp (size, mtime, ctime, inode) changed since it
was recorded, so the watch sensor can afford it on every tick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ..dataset.shards import ShardPlan
from ..publish.digests import check_recorded
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
class StoredShard:
    """What the shard store holds for one partition: whether its file is there, and intact."""

    exists: bool
    changed: str | None = None  # the file changed since it was written: what differs (names the file)
    digest: str | None = None  # the sha256 of the changed file, as found now


def stored_shard_file(path: Path) -> StoredShard:
    """The state of a stored shard file: missing, intact, or changed since written (its digest)."""
    path = Path(path)
    if not path.is_file():
        return StoredShard(exists=False)
    check = check_recorded(path)  # hashes again only when the file's stamp changed
    return StoredShard(True) if check.ok else StoredShard(True, check.describe(path), check.found)


# why a shard is stale, in the order shards_to_build tests them
NEVER_BUILT = "never built"
SOURCES_CHANGED = "sources changed"  # its data version differs from its last build's
FILE_MISSING = "missing"  # its stored file is gone
FILE_CHANGED = "changed"  # its stored file no longer holds the bytes written (sha256)


@dataclass(frozen=True)
class StaleShard:
    """A shard partition to (re)build, and why."""

    key: str
    cause: str  # NEVER_BUILT, SOURCES_CHANGED, FILE_MISSING or FILE_CHANGED
    warning: str | None = None  # said to the user: the stored file changed behind the tool's back
    digest: str | None = None  # FILE_CHANGED: the sha256 found (run keys tell two such rebuilds apart)

    @property
    def reason(self) -> str:
        return {
            NEVER_BUILT: "never built",
            SOURCES_CHANGED: "its source files changed since it was built",
            FILE_MISSING: "its stored file is missing",
        }.get(self.cause) or str(self.warning)


def shards_to_build(
    current: Mapping[str, str],
    built: Mapping[str, str],
    stored: Callable[[str], StoredShard] | None = None,
) -> list[StaleShard]:
    """The stale shards among ``current``, in its order (the one rule: see the module docstring).

    Args:
        current: ``{partition key: data version}`` of the shards of the current plan
            (``versions.shard_versions`` of the index).
        built: the data version each partition's last materialization recorded.
        stored: the state of a partition's stored file (:func:`stored_shard_file` of its
            path); None skips the stored files (versions only).
    """
    stale = []
    for key, version in current.items():
        was = built.get(key)
        if not was:
            stale.append(StaleShard(key, NEVER_BUILT))
        elif was != version:
            stale.append(StaleShard(key, SOURCES_CHANGED))
        elif stored is not None:
            state = stored(key)
            if not state.exists:
                stale.append(StaleShard(key, FILE_MISSING))
            elif state.changed:
                stale.append(StaleShard(key, FILE_CHANGED, warning=state.changed, digest=state.digest))
    return stale


@dataclass(frozen=True)
class RefreshPlan:
    fingerprint: str  # of the fresh index
    plan_key: str  # the fresh index and its shard plan
    shard_versions: dict[str, str]  # of the fresh plan
    add_partitions: list[str] = field(default_factory=list)
    remove_partitions: list[str] = field(default_factory=list)
    reindex: bool = False
    stale: list[StaleShard] = field(default_factory=list)
    publish: bool = False
    publication: str = ""

    @property
    def stale_shards(self) -> list[str]:
        return [s.key for s in self.stale]

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
    index_table: pa.Table,
    plan: ShardPlan,
    destination: str | None,
    built: BuiltState,
    stored: Callable[[str], StoredShard] | None = None,
) -> RefreshPlan:
    """The next step to take (see the module docstring); ``index_table`` is a fresh index.

    ``stored`` gives the state of a partition's stored file (see :func:`shards_to_build`).
    """
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
    stale = shards_to_build(versions, built.shard_versions, stored)
    if stale:
        return RefreshPlan(**common, stale=stale)
    publication = publication_version(versions, destination or "")
    return RefreshPlan(
        **common,
        publish=bool(destination) and built.publication_version != publication,
        publication=publication,
    )
