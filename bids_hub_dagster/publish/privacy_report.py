"""The privacy gate's report, kept beside what was published (never published itself).

A local destination gets ``DEST/.bids_hub_privacy_report.json`` (a hidden file: ``datasets``
loads no hidden file, and the manifest never lists it); a Hub destination's report stays in
the shard storage folder, beside the shards, since nothing unpublished may go to the repo.
The file is replaced only when the tool wrote it (it names its writer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..dataset.parquet import atomic_path

REPORT_NAME = ".bids_hub_privacy_report.json"
WRITER = "bids_hub_dagster"


def _ours(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == WRITER


def write_privacy_report(folder: Path, dataset: str, report: dict[str, Any]) -> Path | None:
    """Write ``report`` (the gate's JSON form) into ``folder``; None when a file of that name is not ours."""
    path = Path(folder) / REPORT_NAME
    if (path.exists() or path.is_symlink()) and not _ours(path):
        return None
    body = {"written_by": WRITER, "dataset": dataset, **report}
    with atomic_path(path) as tmp:  # a killed write leaves .NAME.<8 hex>.tmp, which publish clears
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
    return path
