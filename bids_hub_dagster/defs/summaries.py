"""Typed results of the assets, carried in their materialization metadata.

Each asset body builds one of these from the core's typed values and returns
``summary.metadata()`` with its other metadata: the entries the UI shows (``warnings``,
``files_written``, …) and the whole summary as JSON under :data:`SUMMARY_KEY`. Whoever
reads a materialization back (the CLI, tests) gets the typed value with
``Summary.from_metadata(metadata)`` — never by parsing the UI's strings.

    IndexSummary     bids_index: the warnings of the walk
    ShardSummary     hub_shards partition: its rows, files, bytes and warnings
    PublishSummary   hub_upload: what the publication wrote, where, and its verification
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import dagster as dg

from ..publish.destinations import PublishResult
from ..publish.verify import VerifyReport

#: the metadata entry holding a summary as JSON
SUMMARY_KEY = "bids_hub/summary"
NO_COMMIT = "no commit: nothing had changed"


def _warnings_text(warnings: tuple[str, ...]) -> str:
    return "\n".join(warnings) or "none"


class _Summary:
    """``metadata()`` and ``from_metadata()`` of a summary dataclass (JSON under SUMMARY_KEY)."""

    def _json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**data)

    def _entries(self) -> dict[str, object]:
        return {}

    def metadata(self) -> dict[str, object]:
        """The asset's metadata entries of this summary: what the UI shows, and the JSON."""
        return self._entries() | {SUMMARY_KEY: dg.MetadataValue.json(self._json())}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self | None:
        """The summary a materialization recorded (its ``metadata``), or None if it recorded none."""
        value = metadata.get(SUMMARY_KEY)
        if value is None:
            return None
        data = value.value if isinstance(value, dg.MetadataValue) else value
        return cls._from_json(dict(data))


@dataclass(frozen=True)
class IndexSummary(_Summary):
    """What indexing the BIDS folder found worth saying."""

    warnings: tuple[str, ...] = ()

    def _entries(self) -> dict[str, object]:
        return {"warnings": _warnings_text(self.warnings)}

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Self:
        return cls(warnings=tuple(data.get("warnings", ())))


@dataclass(frozen=True)
class ShardSummary(_Summary):
    """One built shard."""

    key: str
    start: int  # first row (inclusive)
    stop: int  # last row + 1
    num_files: int
    nifti_bytes: int
    warnings: tuple[str, ...] = ()

    def _entries(self) -> dict[str, object]:
        return {
            "rows": f"{self.start}–{self.stop - 1}",
            "files": self.num_files,
            "nifti_bytes": self.nifti_bytes,
            "warnings": _warnings_text(self.warnings),
        }

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**(data | {"warnings": tuple(data.get("warnings", ()))}))


@dataclass(frozen=True)
class PublishSummary(_Summary):
    """A publication: where it went, what it wrote, and how the published copy verified."""

    destination: str
    files_written: int
    files_skipped: int
    files_removed: int
    bytes_written: int
    verification: VerifyReport
    commit_urls: tuple[str, ...] | None = None  # None: the destination makes no commits (a folder)
    pull_request: str | None = None

    @classmethod
    def of(
        cls, result: PublishResult, report: VerifyReport, destination: Mapping[str, object]
    ) -> PublishSummary:
        """From the core's results; ``destination`` is the destination's own ``metadata(result)``."""
        commits = "num_commits" in destination  # the destinations that commit (the Hub) say how many
        pr = destination.get("pull_request") or result.pr_url
        return cls(
            destination=str(destination.get("destination", result.url)),
            files_written=len(result.files_written),
            files_skipped=len(result.files_skipped),
            files_removed=len(result.files_removed),
            bytes_written=result.bytes_written,
            verification=report,
            commit_urls=tuple(result.commit_urls) if commits else None,
            pull_request=str(pr) if pr else None,
        )

    @property
    def commits_text(self) -> str:
        """The commits as a markdown list (what the UI and the CLI show)."""
        return "\n".join(f"- {url}" for url in self.commit_urls or ()) or NO_COMMIT

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Self:
        commits = data.get("commit_urls")
        return cls(
            **(
                data
                | {
                    "verification": VerifyReport(**data["verification"]),
                    "commit_urls": tuple(commits) if commits is not None else None,
                }
            )
        )

    def _entries(self) -> dict[str, object]:
        report = self.verification
        return {
            "dagster/row_count": report.rows_found,
            "files_written": self.files_written,
            "files_skipped": self.files_skipped,
            "files_removed": self.files_removed,
            "bytes_written": self.bytes_written,
            "verified_files": report.files_checked,
            "verified_bytes": report.bytes_checked,
            # sources compared by the sha256 recorded as the shards were built, and those read again
            "sources_by_recorded_digest": report.digests_reused,
            "sources_hashed": report.sources_hashed,
            "verification": report.summary(),
        }
