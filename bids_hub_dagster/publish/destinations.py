"""Where a dataset is published: a local folder laid out like a Hub dataset repo, or the Hub.

Both take the same input, the shard files in order and the card, and produce
``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``. The Hub repo is in ``hub/``;
``publish.parse_destination`` picks one from a spec's ``destination`` string.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard

from ..dataset.parquet import atomic_path
from ..errors import UserError
from .card import is_tool_card
from .digests import check_recorded, file_digest, sha256_file
from .manifest import MANIFEST_NAME, README, Manifest, ManifestError, adopted, describe, git_blob_id
from .verify import VerifyReport, short_digest, verify_published

log = logging.getLogger(__name__)
STAGING_PREFIX = ".bids_hub_staging-"
STAGING_MARKER = ".bids_hub_staging"
LOCK_NAME = ".bids_hub_lock"
DATA_FILE = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")


def data_file_name(index: int, num_shards: int) -> str:
    """``data/train-00003-of-00010.parquet``: the name push_to_hub gives shard 3 of 10."""
    return f"data/train-{index:05d}-of-{num_shards:05d}.parquet"


@dataclass
class PublishResult:
    url: str
    files_written: list[str] = field(default_factory=list)  # written or committed by this publish
    files_skipped: list[str] = field(default_factory=list)  # already there, byte for byte
    files_removed: list[str] = field(default_factory=list)  # shards of an older plan
    bytes_written: int = 0  # bytes copied or sent over the network
    commit_urls: list[str] = field(default_factory=list)  # Hub only
    pr_url: str | None = None  # Hub only, with create_pr
    shard_files: list[Path] = field(default_factory=list)  # what was published, in order
    card: DatasetCard | None = None


class Link(str):
    """A web address, as a destination's metadata gives it (the UI shows a link)."""


class Markdown(str):
    """Text in markdown, as a destination's metadata gives it."""


class Destination(Protocol):
    """A place a dataset can be published to.

    What differs between destinations is asked of them, never of their type: how to
    verify a publication by default, whether a shard can be sent ahead of the publish,
    and what the UI shows of them.
    """

    url: str  # shown to users: a folder path or a Hub URL
    load_id: str  # what `datasets.load_dataset` takes to read it back
    supports_preupload: bool  # whether `preupload_shard` sends anything ahead of `publish`

    def check(self) -> None:
        """Raise DestinationError now if publishing cannot work."""

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult: ...

    def verify(self, index_table: pa.Table) -> VerifyReport:
        """Read the published copy back with ``datasets.load_dataset`` and compare it with the index."""

    def verify_quick(
        self, shard_files: Sequence[Path], card: DatasetCard, index_table: pa.Table
    ) -> VerifyReport:
        """Compare each published file with its shard and README.md with the card, without reading the dataset."""

    def verify_after_publish(self, result: PublishResult, index_table: pa.Table) -> VerifyReport:
        """The verification this destination runs after each publish: :meth:`verify` or :meth:`verify_quick`."""

    def preupload_shard(self, path: Path, index: int, num_shards: int) -> int:
        """Send one shard's bytes ahead of the publish, if the destination can; returns the bytes sent."""

    def metadata(self, result: PublishResult | None = None) -> dict[str, object]:
        """What the UI shows of the destination (and of ``result``): plain values, Path, Link, Markdown."""


