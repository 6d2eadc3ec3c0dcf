"""JSON sidecars with the BIDS inheritance principle applied."""

from __future__ import annotations

import codecs
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .entities import parse_filename
from .errors import shown
from .layout import BidsFile

log = logging.getLogger(__name__)


class SidecarResolver:
    """Finds and merges the sidecars that apply to a data file.

    A sidecar applies when it sits in the file's folder or one of its ancestors (up to
    the top of the file's scope), has the same suffix, and all of its entities appear
    in the file's name with the same values. Values from sidecars closer to the file
    (deeper folders, then more specific names) override the rest.
    """

    def __init__(self, root: Path, json_relpaths: Iterable[str]) -> None:
        self.root = root
        self._by_dir: dict[tuple[str, str | None], list[tuple[str, frozenset[tuple[str, str]]]]] = (
            defaultdict(list)
        )
        self._cache: dict[str, dict[str, Any] | None] = {}
        self.warnings: list[str] = []
        for rel in json_relpaths:
            folder, _, filename = rel.rpartition("/")
            name = parse_filename(filename)
            self._by_dir[(folder, name.suffix)].append((rel, frozenset(name.all_entities().items())))

    def _read(self, rel: str) -> dict[str, Any] | None:
        if rel not in self._cache:
            try:
                with open(self.root / rel, "rb") as fh:
                    raw = fh.read()
                data = json.loads(raw.removeprefix(codecs.BOM_UTF8))
                self._cache[rel] = data if isinstance(data, dict) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.warnings.append(f"{shown(rel)}: sidecar not readable ({exc}); ignored")
                self._cache[rel] = None
        return self._cache[rel]

    def sources(self, file: BidsFile) -> list[str]:
        """The sidecars that apply to ``file``, least specific first."""
        parts = file.relpath.split("/")[:-1]
        scope_depth = len(file.scope.split("/")) if file.scope else 0
        ents = file.name.all_entities().items()
        found: list[tuple[int, int, str]] = []
        for depth in range(scope_depth, len(parts) + 1):
            folder = "/".join(parts[:depth])
            for rel, cand in self._by_dir.get((folder, file.suffix), ()):
                if cand <= ents:
                    found.append((depth, len(cand), rel))
        return [rel for _, _, rel in sorted(found)]

    def read_sources(self, rows: Iterable[Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """Every sidecar that applies to a file of ``rows`` (once each) with its content."""
        seen: dict[str, None] = {}
        for row in rows:
            for file in row.files:
                for rel in self.sources(file):
                    seen.setdefault(rel)
        return [(rel, self._read(rel)) for rel in seen]

    def resolve(self, file: BidsFile) -> dict[str, Any]:
        """The merged sidecar metadata of ``file`` (empty when none applies)."""
        merged: dict[str, Any] = {}
        for rel in self.sources(file):
            data = self._read(rel)
            if data:
                merged.update(data)
        return merged
