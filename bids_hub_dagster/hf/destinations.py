"""Where a dataset is published: a local folder laid out like a Hub dataset repo, or the Hub.

Both take the same input, the shard files in order and the card, and produce
``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``. The Hub repo is in ``hub.py``;
``publish.parse_destination`` picks one from a spec's ``destination`` string.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa
from huggingface_hub import DatasetCard

from .card import PUBLISHED_MARK
from .parquet import atomic_path
from .verify import VerifyReport, verify_published

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


class Destination(Protocol):
    """A place a dataset can be published to."""

    url: str  # shown to users: a folder path or a Hub URL
    load_id: str  # what `datasets.load_dataset` takes to read it back

    def check(self) -> None:
        """Raise DestinationError now if publishing cannot work."""

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult: ...

    def verify(self, index_table: pa.Table) -> VerifyReport:
        """Read the published copy back with ``datasets.load_dataset`` and compare it with the index."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class DestinationError(ValueError):
    """A destination that cannot be published to; the message says why and what to do."""


class LocalFolder:
    """A folder laid out exactly like a Hub dataset repo.

    Publishing is staged so that a crash never leaves a mix of two publications: the
    new data files are linked (hard links from the shard storage when both sit on one
    file system, else copied) into a hidden staging folder beside ``data/``, which then
    replaces ``data/`` by two renames; ``README.md`` is replaced last, atomically. A
    crash while staging leaves the previous publication whole; the staging folder is
    removed by the next publish.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.url = str(self.folder)
        self.load_id = str(self.folder)
        self.check()

    def check(self) -> None:
        """Refuse what cannot work, before any shard is built."""
        if any(c in str(self.folder) for c in "*?[]{}"):
            raise DestinationError(
                f"{self.folder}: datasets reads folder paths as glob patterns, so a path with * ? [ ] {{ }} "
                "could not be loaded back; choose another folder name."
            )
        for parent in (self.folder, *self.folder.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise DestinationError(f"{self.folder}: {parent} is a file, not a folder.")
                break
        readme = self.folder / "README.md"
        if (
            readme.is_file()
            and not (self.folder / "data").is_dir()
            and PUBLISHED_MARK not in readme.read_text(encoding="utf-8", errors="replace")
        ):
            raise DestinationError(
                f"{self.folder} already holds a README.md that this tool did not write and no data/ folder: "
                "publishing would overwrite it; choose an empty or new folder."
            )

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult:
        if not shard_files:
            raise DestinationError(f"{self.folder}: nothing to publish (no shard files).")
        self.check()
        result = PublishResult(url=self.url)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        data = self.folder / "data"
        staging = self.folder / f".staging-{uuid.uuid4().hex[:8]}"
        (staging / "data").mkdir(parents=True)
        n = len(shard_files)
        old = {p.name for p in data.iterdir()} if data.is_dir() else set()
        try:
            for i, src in enumerate(shard_files):
                name = data_file_name(i, n)
                current = self.folder / name
                if _same_file(src, current):
                    result.files_skipped.append(name)
                else:
                    result.files_written.append(name)
                    result.bytes_written += src.stat().st_size
                try:
                    os.link(src, staging / name)
                except OSError:
                    shutil.copyfile(src, staging / name)
            if data.is_dir():
                os.replace(data, staging / "old-data")
            os.replace(staging / "data", data)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with atomic_path(self.folder / "README.md") as tmp:
            tmp.write_text(str(card), encoding="utf-8")
        result.files_written.append("README.md")
        new = {data_file_name(i, n).removeprefix("data/") for i in range(n)}
        result.files_removed = sorted(f"data/{name}" for name in old - new if DATA_FILE.match(name))
        return result

    def verify(self, index_table: pa.Table) -> VerifyReport:
        return verify_published(self.load_id, index_table)
