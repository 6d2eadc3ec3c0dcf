"""Where a dataset is published: a local folder laid out like a Hub dataset repo, or the Hub.

Both take the same input, the shard files in order and the card, and produce
``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``; with a preview, also one
``preview/train-XXXXX-of-NNNNN.parquet`` per shard (the ``preview`` config) and
``preview.png`` beside the card. The Hub repo is in ``hub/``; ``publish.parse_destination``
picks one from a spec's ``destination`` string.
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
from .digests import check_recorded, file_digest, link_recorded, load_source_digests, sha256_file
from .manifest import (
    MANIFEST_NAME,
    PREVIEW_PNG,
    README,
    TOOL_FOLDERS,
    Manifest,
    ManifestError,
    adopted,
    describe,
    git_blob_id,
    is_guarded,
)
from .sources import FileSource
from .verify import VerifyReport, short_digest, verify_preview_config, verify_published

log = logging.getLogger(__name__)
STAGING_PREFIX = ".bids_hub_staging-"
STAGING_MARKER = ".bids_hub_staging"
LOCK_NAME = ".bids_hub_lock"
DATA_FILE = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")


def data_file_name(index: int, num_shards: int) -> str:
    """``data/train-00003-of-00010.parquet``: the name push_to_hub gives shard 3 of 10."""
    return f"data/train-{index:05d}-of-{num_shards:05d}.parquet"


def preview_file_name(index: int, num_shards: int) -> str:
    """``preview/train-00003-of-00010.parquet``: the preview of shard 3 of 10 (the ``preview`` config)."""
    return f"preview/train-{index:05d}-of-{num_shards:05d}.parquet"


def published_names(num_shards: int, num_previews: int, has_png: bool) -> dict[str, list[str]]:
    """The names a publication writes: ``data``, ``preview`` (one per shard, or none) and ``other``
    (README.md, and preview.png when there is one)."""
    if num_previews not in (0, num_shards):
        raise ValueError(
            f"{num_previews} preview file(s) for {num_shards} shard(s): give one per shard, or none"
        )
    return {
        "data": [data_file_name(i, num_shards) for i in range(num_shards)],
        "preview": [preview_file_name(i, num_shards) for i in range(num_previews)],
        "other": [README] + ([PREVIEW_PNG] if has_png else []),
    }


def check_publishable(url: str, shard_files: Sequence[Path], preview_files: Sequence[Path]) -> None:
    """Refuse a publication of no shard, or of previews that are not one per shard."""
    if not shard_files:
        raise DestinationError(f"{url}: nothing to publish (no shard files).")
    if len(preview_files) not in (0, len(shard_files)):
        raise DestinationError(
            f"{url}: {len(preview_files)} preview file(s) for {len(shard_files)} shard(s): give one per shard, or none."
        )


@dataclass
class PublishResult:
    url: str
    files_written: list[str] = field(default_factory=list)  # written or committed by this publish
    files_skipped: list[str] = field(default_factory=list)  # already there, byte for byte
    files_removed: list[str] = field(default_factory=list)  # files of an older publication (shards, previews)
    bytes_written: int = 0  # bytes copied or sent over the network
    commit_urls: list[str] = field(default_factory=list)  # Hub only
    pr_url: str | None = None  # Hub only, with create_pr
    shard_files: list[Path] = field(default_factory=list)  # what was published, in order
    card: DatasetCard | None = None
    preview_files: list[Path] = field(default_factory=list)  # the stored preview files published, in order
    preview_png: bytes | None = None  # preview.png as published
    #: how ``shard_files``/``preview_files`` are read (None: local files); a remote store's keys
    #: are verified by their digest records, never fetched again
    source: FileSource | None = None
    configs: dict[str, str] = field(default_factory=dict)  # the card's configs: name -> data files pattern


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
    #: whether `publish` takes a remote store's files as keys (``source=``, a ``sources.StoredSource``)
    #: and copies them to scratch a commit batch at a time; if not, they are all copied first
    publishes_from_store: bool

    def check(self) -> None:
        """Raise DestinationError now if publishing cannot work."""

    def is_public(self) -> bool | None:
        """Whether what is published here is public, read without changing anything (None: not known yet)."""

    def publish(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
    ) -> PublishResult:
        """Publish the shards (``data/``), their previews (``preview/``, one per shard, or none),
        ``preview.png`` (or none) and the card; files of an earlier publication that this one
        does not have are removed (only those its manifest lists)."""

    def verify(self, index_table: pa.Table) -> VerifyReport:
        """Read the published copy back with ``datasets.load_dataset`` and compare it with the index."""

    def verify_quick(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        index_table: pa.Table,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
    ) -> VerifyReport:
        """Compare each published file (shards, previews, preview.png) with its source and README.md with
        the card, without reading the dataset."""

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
    publication replaces or deletes only those files. Anything else under ``data/`` or
    ``preview/``, a README.md or preview.png the tool did not write, or a folder that is,
    holds or lies inside one of the ``sources`` (the BIDS root and scope folders) is refused
    before anything is built.

    Publishing is staged so that a crash never leaves a mix of two publications: the new
    data and preview files are linked (hard links from the shard storage when both sit on
    one file system, else copied), preview.png and the card written into a hidden staging
    folder; the manifest is widened to old and new files; ``data/`` and ``preview/`` are
    swapped by two renames each, ``preview.png`` and ``README.md`` by one each (the card
    last); then the manifest is narrowed to the new files and the old files are removed,
    one by one. A failed rename puts the previous publication back, every part of it.
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
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
        if is_tool_card(text):
            return adopted(self._present(), text)
        return Manifest.of(())

    def _present(self) -> list[str]:
        """README.md, preview.png and every entry under data/ and preview/ (files, links, empty
        folders), relative to the folder: what must be the tool's before it publishes here."""
        found = [name for name in (README, PREVIEW_PNG) if os.path.lexists(self.folder / name)]
        for top in TOOL_FOLDERS:
            folder = self.folder / top
            if not folder.is_dir() or folder.is_symlink():
                continue
            for dirpath, dirnames, filenames in os.walk(folder):
                rel = Path(dirpath).relative_to(self.folder).as_posix()
                found += [f"{rel}/{n}" for n in filenames]
                found += [f"{rel}/{n}/" for n in dirnames if not os.listdir(Path(dirpath, n))]
                found += [f"{rel}/{n}" for n in dirnames if Path(dirpath, n).is_symlink()]
        return found

    def is_public(self) -> bool:
        """A local folder is not a public repo (its sharing is the user's business)."""
        return False

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
        for top in TOOL_FOLDERS:
            folder = self.folder / top
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise self._refuse(
                    f"{top} is not a folder (a file or a link); move it away, or choose another folder."
                )
        for name in (README, PREVIEW_PNG):
            path = self.folder / name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise self._refuse(f"{name} is not a regular file; move it away, or choose another folder.")
        lock = self.folder / LOCK_NAME
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):
            raise self._refuse(f"{LOCK_NAME} is not a regular file (the tool's lock); move it away.")
        owned = self._owned()
        foreign = [p for p in self._present() if is_guarded(p) and p not in owned.files]
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
        the tool's files go; anything else in their ``old-data`` (``old-preview``) is put back
        into ``data/`` (``preview/``)."""
        for leftover in self.folder.glob(f"{STAGING_PREFIX}*"):
            if not leftover.is_symlink() and (leftover / STAGING_MARKER).is_file():
                _clean_staging(leftover, owned, self.folder)

    def publish(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
    ) -> PublishResult:
        check_publishable(self.url, shard_files, preview_files)
        self.check()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._lock():
                owned = self.check()  # again, now that no other publish of this tool can write here
                return self._publish(shard_files, card, owned, [Path(p) for p in preview_files], preview_png)
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

    def _publish(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        owned: Manifest,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
    ) -> PublishResult:
        result = PublishResult(url=self.url)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftover_staging(owned)
        staging = self.folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        (staging / STAGING_MARKER).write_text("a staging folder of bids_hub_dagster; safe to delete\n")
        names = published_names(len(shard_files), len(preview_files), preview_png is not None)
        new = Manifest.of(
            [*names["data"], *names["preview"], *names["other"]],
            readmes=[git_blob_id(str(card).encode("utf-8"))],
        )
        try:
            for top, files in (("data", shard_files), ("preview", preview_files)):
                if files:
                    (staging / top).mkdir()
                for name, src in zip(names[top], files, strict=True):
                    if _same_file(src, self.folder / name):
                        result.files_skipped.append(name)
                    else:
                        result.files_written.append(name)
                        result.bytes_written += src.stat().st_size
                    try:  # the stored shard's recorded digest stays trusted across the link
                        link_recorded(src, staging / name)
                    except OSError:
                        shutil.copyfile(src, staging / name)
            if preview_png is not None:
                there = self.folder / PREVIEW_PNG
                if there.is_file() and there.read_bytes() == preview_png:
                    result.files_skipped.append(PREVIEW_PNG)
                else:
                    result.files_written.append(PREVIEW_PNG)
                    result.bytes_written += len(preview_png)
                (staging / PREVIEW_PNG).write_bytes(preview_png)
            (staging / README).write_text(str(card), encoding="utf-8")
            # a crash from here on leaves a manifest that covers whatever data/ and preview/ then hold
            self._write_manifest(owned.union(new))
            self._swap(staging)
            self._write_manifest(new)
            result.files_written.append(README)
        finally:  # also after Ctrl-C: the previous files go, whatever someone else wrote stays
            removed = _clean_staging(staging, owned, self.folder)
            result.files_removed = sorted(r for r in removed if r not in new.files)
        return result

    #: what a publication swaps in, in this order: the card last, so that it never names files
    #: not yet in place (its preview.png, its configs' folders)
    SWAPPED = ("data", "preview", PREVIEW_PNG, README)

    def _swap(self, staging: Path) -> None:
        """``data/``, ``preview/``, ``preview.png`` and ``README.md`` from ``staging`` in place, or all as they were.

        What ``staging`` does not hold is moved out of the way (into ``staging/old-NAME``,
        removed after the swap when the previous manifest lists it): a publication without
        a preview takes the previous one's away. A folder is swapped by two renames (the old
        one out, the new one in); a file by one, after a hard link keeps the old one for a
        rollback (the card, swapped last, needs none). Any failure, Ctrl-C included, undoes
        every step already made, in reverse.
        """
        done: list[tuple[str, Path, Path]] = []  # ("rename" | "link", source, destination), before it runs
        try:
            for k, name in enumerate(self.SWAPPED):
                target, staged, old = self.folder / name, staging / name, staging / f"old-{name}"
                had, has_new = os.path.lexists(target), os.path.lexists(staged)
                if had and (not has_new or target.is_dir()):
                    done.append(("rename", target, old))
                    os.replace(target, old)
                elif had and k < len(self.SWAPPED) - 1:
                    done.append(("link", target, old))
                    _link_or_copy(target, old)
                if has_new:
                    done.append(("rename", staged, target))
                    os.replace(staged, target)
        except BaseException:  # an OS error, or Ctrl-C between two renames
            for kind, source, dest in reversed(done):
                # a step recorded but not made (it failed, or was interrupted before it ran) has nothing to undo
                if os.path.lexists(dest) and (kind == "link" or not os.path.lexists(source)):
                    try:
                        os.replace(dest, source)
                    except OSError as exc:  # keep undoing the other steps; say what could not be
                        log.error("could not put %s back from %s: %s", shown(source), shown(dest), exc)
            raise

    # -- after publishing --------------------------------------------------------------

    supports_preupload = False  # a local publish links the stored shards: nothing to send ahead
    #: From a remote store, every shard and preview is copied to scratch first and the copies are
    #: hard-linked in (``publication.local_shard_files``: the staging and the swap need them all at
    #: once, and a link from scratch on the folder's file system moves nothing), so scratch needs
    #: room for the whole dataset, as the folder itself does.
    publishes_from_store = False

    def preupload_shard(self, path: Path, index: int, num_shards: int) -> int:
        return 0

    def verify(self, index_table: pa.Table) -> VerifyReport:
        return verify_published(self.load_id, index_table)

    def verify_after_publish(self, result: PublishResult, index_table: pa.Table) -> VerifyReport:
        """The full read-back (:meth:`verify`): on a local disk it costs one read of the files.

        With a preview, each published preview file and preview.png are also compared with
        what was published (the read-back checks the preview config's rows, not its bytes).
        """
        # the sources' sha256 recorded as the shards were built (each trusted only while its file
        # is unchanged): the read-back then reads the published bytes, not every source again
        report = verify_published(
            self.load_id, index_table, source_digests=load_source_digests(result.shard_files)
        )
        if result.preview_files or result.preview_png is not None:
            previews = VerifyReport(rows_expected=0, unit="published files")
            self._compare_previews(
                len(result.shard_files), result.preview_files, result.preview_png, previews
            )
            report.problems += previews.problems
        return report

    def _compare(self, name: str, stored: Path, report: VerifyReport) -> int | None:
        """Compare the published ``name`` with the stored file it was published from; its size when equal.

        A published file that is the stored one itself (a hard link) is trusted when the
        stored file's recorded digest still holds (its stamp, else a hash); a copy is hashed.
        """
        published = self.folder / name
        if not published.is_file():
            report.problems.append(f"{shown(published)} is missing (expected a copy of {shown(stored)})")
            return None
        size = published.stat().st_size
        if _same_file(published, stored):
            check = check_recorded(stored)
            if not check.ok:
                report.problems.append(
                    f"{shown(published)} differs from what was published: " + check.describe(stored)
                )
                return None
        elif (found := sha256_file(published)) != (digest := file_digest(stored)):
            report.problems.append(
                f"{shown(published)} differs from {shown(stored)}: sha256 expected {short_digest(digest)}, "
                f"found {short_digest(found)}; size expected {stored.stat().st_size}, found {size}"
            )
            return None
        report.files_checked += 1
        report.bytes_checked += size
        return size

    def _extra(self, top: str, wanted: set[str], what: str, report: VerifyReport) -> None:
        """Files under ``top``/ that this publication did not write: problems."""
        extra = sorted(p for p in self._present() if p.startswith(f"{top}/") and p not in wanted)
        report.problems += [f"{shown(self.folder / p)} is not {what} of this publication" for p in extra]

    def _compare_previews(
        self, num_shards: int, preview_files: Sequence[Path], preview_png: bytes | None, report: VerifyReport
    ) -> None:
        """Each published preview file and preview.png against what was published; none left over."""
        names = published_names(num_shards, len(preview_files), preview_png is not None)
        for name, stored in zip(names["preview"], preview_files, strict=True):
            self._compare(name, Path(stored), report)
        self._extra("preview", set(names["preview"]), "a preview file", report)
        png = self.folder / PREVIEW_PNG
        if preview_png is None:
            if os.path.lexists(png):
                report.problems.append(
                    f"{shown(png)} is not part of this publication (it has no preview.png)"
                )
        elif not png.is_file():
            report.problems.append(
                f"{shown(png)} is missing (expected the preview picture of this publication)"
            )
        elif (found := sha256_file(png)) != (digest := hashlib.sha256(preview_png).hexdigest()):
            report.problems.append(
                f"{shown(png)} is not the preview picture of this publication: sha256 expected "
                f"{short_digest(digest)}, found {short_digest(found)}"
            )
        else:
            report.files_checked += 1
            report.bytes_checked += len(preview_png)

    def verify_quick(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        index_table: pa.Table,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
    ) -> VerifyReport:
        """Compare each published data and preview file with its stored file, preview.png with the
        bytes published, README.md with the card; and that the preview config loads with its rows.

        A data file that is the shard itself (a hard link) is trusted when the shard's
        recorded digest still holds (its stamp, else a hash); a copy is hashed. Data and
        preview files that no shard of this publication gave are problems too. The shards
        were checked against their sources when they were built; the full read-back is
        :meth:`verify`.
        """
        shard_files = [Path(p) for p in shard_files]
        n = len(shard_files)
        report = VerifyReport(rows_expected=index_table.num_rows, unit="published files")
        names = published_names(n, len(preview_files), preview_png is not None)
        for name, shard in zip(names["data"], shard_files, strict=True):
            if self._compare(name, shard, report) is not None:
                report.rows_found += pq.ParquetFile(self.folder / name).metadata.num_rows
        self._extra("data", set(names["data"]), "a shard", report)
        self._compare_previews(n, preview_files, preview_png, report)
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
            if preview_files:  # the card names the configs: the preview one must load, with every row
                report.problems += verify_preview_config(self.load_id, index_table.num_rows)
        return report

    def metadata(self, result: PublishResult | None = None) -> dict[str, object]:
        return {"destination": self.folder}


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _clean_staging(staging: Path, owned: Manifest, folder: Path) -> list[str]:
    """Remove a staging folder of the tool in ``folder``: the previous publication's files (those
    ``owned`` lists) in its ``old-data``, ``old-preview`` and ``old-preview.png``, its own links and
    marker; put anything else back into ``data/`` or ``preview/`` (or keep it there, named).
    Returns the files removed."""
    removed = []
    for rel in sorted(owned.files):
        top, _, below = rel.partition("/")
        if top in TOOL_FOLDERS and below:
            previous = staging / f"old-{top}" / below
        elif rel == PREVIEW_PNG:
            previous = staging / f"old-{PREVIEW_PNG}"
        else:
            continue
        if previous.is_file() or previous.is_symlink():
            previous.unlink()
            removed.append(rel)
    for top in TOOL_FOLDERS:
        target = folder / top
        old = staging / f"old-{top}"
        if old.is_dir() and not target.is_symlink() and (target.is_dir() or not os.path.lexists(target)):
            _put_back(old, target)  # written into data/ (preview/) by someone else meanwhile: kept
    _remove_own_tree(staging)
    return removed


def _put_back(old: Path, data: Path) -> list[str]:
    """Move files still in the previous ``data/`` (or ``preview/``; not the tool's) into the new one; their paths.

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
            kept.append(f"{data.name}/{rel.as_posix()}")
    if kept:
        log.warning(
            "kept %d file(s) written into %s/ during the publication: %s",
            len(kept),
            data.name,
            describe(kept),
        )
    return kept


def _remove_own_tree(staging: Path) -> None:
    """Remove a staging folder bottom-up, keeping (and naming) anything that was not expected there."""
    leftovers = []
    for dirpath, dirnames, filenames in os.walk(staging, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(staging)
            ours = rel.parts[0] in (*TOOL_FOLDERS, PREVIEW_PNG, README, STAGING_MARKER)
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
