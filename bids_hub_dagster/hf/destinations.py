"""Where a dataset is published: a local folder laid out like a Hub dataset repo, or the Hub.

Both take the same input, the shard files in order and the card, and produce
``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from huggingface_hub import DatasetCard

from .parquet import atomic_path

DATA_FILE = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")


def data_file_name(index: int, num_shards: int) -> str:
    """``data/train-00003-of-00010.parquet``: the name push_to_hub gives shard 3 of 10."""
    return f"data/train-{index:05d}-of-{num_shards:05d}.parquet"


@dataclass
class PublishResult:
    url: str
    files_written: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    bytes_written: int = 0


class Destination(Protocol):
    """A place a dataset can be published to."""

    url: str  # shown to users: a folder path or a Hub URL
    load_id: str  # what `datasets.load_dataset` takes to read it back

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult: ...


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class LocalFolder:
    """A folder laid out exactly like a Hub dataset repo.

    Every file is written under a temporary name and renamed into place, so a crash
    never leaves a half-written file; shard files are hard-linked from the shard
    storage when both sit on one file system (no copy of the bytes), else copied.
    Data files of an older, larger plan are removed after the new ones are in place.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.url = str(self.folder)
        self.load_id = str(self.folder)

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult:
        result = PublishResult(url=self.url)
        n = len(shard_files)
        wanted: set[str] = set()
        for i, src in enumerate(shard_files):
            name = data_file_name(i, n)
            wanted.add(name)
            dest = self.folder / name
            if _same_file(src, dest):
                result.files_skipped.append(name)
                continue
            with atomic_path(dest) as tmp:
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            result.files_written.append(name)
            result.bytes_written += dest.stat().st_size
        with atomic_path(self.folder / "README.md") as tmp:
            tmp.write_text(str(card), encoding="utf-8")
        result.files_written.append("README.md")
        data_dir = self.folder / "data"
        for path in sorted(data_dir.iterdir()):
            rel = f"data/{path.name}"
            stale = DATA_FILE.match(path.name) and rel not in wanted
            leftover = path.name.startswith(".") and path.name.endswith(".tmp")
            if stale or leftover:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                if stale:
                    result.files_removed.append(rel)
        return result


def parse_destination(value: str) -> Destination:
    """A destination from its spec string: a folder path, or ``hf://datasets/ORG/NAME``."""
    if value.startswith("hf://"):
        raise NotImplementedError(
            f"{value}: publishing to the Hugging Face Hub is not available in this version; "
            "publish to a local folder and upload it with `huggingface-cli upload --repo-type dataset`."
        )
    if "://" in value:
        raise ValueError(f"{value}: destinations are a local folder or hf://datasets/ORG/NAME.")
    return LocalFolder(value)