def shown(path: Path | str) -> str:
    """A path as printed in messages: control characters (a newline in a name) escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class DestinationError(UserError):
    """A destination that cannot be published to; the message says why and what to do."""


class LocalFolder:
    """A folder laid out exactly like a Hub dataset repo.

    The folder's manifest (:mod:`.manifest`) lists what the last publication wrote; a
    publication replaces or deletes only those files. Anything else under ``data/``, a
    README.md the tool did not write, or a folder that is, holds or lies inside one of the
    ``sources`` (the BIDS root and scope folders) is refused before anything is built.

    Publishing is staged so that a crash never leaves a mix of two publications: the new
    data files are linked (hard links from the shard storage when both sit on one file
    system, else copied) and the card written into a hidden staging folder; the manifest
    is widened to old and new files; ``data/`` is swapped by two renames and ``README.md``
    by one; then the manifest is narrowed to the new files and the old data files are
    removed, one by one. A failed rename puts the previous publication back.
    """

    def __init__(
        self,
        folder: Path | str,
        sources: Sequence[Path | str] = (),
        tool_folders: Sequence[Path | str] = (),
        *,
        for_reading: bool = False,
    ) -> None:
        if not str(folder).strip():
            raise DestinationError("the destination is empty: give a folder or hf://datasets/ORG/NAME.")
        self.folder = Path(folder).expanduser().resolve()
        self.sources = tuple(Path(s).expanduser().resolve() for s in sources)
        #: the tool's own folders (instance, shard storage): a destination may not be one or lie inside
        self.tool_folders = tuple(Path(s).expanduser().resolve() for s in tool_folders)
        self.url = str(self.folder)
        self.load_id = str(self.folder)
        if not for_reading:  # `verify` reads a publication: the checks before writing do not apply
            self.check()

    # -- what is there -----------------------------------------------------------------

    def _refuse(self, problem: str) -> DestinationError:
        return DestinationError(f"{shown(self.folder)}: {problem}")

    def _owned(self) -> Manifest:
        """What the tool wrote here: the manifest, else (a pre-manifest publication) what it adopts."""
        path = self.folder / MANIFEST_NAME
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise self._refuse(f"{MANIFEST_NAME} is not a regular file; move it away.")
        if path.is_file():
            try:
                manifest = Manifest.parse(path.read_bytes(), str(path))
            except ManifestError as exc:
                raise DestinationError(str(exc)) from None
            readme = self.folder / README
            if readme.is_file() and not manifest.owns_readme_blob(git_blob_id(readme.read_bytes())):
                return manifest.without_readme()  # edited since it was published: the user's now
            return manifest
        readme = self.folder / README
        if readme.is_file() and is_tool_card(readme.read_text(encoding="utf-8", errors="replace")):
            return adopted(self._present())
        return Manifest.of(())

    def _present(self) -> list[str]:
        """README.md and every entry under data/ (files, links, empty folders), relative to the folder."""
        found = [README] if os.path.lexists(self.folder / README) else []
        data = self.folder / "data"
        if data.is_dir() and not data.is_symlink():
            for dirpath, dirnames, filenames in os.walk(data):
                rel = Path(dirpath).relative_to(self.folder).as_posix()
                found += [f"{rel}/{n}" for n in filenames]
                found += [f"{rel}/{n}/" for n in dirnames if not os.listdir(Path(dirpath, n))]
                found += [f"{rel}/{n}" for n in dirnames if Path(dirpath, n).is_symlink()]
        return found

    def check(self) -> Manifest:
        """Refuse what cannot work or would touch files the tool did not write; return what it owns."""
        if any(c in str(self.folder) for c in "*?[]{}"):
            raise self._refuse(
                "datasets reads folder paths as glob patterns, so a path with * ? [ ] { } could not be "
                "loaded back; choose another folder name."
            )
        for source in self.sources:
            if self.folder == source or self.folder.is_relative_to(source):
                raise self._refuse(
                    f"lies inside the source folder {shown(source)}: publishing would write into the BIDS "
                    "dataset. Choose a destination outside it."
                )
            if source.is_relative_to(self.folder):
                raise self._refuse(
                    f"holds the source folder {shown(source)}: publishing there could replace the BIDS "
                    "dataset. Choose a destination that does not contain it."
                )
        for own in self.tool_folders:
            if self.folder == own or self.folder.is_relative_to(own):
                raise self._refuse(
                    f"lies inside {shown(own)}, a folder of bids_hub_dagster itself (its Dagster instance or "
                    "shard storage). Choose a destination outside it."
                )
        for parent in (self.folder, *self.folder.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise self._refuse(f"{shown(parent)} is a file, not a folder.")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise self._refuse(f"{shown(parent)} is not writable by this user.")
                break
        if not self.folder.exists():
            return Manifest.of(())
        data, readme = self.folder / "data", self.folder / README
        if data.is_symlink() or (data.exists() and not data.is_dir()):
            raise self._refuse(
                "data is not a folder (a file or a link); move it away, or choose another folder."
            )
        if readme.is_symlink() or (readme.exists() and not readme.is_file()):
            raise self._refuse(f"{README} is not a regular file; move it away, or choose another folder.")
        lock = self.folder / LOCK_NAME
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):
            raise self._refuse(f"{LOCK_NAME} is not a regular file (the tool's lock); move it away.")
        owned = self._owned()
        foreign = [p for p in self._present() if p not in owned.files]
        if foreign:
            edited = " (README.md was edited after it was published)" if README in foreign else ""
            raise self._refuse(
                f"holds {len(foreign)} file(s) that bids_hub_dagster did not write, which publishing would "
                f"replace or delete: {describe(foreign)}{edited}. Move them away, or choose an empty or new "
                "folder."
            )
        return owned

    # -- publishing --------------------------------------------------------------------

    def _write_manifest(self, manifest: Manifest) -> None:
        with atomic_path(self.folder / MANIFEST_NAME) as tmp:
            tmp.write_bytes(manifest.to_bytes())

    def _remove_leftover_staging(self, owned: Manifest) -> None:
        """Staging folders of a publish that died (only those that carry the tool's marker):
        the tool's files go; anything else in their ``old-data`` is put back into ``data/``."""
        for leftover in self.folder.glob(f"{STAGING_PREFIX}*"):
            if not leftover.is_symlink() and (leftover / STAGING_MARKER).is_file():
                _clean_staging(leftover, owned, self.folder / "data")

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult:
        if not shard_files:
            raise self._refuse("nothing to publish (no shard files).")
        self.check()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._lock():
                owned = self.check()  # again, now that no other publish of this tool can write here
                return self._publish(shard_files, card, owned)
        except OSError as exc:  # a local file system fault is not transient: say it, never retry it
            raise self._refuse(f"publishing failed, the previous publication is kept: {exc}") from None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold ``.bids_hub_lock`` in the folder: two publishes never write one destination together.

        The lock is an empty file that is only ever locked, never written: a link there is not
        followed, and anything but a regular file is refused.
        """
        path = self.folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # a link (ELOOP), a folder, no permission
            raise self._refuse(
                f"{LOCK_NAME} cannot be used as the tool's lock ({exc.strerror}); move it away."
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._refuse(f"{LOCK_NAME} is not a regular file; move it away.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(
                    "another publish is writing to this folder now; run again when it has finished."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _publish(self, shard_files: Sequence[Path], card: DatasetCard, owned: Manifest) -> PublishResult:
        result = PublishResult(url=self.url)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftover_staging(owned)
        data, readme = self.folder / "data", self.folder / README
        staging = self.folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        (staging / STAGING_MARKER).write_text("a staging folder of bids_hub_dagster; safe to delete\n")
        n = len(shard_files)
        names = [data_file_name(i, n) for i in range(n)]
        new = Manifest.of([*names, README], readmes=[git_blob_id(str(card).encode("utf-8"))])
        try:
            (staging / "data").mkdir()
            for name, src in zip(names, shard_files, strict=True):
                if _same_file(src, self.folder / name):
                    result.files_skipped.append(name)
                else:
                    result.files_written.append(name)
                    result.bytes_written += src.stat().st_size
                try:
                    os.link(src, staging / name)
                except OSError:
                    shutil.copyfile(src, staging / name)
            (staging / README).write_text(str(card), encoding="utf-8")
            # a crash from here on leaves a manifest that covers whatever data/ then holds
            self._write_manifest(owned.union(new))
            self._swap(staging, data, readme)
            self._write_manifest(new)
            result.files_written.append(README)
        finally:  # also after Ctrl-C: the previous data files go, whatever someone else wrote stays
            removed = _clean_staging(staging, owned, data)
            result.files_removed = sorted(r for r in removed if r not in new.files)
        return result

    @staticmethod
    def _swap(staging: Path, data: Path, readme: Path) -> None:
        """``data/`` and ``README.md`` from ``staging`` in place, or both as they were."""
        old = staging / "old-data"
        had_data = data.is_dir()
        try:
            if had_data:
                os.replace(data, old)
            os.replace(staging / "data", data)
        except BaseException:  # an OS error, or Ctrl-C between the two renames
            if had_data and old.is_dir() and not os.path.lexists(data):
                os.replace(old, data)
            raise
        try:
            os.replace(staging / README, readme)
        except BaseException:
            os.replace(data, staging / "data")
            if had_data:
                os.replace(old, data)
            raise

    # -- after publishing --------------------------------------------------------------

    supports_preupload = False  # a local publish links the stored shards: nothing to send ahead

    def preupload_shard(self, path: Path, index: int, num_shards: int) -> int:
        return 0

    def verify(self, index_table: pa.Table) -> VerifyReport:
        return verify_published(self.load_id, index_table)

    def verify_after_publish(self, result: PublishResult, index_table: pa.Table) -> VerifyReport:
        """The full read-back (:meth:`verify`): on a local disk it costs one read of the files."""
        return self.verify(index_table)

    def verify_quick(
        self, shard_files: Sequence[Path], card: DatasetCard, index_table: pa.Table
    ) -> VerifyReport:
        """Compare each published data file with its shard, and README.md with the card.

        A data file that is the shard itself (a hard link) is trusted when the shard's
        recorded digest still holds (its stamp, else a hash); a copy is hashed. Data files
        that no shard of this publication gave are problems too. The shards were checked
        against their sources when they were built; the full read-back is :meth:`verify`.
        """
        shard_files = [Path(p) for p in shard_files]
        n = len(shard_files)
        report = VerifyReport(rows_expected=index_table.num_rows, unit="published files")
        for i, shard in enumerate(shard_files):
            name = data_file_name(i, n)
            published = self.folder / name
            if not published.is_file():
                report.problems.append(f"{shown(published)} is missing (expected a copy of {shown(shard)})")
                continue
            size = published.stat().st_size
            if _same_file(published, shard):
                check = check_recorded(shard)
                if not check.ok:
                    report.problems.append(
                        f"{shown(published)} differs from what was published: " + check.describe(shard)
                    )
                    continue
            elif (found := sha256_file(published)) != (digest := file_digest(shard)):
                report.problems.append(
                    f"{shown(published)} differs from {shown(shard)}: sha256 expected {short_digest(digest)}, "
                    f"found {short_digest(found)}; size expected {shard.stat().st_size}, found {size}"
                )
                continue
            report.files_checked += 1
            report.bytes_checked += size
            report.rows_found += pq.ParquetFile(published).metadata.num_rows
        wanted = {data_file_name(i, n) for i in range(n)}
        extra = sorted(p for p in self._present() if p.startswith("data/") and p not in wanted)
        report.problems += [f"{shown(self.folder / p)} is not a shard of this publication" for p in extra]
        readme = self.folder / README
        content = str(card).encode("utf-8")
        if not readme.is_file():
            report.problems.append(f"{shown(readme)} is missing (expected the card of this publication)")
        elif (found := sha256_file(readme)) != (digest := hashlib.sha256(content).hexdigest()):
            report.problems.append(
                f"{shown(readme)} is not the card of this publication: sha256 expected {short_digest(digest)}, "
                f"found {short_digest(found)}"
            )
        else:
            report.files_checked += 1
            report.bytes_checked += len(content)
        return report

    def metadata(self, result: PublishResult | None = None) -> dict[str, object]:
        return {"destination": self.folder}


def _clean_staging(staging: Path, owned: Manifest, data: Path) -> list[str]:
    """Remove a staging folder of the tool: the previous publication's files (those ``owned``
    lists) in its ``old-data``, its own links and marker; put anything else back into ``data/``
    (or keep it there, named). Returns the data files removed."""
    old = staging / "old-data"
    removed = []
    for rel in sorted(owned.files):
        previous = old / rel.removeprefix("data/")
        if rel.startswith("data/") and (previous.is_file() or previous.is_symlink()):
            previous.unlink()
            if DATA_FILE.match(rel.removeprefix("data/")):
                removed.append(rel)
    if data.is_dir() and not data.is_symlink():
        _put_back(old, data)  # written into data/ by someone else meanwhile: kept
    _remove_own_tree(staging)
    return removed


def _put_back(old: Path, data: Path) -> list[str]:
    """Move files still in the previous ``data/`` (not the tool's) into the new one; their paths.

    The check before publishing refuses a ``data/`` with files the tool did not write, so
    these can only have been written while the publication was swapped in: they are kept.
    """
    kept = []
    for dirpath, _, filenames in os.walk(old) if old.is_dir() else ():
        for name in filenames:
            src = Path(dirpath, name)
            rel = src.relative_to(old)
            dest = data / rel
            if os.path.lexists(dest):
                continue  # left in the staging folder, which is then kept and named
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            kept.append(f"data/{rel.as_posix()}")
    if kept:
        log.warning(
            "kept %d file(s) written into data/ during the publication: %s", len(kept), describe(kept)
        )
    return kept


def _remove_own_tree(staging: Path) -> None:
    """Remove a staging folder bottom-up, keeping (and naming) anything that was not expected there."""
    leftovers = []
    for dirpath, dirnames, filenames in os.walk(staging, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(staging)
            ours = rel.parts[0] in ("data", README, STAGING_MARKER)
            if ours:
                path.unlink()
            else:
                leftovers.append(path)
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.rmdir(Path(dirpath, name))
    with contextlib.suppress(OSError):
        os.rmdir(staging)
    if leftovers:
        log.warning(
            "kept %d unexpected file(s) in %s: %s", len(leftovers), staging, describe(map(str, leftovers))
        )
