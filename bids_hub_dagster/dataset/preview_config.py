"""The ``preview`` config: the dataset's rows with a thumbnail per image, for people to look at.

Beside the full data (``data/``, NIfTI bytes in ``Nifti()`` columns) a publication can carry a
second config (``preview/``) with the same rows: the ids, the phenotype and sessions.tsv
columns, and for each NIfTI column ``C``:

- ``C_entities`` and ``C_sidecar``: the file's entities and merged sidecar as JSON text
  (``Value("string")``: the Hub's viewer renders no ``Json`` feature);
- ``C_thumbnail``: ``Image()`` (``List(Image())`` for a ``many`` column), a PNG of three
  orthogonal mid-slices (:mod:`.preview`).

No feature in it is one the viewer cannot render (:func:`.preview.viewer_problems`). The
thumbnails are made from the bytes the shard embeds, while they are in memory
(:class:`ThumbnailCollector` is the embedders' ``on_file`` hook): the sources are not read again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value
from datasets.features.features import get_nested_type

from .preview import Thumbnail, ThumbnailBuilder, mosaic_png, thumbnail_from_bytes, viewer_problems
from .tables import FILES_COLUMN, IndexInfo

THUMBNAIL_SUFFIX = "_thumbnail"


class ThumbnailCollector:
    """The embedders' ``on_file`` hook: one thumbnail per file whose bytes were embedded.

    A ``.nii.gz`` file's thumbnail is built by the consumer this returns, fed by the one
    decompression pass of the gzip integrity check; a ``.nii`` file's is made from its
    bytes at once. :meth:`take` hands each over once (a shard's memory holds the
    thumbnails of the row group being embedded only).
    """

    def __init__(self) -> None:
        self._made: dict[str, ThumbnailBuilder | Thumbnail | None] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str, data: memoryview) -> Callable[[bytes], object] | None:
        if path.lower().endswith(".gz"):
            builder = _Finishing(ThumbnailBuilder(path))
            with self._lock:
                self._made[path] = builder
            return builder
        thumbnail = thumbnail_from_bytes(data, path)
        with self._lock:
            self._made[path] = thumbnail
        return None

    def take(self, path: str) -> Thumbnail | None:
        """The thumbnail of ``path`` (None when it could not be made or was not embedded)."""
        with self._lock:
            made = self._made.pop(path, None)
        return made.result() if isinstance(made, _Finishing) else made


class _Finishing:
    """A thumbnail builder fed by the gzip check's pieces, finished (rendered, PNG-encoded) by
    ``close`` on the check's own thread, so thumbnails of several files are made in parallel."""

    def __init__(self, builder: ThumbnailBuilder) -> None:
        self._builder = builder
        self._done = False
        self._thumbnail: Thumbnail | None = None

    def __call__(self, piece: bytes) -> None:
        self._builder.consume(piece)

    def close(self) -> None:
        self._thumbnail = self._builder.finish()
        self._done = True

    def result(self) -> Thumbnail | None:
        return self._thumbnail if self._done else self._builder.finish()


def preview_features(info: IndexInfo) -> Features:
    """The features of the preview config (see the module docstring)."""
    feats: dict[str, Any] = {"subject_id": Value("string"), "session_id": Value("string")}
    for name, many in info.columns.items():

        def shaped(feature: Any, many: bool = many) -> Any:
            return List(feature) if many else feature

        families = info.companions.get(name, [])
        for family in ("entities", "sidecar"):  # as the full data carries them (companions: …)
            if family in families:
                feats[f"{name}_{family}"] = shaped(Value("string"))
        feats[f"{name}{THUMBNAIL_SUFFIX}"] = shaped(Image())
    for name, kind in info.phenotype.items():
        feats[name] = Value(kind)
    for name, kind in info.sessions.items():
        feats[name] = Value(kind)
    features = Features(feats)
    problems = viewer_problems(features)
    if problems:  # a bug, never the user's input: the preview must stay viewable
        raise AssertionError(f"the preview config has features the Hub's viewer cannot render: {problems}")
    return features


