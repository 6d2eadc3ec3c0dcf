"""Which commits a publish still needs: compare the remote files with the local shards, then batch.

A shard whose remote copy has the same size and LFS sha256 is skipped; the rest are
committed at most ``files_per_commit`` files a commit (additions, deletions, the card and
the manifest all count). Additions go first, then the deletions of an older plan's
shards, and the card and manifest in the last commit, so no file is deleted before its
replacements are in. When several commits are needed, a first one widens the manifest to
old and new files, so an interrupted publish leaves every file it committed listed.
Nothing here talks to the Hub.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..destinations import data_file_name
from ..digests import file_digest
from ..manifest import MANIFEST_NAME, README, Manifest, git_blob_id

NOTHING_OWNED = Manifest.of(())


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files only


@dataclass
class Batch:
    """One planned commit: files to add, paths to delete, and whether it carries the card."""

    adds: list[str]
    deletes: list[str] = field(default_factory=list)
    card: bytes | None = None
    manifest: bytes | None = None  # the new .bids_hub_manifest.json, with the card

    @property
    def empty(self) -> bool:
        return not self.adds and not self.deletes and self.card is None and self.manifest is None


def plan_batches(
    adds: list[str], deletes: list[str], card: bytes | None, size: int, manifest: bytes | None = None
) -> list[Batch]:
    """Commits of at most ``size`` files each (additions, deletions, the card and the manifest all count).

    Additions come first, deletions of the old plan's files after them, and the card and
    manifest in the last commit, so that no file is deleted before its replacements are
    in. They get a commit of their own only when the last batch is full. No change gives
    no commit.
    """
    items = [(name, False) for name in adds] + [(path, True) for path in deletes]
    if not items and card is None and manifest is None:
        return []
    card_slot = (card is not None) + (manifest is not None)
    tail = len(items) % size or (size if items else 0)  # items in the last commit
    if tail + card_slot > size:
        tail = 0
    cut = len(items) - tail
    chunks = [items[i : i + size] for i in range(0, cut, size)] + [items[cut:]]
    batches = [Batch([n for n, gone in c if not gone], [n for n, gone in c if gone]) for c in chunks]
    batches[-1].card = card
    batches[-1].manifest = manifest
    return batches


def plan_commits(
    shard_files: Sequence[Path],
    card: bytes,
    remote: Mapping[str, RemoteFile],
    files_per_commit: int,
    owned: Manifest = NOTHING_OWNED,
) -> tuple[list[Batch], list[str]]:
    """The commits still needed to make ``remote`` equal to ``shard_files`` + card + manifest, and the names skipped.

    Only files that ``owned`` lists (the previous publication's manifest) are deleted.
    """
    n = len(shard_files)
    adds, skipped = [], []
    for i, path in enumerate(shard_files):
        name = data_file_name(i, n)
        there = remote.get(name)
        if there is not None and there.size == path.stat().st_size and there.sha256 == file_digest(path):
            skipped.append(name)
        else:
            adds.append(name)
    wanted = {data_file_name(i, n) for i in range(n)}
    deletes = sorted(p for p in owned.files if p.startswith("data/") and p in remote and p not in wanted)
    readme = remote.get(README)
    card_changed = readme is None or readme.blob_id != git_blob_id(card)
    final = Manifest.of([*wanted, README], readmes=[git_blob_id(card)])
    there = remote.get(MANIFEST_NAME)
    manifest = final.to_bytes()
    manifest_changed = there is None or there.blob_id != git_blob_id(manifest)
    batches = plan_batches(
        adds,
        deletes,
        card if card_changed else None,
        files_per_commit,
        manifest=manifest if manifest_changed else None,
    )
    widened = owned.union(final).to_bytes()
    if len(batches) > 1 and (there is None or there.blob_id != git_blob_id(widened)):
        # several commits: first widen the manifest to old and new files, so that a publish
        # interrupted between two commits leaves every file it committed listed as its own
        batches.insert(0, Batch([], manifest=widened))
    return batches, skipped


def still_needed(batch: Batch, local: Mapping[str, Path], remote: Mapping[str, RemoteFile]) -> Batch:
    """What of ``batch`` the remote does not hold yet (``local``: shard name -> its file)."""
    adds = [n for n in batch.adds if (f := remote.get(n)) is None or f.sha256 != file_digest(local[n])]
    deletes = [p for p in batch.deletes if p in remote]
    card, manifest = batch.card, batch.manifest
    if card is not None and (f := remote.get(README)) is not None and f.blob_id == git_blob_id(card):
        card = None
    if manifest is not None and (f := remote.get(MANIFEST_NAME)) and f.blob_id == git_blob_id(manifest):
        manifest = None
    return Batch(adds, deletes, card, manifest)
