"""Which commits a publish still needs: compare the remote files with the local shards, then batch.

A shard (or preview file) whose remote copy has the same size and LFS sha256 is skipped;
the rest are committed at most ``files_per_commit`` files a commit (additions, deletions,
the card, preview.png and the manifest all count). Additions go first (preview.png last
among them), then the deletions of the files of an older publication that this one has
not (old shards, an old preview), and the card and manifest in the last commit, so no
file is deleted before its replacements are in and the card never names a picture not
yet there. When several commits are needed, a first one widens the manifest to old and
new files (the preview's included), so an interrupted publish leaves every file it
committed listed. Nothing here talks to the Hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..destinations import published_names
from ..digests import file_digest
from ..manifest import MANIFEST_NAME, PREVIEW_PNG, README, Manifest, git_blob_id
from ..sources import LOCAL_FILES, FileSource

NOTHING_OWNED = Manifest.of(())


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files only


def remote_matches(there: RemoteFile | None, data: bytes) -> bool:
    """Whether a remote file holds ``data``: by its LFS sha256 when it is an LFS file, else its git blob id."""
    if there is None or there.size != len(data):
        return False
    if there.sha256 is not None:
        return there.sha256 == hashlib.sha256(data).hexdigest()
    return there.blob_id == git_blob_id(data)


@dataclass
class Batch:
    """One planned commit: files to add, paths to delete, and whether it carries the card."""

    adds: list[str]
    deletes: list[str] = field(default_factory=list)
    card: bytes | None = None
    manifest: bytes | None = None  # the new .bids_hub_manifest.json, with the card
    #: small files given as bytes (preview.png), added after the files
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return (
            not self.adds
            and not self.deletes
            and self.card is None
            and self.manifest is None
            and not self.blobs
        )


def plan_batches(
    adds: list[str],
    deletes: list[str],
    card: bytes | None,
    size: int,
    manifest: bytes | None = None,
    blobs: dict[str, bytes] | None = None,
) -> list[Batch]:
    """Commits of at most ``size`` files each (additions, ``blobs``, deletions, the card and the manifest all count).

    Additions come first (the files, then ``blobs``: small files given as bytes, such as
    preview.png), deletions of the old plan's files after them, and the card and manifest
    in the last commit, so that no file is deleted before its replacements are in and the
    card never names a file not there yet. They get a commit of their own only when the
    last batch is full. No change gives no commit.
    """
    blobs = dict(blobs or {})
    items = [(name, "add") for name in adds] + [(name, "blob") for name in blobs]
    items += [(path, "delete") for path in deletes]
    if not items and card is None and manifest is None:
        return []
    card_slot = (card is not None) + (manifest is not None)
    tail = len(items) % size or (size if items else 0)  # items in the last commit
    if tail + card_slot > size:
        tail = 0
    cut = len(items) - tail
    chunks = [items[i : i + size] for i in range(0, cut, size)] + [items[cut:]]
    batches = [
        Batch(
            [n for n, kind in c if kind == "add"],
            [n for n, kind in c if kind == "delete"],
            blobs={n: blobs[n] for n, kind in c if kind == "blob"},
        )
        for c in chunks
    ]
    batches[-1].card = card
    batches[-1].manifest = manifest
    return batches


def local_files(shard_files: Sequence[Path], preview_files: Sequence[Path] = ()) -> dict[str, Path]:
    """The names a publication gives its local files: ``data/…`` for the shards, ``preview/…`` for their previews."""
    names = published_names(len(shard_files), len(preview_files), False)
    return dict(zip(names["data"], map(Path, shard_files), strict=True)) | dict(
        zip(names["preview"], map(Path, preview_files), strict=True)
    )


def plan_commits(
    shard_files: Sequence[Path],
    card: bytes,
    remote: Mapping[str, RemoteFile],
    files_per_commit: int,
    owned: Manifest = NOTHING_OWNED,
    *,
    preview_files: Sequence[Path] = (),
    preview_png: bytes | None = None,
    source: FileSource = LOCAL_FILES,
) -> tuple[list[Batch], list[str]]:
    """The commits still needed to make ``remote`` equal to ``shard_files`` (+ ``preview_files``,
    ``preview_png``) + card + manifest, and the names skipped.

    Only files that ``owned`` lists (the previous publication's manifest) are deleted. The
    files' sizes and sha256 are ``source``'s (a remote store's digest records: nothing read).
    """
    adds, skipped = [], []
    for name, path in local_files(shard_files, preview_files).items():
        there = remote.get(name)
        if there is not None and there.size == source.size(path) and there.sha256 == source.sha256(path):
            skipped.append(name)
        else:
            adds.append(name)
    names = published_names(len(shard_files), len(preview_files), preview_png is not None)
    wanted = {*names["data"], *names["preview"], *names["other"]}
    deletes = sorted(p for p in owned.files if p in remote and p not in wanted)
    blobs: dict[str, bytes] = {}
    if preview_png is not None:
        if remote_matches(remote.get(PREVIEW_PNG), preview_png):
            skipped.append(PREVIEW_PNG)
        else:
            blobs[PREVIEW_PNG] = preview_png
    readme = remote.get(README)
    card_changed = readme is None or readme.blob_id != git_blob_id(card)
    final = Manifest.of(wanted, readmes=[git_blob_id(card)])
    there = remote.get(MANIFEST_NAME)
    manifest = final.to_bytes()
    manifest_changed = there is None or there.blob_id != git_blob_id(manifest)
    batches = plan_batches(
        adds,
        deletes,
        card if card_changed else None,
        files_per_commit,
        manifest=manifest if manifest_changed else None,
        blobs=blobs,
    )
    widened = owned.union(final).to_bytes()
    if len(batches) > 1 and (there is None or there.blob_id != git_blob_id(widened)):
        # several commits: first widen the manifest to old and new files, so that a publish
        # interrupted between two commits leaves every file it committed listed as its own
        batches.insert(0, Batch([], manifest=widened))
    return batches, skipped


def still_needed(batch: Batch, local: Mapping[str, Path], remote: Mapping[str, RemoteFile]) -> Batch:
    """What of ``batch`` the remote does not hold yet (``local``: shard name -> its local file, for
    the names ``batch`` adds at least)."""
    adds = [n for n in batch.adds if (f := remote.get(n)) is None or f.sha256 != file_digest(local[n])]
    deletes = [p for p in batch.deletes if p in remote]
    card, manifest = batch.card, batch.manifest
    if card is not None and (f := remote.get(README)) is not None and f.blob_id == git_blob_id(card):
        card = None
    if manifest is not None and (f := remote.get(MANIFEST_NAME)) and f.blob_id == git_blob_id(manifest):
        manifest = None
    blobs = {name: data for name, data in batch.blobs.items() if not remote_matches(remote.get(name), data)}
    return Batch(adds, deletes, card, manifest, blobs)