def preview_table(
    index_part: pa.Table,
    paths: dict[str, list[list[str]]],
    info: IndexInfo,
    thumbnails: Callable[[str], Thumbnail | None],
) -> pa.Table:
    """The preview rows of a slice of the index.

    Args:
        index_part: rows of the index table (ids, phenotype, sessions, ``_bids_files``).
        paths: per NIfTI column, per row, the paths the embedder read (the thumbnails' keys).
        info: the index's metadata.
        thumbnails: the thumbnail of a path (:meth:`ThumbnailCollector.take`).
    """
    features = preview_features(info)
    files = index_part.column(FILES_COLUMN).to_pylist()
    made: dict[str, Thumbnail | None] = {}  # a file in two columns is taken once, shown in both

    def thumbnail(path: str) -> Thumbnail | None:
        if path not in made:
            made[path] = thumbnails(path)
        return made[path]

    data: dict[str, Any] = {}
    for name in ("subject_id", "session_id", *info.phenotype, *info.sessions):
        data[name] = index_part.column(name)
    for name, many in info.columns.items():
        records = [[f for f in row if f["column"] == name] for row in files]
        entities = [[f["entities"] for f in row] for row in records]
        sidecars = [[f["sidecar"] for f in row] for row in records]
        pictures = []
        for row_paths in paths[name]:
            cells = []
            for path in row_paths:
                thumb = thumbnail(path)
                cells.append(None if thumb is None else {"bytes": thumb.png, "path": _png_name(path)})
            pictures.append(cells)
        for suffix, values in (("_entities", entities), ("_sidecar", sidecars), (THUMBNAIL_SUFFIX, pictures)):
            column = f"{name}{suffix}"
            if column not in features:
                continue
            cells = values if many else [row[0] if row else None for row in values]
            data[column] = pa.array(cells, type=get_nested_type(features[column]))
    return pa.Table.from_pydict(data, schema=features.arrow_schema)


def _png_name(path: str) -> str:
    """``/abs/sub-01_T1w.nii.gz`` → ``sub-01_T1w.png``: the thumbnail's name in its Image cell."""
    base = path.rsplit("/", 1)[-1]
    for ext in (".nii.gz", ".nii"):
        if base.lower().endswith(ext):
            return base[: -len(ext)] + ".png"
    return base + ".png"


def nifti_paths(part: pa.Table, columns: dict[str, bool]) -> dict[str, list[list[str]]]:
    """Per NIfTI column, per row, the file paths of a slice of the typed dataset (paths, not bytes)."""
    out: dict[str, list[list[str]]] = {}
    for name, many in columns.items():
        column = part.column(name).combine_chunks()
        if many:
            rows = column.to_pylist()
            out[name] = [[c["path"] for c in (cells or []) if c is not None] for cells in rows]
        else:
            paths = pc.struct_field(column, "path").to_pylist()
            valid = column.is_valid().to_pylist()
            out[name] = [[p] if ok and p is not None else [] for p, ok in zip(paths, valid, strict=True)]
    return out


def read_previews(paths: Iterable[Path]) -> Iterator[pa.Table]:
    """The ids and thumbnails of stored preview files, a row group at a time (lazily)."""
    for path in paths:
        file = pq.ParquetFile(path)
        names = [
            n
            for n in file.schema_arrow.names
            if n in ("subject_id", "session_id") or n.endswith(THUMBNAIL_SUFFIX)
        ]
        for i in range(file.num_row_groups):
            yield file.read_row_group(i, columns=names)


def first_thumbnails(tables: Iterable[pa.Table], limit: int) -> list[tuple[str, bytes]]:
    """Up to ``limit`` (label, PNG) pairs, one per row and column, in row order."""
    out: list[tuple[str, bytes]] = []
    for table in tables:
        names = [n for n in table.column_names if n.endswith(THUMBNAIL_SUFFIX)]
        for row in table.select(["subject_id", "session_id", *names]).to_pylist():
            label = (
                row["subject_id"] if row["session_id"] is None else f"{row['subject_id']}/{row['session_id']}"
            )
            for name in names:
                cell = row[name]
                cells = cell if isinstance(cell, list) else [cell]
                picked = next((c for c in cells if c is not None and c.get("bytes")), None)
                if picked is not None:
                    out.append((f"{label} {name.removesuffix(THUMBNAIL_SUFFIX)}", picked["bytes"]))
                    break
            if len(out) >= limit:
                return out
    return out


def one_per_subject(tables: Iterable[pa.Table], limit: int) -> list[tuple[str, bytes]]:
    """The first thumbnail of each subject's first row, up to ``limit`` subjects."""
    seen: set[str] = set()
    out: list[tuple[str, bytes]] = []
    for table in tables:
        for label, png in first_thumbnails([table], table.num_rows):
            subject = label.split("/", 1)[0].split(" ", 1)[0]
            if subject not in seen:
                seen.add(subject)
                out.append((label, png))
                if len(out) >= limit:
                    return out
    return out


def mosaic(pairs: list[tuple[str, bytes]], max_bytes: int = 200_000, columns: int = 4) -> bytes | None:
    """The thumbnails tiled with their labels, at most ``max_bytes`` (None without any)."""
    if not pairs:
        return None
    return mosaic_png(
        [p for _, p in pairs], columns=columns, max_bytes=max_bytes, labels=[label for label, _ in pairs]
    )
