"""Read a published dataset back with ``datasets.load_dataset`` and compare every byte."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from datasets import load_dataset
from datasets.exceptions import DatasetsError
from huggingface_hub import HfFileSystem

from .digests import sha256_file
from .tables import IndexInfo


@dataclass
class VerifyReport:
    rows_expected: int
    rows_found: int = 0
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    unit: str = "files"  # what files_checked counts: the NIfTI files, or the published files

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows_found == self.rows_expected

    def summary(self) -> str:
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.rows_found}/{self.rows_expected} rows, "
            f"{self.files_checked} {self.unit}, {self.bytes_checked} bytes compared by sha256"
        )
        if not self.problems:
            return head
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  … and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        return f"{head}\n{shown}{more}"


RowKey = tuple[str, str | None]


def _check_row(
    row: dict,
    expected: dict[RowKey, dict[str, list[str]]],
    info: IndexInfo,
    seen: set[RowKey],
    report: VerifyReport,
) -> None:
    """Compare one published row with its source files; record what differs in ``report``."""
    report.rows_found += 1
    key = (row["subject_id"], row["session_id"])
    label = key[0] if key[1] is None else f"{key[0]}/{key[1]}"
    if key in seen:
        report.problems.append(f"row {label} appears more than once")
        return
    seen.add(key)
    if key not in expected:
        report.problems.append(f"row {label} is not in the BIDS index")
        return
    for name, many in info.columns.items():
        cell = row.get(name)
        got = (cell or []) if many else ([] if cell is None else [cell])
        want = expected[key][name]
        if len(got) != len(want):
            report.problems.append(f"{label} {name}: {len(got)} file(s), expected {len(want)}")
            continue
        for value, rel in zip(got, want, strict=True):
            data = value.get("bytes") if isinstance(value, dict) else None
            if data is None:
                report.problems.append(f"{label} {name}: {rel} is not embedded (no bytes)")
                continue
            if value.get("path") != Path(rel).name:
                report.problems.append(
                    f"{label} {name}: path {value.get('path')!r}, expected {Path(rel).name!r}"
                )
            if hashlib.sha256(data).hexdigest() != sha256_file(info.root / rel):
                report.problems.append(f"{label} {name}: bytes differ from {rel}")
            report.files_checked += 1
            report.bytes_checked += len(data)


def verify_published(
    load_id: str,
    index_table: pa.Table,
    cache_dir: str | None = None,
    *,
    revision: str | None = None,
    token: str | None = None,
) -> VerifyReport:
    """Load ``load_id`` (a folder or a Hub repo id; streaming, fresh cache) and check it against the index.

    Every row of the index must appear exactly once, and every cell must hold the bytes
    of its source files, in order, compared by sha256. ``revision`` and ``token`` are for
    Hub repos: a branch or ``refs/pr/N``, and the token a private repo needs.
    """
    HfFileSystem.clear_instance_cache()  # its listings are cached per process: read the repo as it is now
    info = IndexInfo.of(index_table)
    expected: dict[RowKey, dict[str, list[str]]] = {}
    subs = index_table.column("subject_id").to_pylist()
    sess = index_table.column("session_id").to_pylist()
    cols = {name: index_table.column(name).to_pylist() for name in info.columns}
    for i, key in enumerate(zip(subs, sess, strict=True)):
        cells = {}
        for name, many in info.columns.items():
            value = cols[name][i]
            cells[name] = list(value) if many else ([] if value is None else [value])
        expected[key] = cells
    report = VerifyReport(rows_expected=len(expected))
    seen: set[RowKey] = set()
    with tempfile.TemporaryDirectory(prefix="bids-hub-verify-") as tmp:
        try:
            ds = load_dataset(
                load_id,
                split="train",
                streaming=True,
                revision=revision,
                token=token,
                cache_dir=cache_dir or tmp,
                # read one row group at a time: pre-buffering would hold a whole shard in memory
                fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False),
            ).decode(False)
        except (OSError, DatasetsError, ValueError) as exc:
            report.problems.append(f"cannot load {load_id} with datasets.load_dataset: {exc}")
            return report
        try:
            for row in ds:
                _check_row(row, expected, info, seen, report)
        except (OSError, DatasetsError, pa.ArrowException, ValueError) as exc:
            report.problems.append(f"reading {load_id} failed after {report.rows_found} rows: {exc}")
    missing = [k for k in expected if k not in seen]
    for sub, ses in missing[:50]:
        report.problems.append(f"row {sub if ses is None else f'{sub}/{ses}'} is missing")
    return report
