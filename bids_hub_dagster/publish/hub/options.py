"""How a dataset is published to the Hub: the spec's ``hub:`` options and ``hf://`` URLs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..destinations import DestinationError

HUB_SCHEME = "hf://"
DEFAULT_FILES_PER_COMMIT = 50
MAX_FILES_PER_COMMIT = 100  # the Hub asks for fewer than ~100 files per commit
_REPO_URL = re.compile(r"^hf://datasets/([A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@([^/].*))?/?$")
_PART = re.compile(r"^[\w.-]+$")


@dataclass(frozen=True)
class HubOptions:
    """How a dataset is published to the Hub (the spec's ``hub:`` mapping)."""

    private: bool | None = None  # applied when the repo is created; None: the Hub's default (public)
    revision: str | None = None  # branch to publish to; created from main when missing
    create_pr: bool = False  # open a pull request instead of writing the branch
    commit_message: str | None = None
    files_per_commit: int = DEFAULT_FILES_PER_COMMIT
    upload_shards: bool = False  # each shard partition pre-uploads its file as soon as it is built
    verify_download: bool = False  # after publishing, download it all and compare every NIfTI file

    KEYS = (
        "private",
        "revision",
        "create_pr",
        "commit_message",
        "files_per_commit",
        "upload_shards",
        "verify_download",
    )

    def __post_init__(self) -> None:
        n = self.files_per_commit
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_FILES_PER_COMMIT:
            raise ValueError(
                f"hub.files_per_commit must be an integer from 1 to {MAX_FILES_PER_COMMIT}, not {n!r}."
            )
        for key in ("private", "create_pr", "upload_shards", "verify_download"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"hub.{key} must be true or false, not {value!r}.")
        if self.create_pr and self.revision not in (None, "main"):
            raise ValueError("hub.create_pr opens a pull request against main; leave hub.revision unset.")
        if self.commit_message is not None and not str(self.commit_message).strip():
            raise ValueError("hub.commit_message must not be empty.")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> HubOptions:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.KEYS)
        if unknown:
            raise ValueError(f"unknown hub option(s) {sorted(unknown)}; known: {list(cls.KEYS)}.")
        return cls(**{k: v for k, v in raw.items() if v is not None})

    def to_mapping(self) -> dict[str, Any]:
        default = HubOptions()
        return {k: getattr(self, k) for k in self.KEYS if getattr(self, k) != getattr(default, k)}


def is_hub_url(value: str) -> bool:
    return value.startswith(HUB_SCHEME)


def parse_hub_url(value: str) -> tuple[str, str | None]:
    """``hf://datasets/ORG/NAME[@revision]`` → ``("ORG/NAME", revision or None)``."""
    m = _REPO_URL.match(value)
    if not m or not all(_PART.match(p) for p in m.group(1).split("/")):
        raise DestinationError(
            f"{value}: a Hub destination is hf://datasets/ORG/NAME (optionally @branch), "
            "with letters, digits, '-', '_' and '.' in ORG and NAME."
        )
    return m.group(1), m.group(2)
