"""JSON sidecars with the BIDS inheritance principle applied."""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .entities import NameKey, name_key
from .errors import shown
from .layout import BidsFile

log = logging.getLogger(__name__)


def read_bytes(path: str) -> bytes:
    """A whole (small) file's bytes, through the file descriptor: half the cost of ``open().read()``,
    which counts when a tree has tens of thousands of sidecars."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


class SidecarResolver:
    """Finds and merges the sidecars that apply to a data file.

    A sidecar applies when it sits in the file's folder or one of its ancestors (up to
    the top of the file's scope), has the same suffix, and all of its entities appear
    in the file's name with the same values. Values from sidecars closer to the file
    (deeper folders, then more specific names) override the rest.
    """

    def __init__(
        self, root: Path, json_relpaths: Iterable[str], keys: Mapping[str, NameKey] | None = None
    ) -> None:
        """``keys``: :func:`.entities.name_keys` of the relpaths, when the caller already has them."""
        self.root = root
        self._by_dir: dict[tuple[str, str | None], list[tuple[str, frozenset[tuple[str, str]]]]] = (
            defaultdict(list)
        )
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._sources: dict[str, list[str]] = {}  # data file relpath -> its sidecars, found once
        self._chains: dict[tuple[str, str, str | None], list[tuple[str, frozenset[tuple[str, str]]]]] = {}
        self._root = os.fspath(root)  # joined as text: a Path per sidecar costs more than reading it
        self.warnings: list[str] = []
        for rel in json_relpaths:
            folder, _, filename = rel.rpartition("/")
            suffix, _, entities = keys[rel] if keys is not None else name_key(filename)
            self._by_dir[(folder, suffix)].append((rel, entities))

    def _read(self, rel: str) -> dict[str, Any] | None:
        if rel not in self._cache:
            try:
                raw = read_bytes(os.path.join(self._root, rel))
                data = json.loads(raw.removeprefix(codecs.BOM_UTF8))
                self._cache[rel] = data if isinstance(data, dict) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.warnings.append(f"{shown(rel)}: sidecar not readable ({exc}); ignored")
                self._cache[rel] = None
        return self._cache[rel]

    def sources(self, file: BidsFile) -> list[str]:
        """The sidecars that apply to ``file``, least specific first."""
        known = self._sources.get(file.relpath)
        if known is not None:
            return known
        ents = file.name.all_entities().items()
        chain = self._chain(file.relpath.rpartition("/")[0], file.scope, file.suffix)
        self._sources[file.relpath] = out = [rel for rel, cand in chain if cand <= ents]
        return out

    def _chain(
        self, folder: str, scope: str, suffix: str | None
    ) -> list[tuple[str, frozenset[tuple[str, str]]]]:
        """The sidecars of ``suffix`` in ``folder`` and its ancestors up to the top of ``scope``, least
        specific first (shallowest folder, then fewest entities, then name): found once per folder."""
        key = (folder, scope, suffix)
        chain = self._chains.get(key)
        if chain is None:
            parts = folder.split("/") if folder else []
            scope_depth = len(scope.split("/")) if scope else 0
            found: list[tuple[int, int, str, frozenset[tuple[str, str]]]] = []
            for depth in range(scope_depth, len(parts) + 1):
                for rel, cand in self._by_dir.get(("/".join(parts[:depth]), suffix), ()):
                    found.append((depth, len(cand), rel, cand))
            found.sort(key=lambda t: t[:3])
            self._chains[key] = chain = [(rel, cand) for _, _, rel, cand in found]
        return chain

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
