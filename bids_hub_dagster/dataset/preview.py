"""Previews of NIfTI images that the Hugging Face dataset viewer can show: thumbnails, mosaics,
and a check that a preview config holds no feature the viewer cannot render.

A thumbnail (:class:`Thumbnail`) is a small grayscale PNG of three orthogonal mid-slices side
by side (sagittal, coronal, axial), reoriented to RAS from the affine so that superior is up,
with a robust intensity window; a 4D image shows its middle volume. It is made from bytes
already in memory, never by reading the source again:

* ``.nii.gz``: :class:`ThumbnailBuilder` is the ``consume`` of the gzip integrity check
  (:func:`~bids_hub_dagster.dataset.nifti.check_gzip_bytes`), so the one decompression pass
  serves both. It keeps one z-plane at a time and the three slices, never the volume.
* ``.nii``: :func:`thumbnail_from_bytes` reads the slices straight from the buffer (a numpy
  view, no copy of the volume).

An image whose bytes cannot be made into a picture gives None (logged at debug), never an
error: broken files are reported by the integrity checks. No Dagster here.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation
from PIL import Image, ImageDraw

from .nifti import GzipStreamError, check_gzip_bytes

log = logging.getLogger(__name__)

#: height of every thumbnail panel, in pixels
PANEL_HEIGHT = 128
#: black columns between two panels
PANEL_GAP = 2
_MAX_PANEL_WIDTH = 4 * PANEL_HEIGHT  # an absurd voxel aspect cannot make a huge PNG
_WINDOW_PERCENTILES = (1.0, 99.0)
_MAX_SLICE_VOXELS = 2**26  # a header claiming larger slices is not read (a 2048² plane is 2**22)
_WINDOW_SAMPLE = 200_000  # at most this many voxel values go into the percentiles
_NIFTI1_MAGICS = (b"n+1\x00",)  # "ni1" (a .hdr/.img pair) has no image in the same file
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


@dataclass(frozen=True)
class Thumbnail:
    """A grayscale 8-bit PNG of an image's mid-slices, side by side, superior up."""

    png: bytes
    width: int
    height: int
    #: the slices shown hold one value only (e.g. an all-zero image): the PNG is black
    constant: bool
    #: widths of the panels side by side (sagittal, coronal, axial; one for a 2D image), each
    #: followed by PANEL_GAP black columns but the last
    panel_widths: tuple[int, ...]

    @property
    def panels(self) -> int:
        return len(self.panel_widths)


# --- the header and the byte range of the middle volume -------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where the voxels to show are: the 3D volume in the file's bytes and how to read it."""

    shape: tuple[int, int, int]  # the first three dims (1 where the image has fewer)
    dtype: np.dtype
    start: int  # byte offset of the volume shown (the middle one of a 4D image)
    affine: np.ndarray
    slope: float | None
    inter: float | None

    @property
    def plane_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def end(self) -> int:
        return self.start + self.plane_bytes * self.shape[2]


def _header_size(head: bytes) -> int | None:
    """348 (NIfTI-1) or 540 (NIfTI-2), from ``sizeof_hdr`` in either byte order; else None."""
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size in (348, 540):
            return size
    return None


def _parse_header(raw: bytes) -> _Layout:
    """The layout of the volume to show, from a whole header. Raises on anything odd."""
    size = _header_size(raw)
    if size == 348:
        if raw[344:348] not in _NIFTI1_MAGICS:
            raise ValueError(f"not a single-file NIfTI-1 image (magic {raw[344:348]!r})")
        header: nib.Nifti1Header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    elif size == 540:
        if raw[4:12] != _NIFTI2_MAGIC:
            raise ValueError(f"not a NIfTI-2 image (magic {raw[4:12]!r})")
        header = nib.Nifti2Header.from_fileobj(io.BytesIO(raw[:540]), check=False)
    else:
        raise ValueError("no NIfTI header")
    shape = tuple(int(n) for n in header.get_data_shape())
    if not shape or min(shape) < 1:
        raise ValueError(f"no voxels (shape {shape})")
    dtype = np.dtype(header.get_data_dtype())
    if dtype.itemsize == 0:
        raise ValueError(f"unusable data type {dtype}")
    nx, ny, nz = (shape + (1, 1, 1))[:3]
    if max(nx * ny, ny * nz, nx * nz) > _MAX_SLICE_VOXELS:
        raise ValueError(f"slices too large to show (shape {shape})")
    # a 4D image shows its middle volume; further dims (5D vectors...) their first entry
    volume = shape[3] // 2 if len(shape) > 3 else 0
    offset = int(header["vox_offset"])
    offset = max(offset, size + 4)  # a single-file image's data follows header and extension flag
    slope, inter = header.get_slope_inter()
    return _Layout(
        shape=(nx, ny, nz),
        dtype=dtype,
        start=offset + volume * nx * ny * nz * dtype.itemsize,
        affine=np.asarray(header.get_best_affine(), dtype=np.float64),
        slope=None if slope is None else float(slope),
        inter=None if inter is None else float(inter),
    )


# --- gathering the three slices -------------------------------------------------------------


class _Slices:
    """The three mid-slices of a volume (voxel axes), filled from whole z-planes in order."""

    def __init__(self, layout: _Layout) -> None:
        nx, ny, nz = layout.shape
        self.layout = layout
        self.mid = (nx // 2, ny // 2, nz // 2)
        self.sagittal = np.empty((ny, nz), dtype=layout.dtype)  # x = mid: axes (y, z)
        self.coronal = np.empty((nx, nz), dtype=layout.dtype)  # y = mid: axes (x, z)
        self.axial: np.ndarray | None = None  # z = mid: axes (x, y)
        self.planes = 0  # z-planes seen so far

    @property
    def complete(self) -> bool:
        return self.planes == self.layout.shape[2]

    def add_planes(self, buffer: memoryview, count: int) -> None:
        """Take the slices out of ``count`` whole z-planes (a view into ``buffer``, no copy)."""
        nx, ny, _ = self.layout.shape
        z0 = self.planes
        block = np.frombuffer(buffer, dtype=self.layout.dtype, count=nx * ny * count)
        block = block.reshape((nx, ny, count), order="F")  # NIfTI: x varies fastest
        mx, my, mz = self.mid
        self.sagittal[:, z0 : z0 + count] = block[mx, :, :]
        self.coronal[:, z0 : z0 + count] = block[:, my, :]
        if z0 <= mz < z0 + count:
            self.axial = block[:, :, mz - z0].copy()
        self.planes += count


class ThumbnailBuilder:
    """Builds a thumbnail from a NIfTI file's bytes fed in order, piece by piece.

    Pass :meth:`consume` as the ``consume`` of
    :func:`~bids_hub_dagster.dataset.nifti.check_gzip_bytes`; call :meth:`finish` after the
    pass. It keeps the header, the three slices and at most one partial z-plane: never the
    volume. It never raises from :meth:`consume` (an odd image must not break the integrity
    check): what it cannot use, it ignores, and :meth:`finish` gives None.
    """

    def __init__(self, filename: str = "") -> None:
        self.filename = filename
        self._head = bytearray()
        self._slices: _Slices | None = None
        self._partial = bytearray()  # the start of a z-plane split between pieces
        self._pos = 0  # bytes consumed so far
        self._failed = False

    @property
    def done(self) -> bool:
        """All the bytes needed are in (or the image is unusable): the rest can be skipped."""
        return self._failed or (self._slices is not None and self._slices.complete)

    def consume(self, piece: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the decompressed file."""
        if self.done:
            self._pos += len(piece)
            return
        pos = self._pos
        try:
            view = memoryview(piece).cast("B")
            self._pos += len(view)
            if self._slices is None:
                self._read_header(view, pos)
            if self._slices is not None:
                self._read_voxels(view, pos)
        except Exception as exc:  # an odd image: no thumbnail, never an error in the check
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        log.debug("no thumbnail for %s: %s", self.filename or "an image", why)
        self._failed = True
        self._partial = bytearray()
        self._slices = None

    def _read_header(self, view: memoryview, pos: int) -> None:
        if pos < 540:
            self._head += view[: 540 - pos]
        if len(self._head) < 4:
            return
        size = _header_size(bytes(self._head[:4]))
        if size is None:
            raise ValueError("no NIfTI header")
        if len(self._head) >= size:
            self._slices = _Slices(_parse_header(bytes(self._head)))
            self._head = bytearray()

    def _read_voxels(self, view: memoryview, pos: int) -> None:
        slices = self._slices
        assert slices is not None
        layout = slices.layout
        lo = max(pos, layout.start + slices.planes * layout.plane_bytes + len(self._partial))
        hi = min(pos + len(view), layout.end)
        if lo >= hi:
            return
        chunk = view[lo - pos : hi - pos]
        plane = layout.plane_bytes
        if self._partial:
            need = plane - len(self._partial)
            self._partial += chunk[:need]
            chunk = chunk[need:]
            if len(self._partial) == plane:
                slices.add_planes(memoryview(self._partial), 1)
                self._partial = bytearray()
        whole = len(chunk) // plane
        if whole:
            slices.add_planes(chunk[: whole * plane], whole)
            chunk = chunk[whole * plane :]
        if len(chunk):
            self._partial = bytearray(chunk)

    def finish(self) -> Thumbnail | None:
        """The thumbnail, or None if the bytes did not make an image (logged at debug)."""
        if self._failed:
            return None
        if self._slices is None or not self._slices.complete:
            self._fail(f"the data ends (at byte {self._pos}) before the voxels shown")
            return None
        try:
            return _render(self._slices)
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return None


class _Enough(Exception):
    """Stops decompressing once the thumbnail has all it needs."""


def thumbnail_from_bytes(data: bytes | bytearray | memoryview, filename: str = "") -> Thumbnail | None:
    """A thumbnail from a whole ``.nii`` or ``.nii.gz`` file in memory (None if it is not an image).

    For when no integrity check pass runs. Gzip (told by its magic bytes) is decompressed
    here, only up to the end of the voxels shown; a ``.nii`` is read in place, no copy.
    """
    builder = ThumbnailBuilder(filename)
    view = memoryview(data).cast("B")
    if view[:2] == b"\x1f\x8b":

        def consume(piece: bytes) -> None:
            builder.consume(piece)
            if builder.done:
                raise _Enough

        try:
            check_gzip_bytes(view, consume=consume)
        except _Enough:
            pass
        except GzipStreamError as exc:
            log.debug("no thumbnail for %s: %s", filename or "an image", exc)
            return None
    else:
        builder.consume(view)
    return builder.finish()


# --- rendering ----------------------------------------------------------------------------


def _as_float(values: np.ndarray, layout: _Layout) -> np.ndarray:
    """Voxel values as float64 intensities: RGB as luminance, complex as magnitude, scaled."""
    if values.dtype.names:  # RGB24 / RGBA32 (never scaled)
        rgb = [values[c].astype(np.float64) for c in ("R", "G", "B")]
        return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    out = np.abs(values) if np.iscomplexobj(values) else values
    out = out.astype(np.float64)
    if layout.slope is not None:
        out = out * layout.slope + (layout.inter or 0.0)
    return out


def _orientation(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis, the RAS axis it is closest to and whether it runs backwards."""
    try:
        ornt = io_orientation(affine)
    except Exception:
        ornt = None
    if ornt is None or not np.all(np.isfinite(ornt)) or sorted(ornt[:, 0]) != [0, 1, 2]:
        return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)  # no usable affine: as stored
    return ornt


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return np.where(np.isfinite(sizes) & (sizes > 0), sizes, 1.0)


def _panels(slices: _Slices) -> list[tuple[np.ndarray, float, float]]:
    """The panels in RAS order (sagittal, coronal, axial): (rows × columns image with superior
    or anterior up, row height, column width); a slice one voxel thin is no panel."""
    layout = slices.layout
    ornt = _orientation(layout.affine)
    sizes = _voxel_sizes(layout.affine)
    by_normal = {0: (slices.sagittal, (1, 2)), 1: (slices.coronal, (0, 2)), 2: (slices.axial, (0, 1))}
    panels = []
    for normal in sorted(by_normal, key=lambda axis: ornt[axis, 0]):
        image, (a, b) = by_normal[normal]
        if image is None or min(image.shape) < 2:
            continue
        image = _as_float(image, layout)
        if ornt[a, 1] < 0:
            image = image[::-1, :]
        if ornt[b, 1] < 0:
            image = image[:, ::-1]
        if ornt[a, 0] > ornt[b, 0]:  # columns: the lower RAS axis; rows: the higher
            image, a, b = image.T, b, a
        # columns run left→right / posterior→anterior; rows top-down from superior (anterior)
        panels.append((image.T[::-1, :], float(sizes[b]), float(sizes[a])))
    return panels


def _window(panels: list[np.ndarray]) -> tuple[float, float] | None:
    """Robust intensity window: 1st–99th percentile of the nonzero values; None if uniform."""
    values = np.concatenate([p.ravel() for p in panels])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    if values.size > _WINDOW_SAMPLE:
        values = values[:: math.ceil(values.size / _WINDOW_SAMPLE)]
    nonzero = values[values != 0]
    if nonzero.size:
        lo, hi = np.percentile(nonzero, _WINDOW_PERCENTILES)
        if hi > lo:
            return float(lo), float(hi)
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else None


def _render(slices: _Slices) -> Thumbnail | None:
    panels = _panels(slices)
    if not panels:
        log.debug("no thumbnail for an image with no 2D slice (shape %s)", slices.layout.shape)
        return None
    window = _window([p for p, _, _ in panels])
    tiles = []
    for image, row_size, column_size in panels:
        if window is None:
            pixels = np.zeros(image.shape, dtype=np.uint8)
        else:
            lo, hi = window
            scaled = np.nan_to_num((image - lo) * (255.0 / (hi - lo)), nan=0.0, posinf=255.0, neginf=0.0)
            pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        rows, columns = image.shape
        aspect = (columns * column_size) / (rows * row_size)
        width = max(1, min(_MAX_PANEL_WIDTH, round(PANEL_HEIGHT * aspect)))
        tiles.append(
            Image.fromarray(np.ascontiguousarray(pixels)).resize(
                (width, PANEL_HEIGHT), Image.Resampling.BILINEAR
            )
        )
    width = sum(tile.width for tile in tiles) + PANEL_GAP * (len(tiles) - 1)
    canvas = Image.new("L", (width, PANEL_HEIGHT), 0)
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + PANEL_GAP
    return Thumbnail(
        png=_png(canvas),
        width=width,
        height=PANEL_HEIGHT,
        constant=window is None,
        panel_widths=tuple(tile.width for tile in tiles),
    )


def _png(image: Image.Image, level: int = 1) -> bytes:
    out = io.BytesIO()  # level 6: 3-8x faster than 9 on thumbnails, a few % larger
    image.save(out, format="PNG", compress_level=level)
    return out.getvalue()


# --- mosaics and markdown -------------------------------------------------------------------

_LABEL_HEIGHT = 14
#: black pixels between two thumbnails in a mosaic (wider than the gap between panels)
TILE_GAP = 8


def mosaic_png(
    pngs: Sequence[bytes | None],
    columns: int = 4,
    max_bytes: int = 200_000,
    labels: Sequence[str] | None = None,
) -> bytes:
    """Thumbnails tiled row by row, ``columns`` to a row, scaled down until the PNG is ≤ ``max_bytes``.

    All tiles get the height of the tallest thumbnail (each keeps its aspect, so rows are as
    wide as their thumbnails: a wide 4D slab does not widen every cell), TILE_GAP black
    pixels apart. A None is a black square. Labels, if given (one per thumbnail), are written
    under each tile, cut to its width.

    Raises:
        ValueError: no thumbnails, labels not one per thumbnail, or no scale fits ``max_bytes``.
    """
    if not pngs:
        raise ValueError("no thumbnails to tile")
    if labels is not None and len(labels) != len(pngs):
        raise ValueError(f"{len(labels)} labels for {len(pngs)} thumbnails")
    images = [None if png is None else Image.open(io.BytesIO(png)).convert("L") for png in pngs]
    full_h = max((image.height for image in images if image is not None), default=PANEL_HEIGHT)
    aspects = [1.0 if image is None else image.width / image.height for image in images]
    columns = max(1, columns)
    rows = [range(i, min(i + columns, len(images))) for i in range(0, len(images), columns)]
    band = _LABEL_HEIGHT if labels is not None else 0
    h = full_h
    while True:
        widths = [max(1, round(h * aspect)) for aspect in aspects]
        row_widths = [sum(widths[i] for i in row) + TILE_GAP * (len(row) - 1) for row in rows]
        canvas = Image.new("L", (max(row_widths), len(rows) * (h + band + TILE_GAP) - TILE_GAP), 0)
        draw = ImageDraw.Draw(canvas) if labels is not None else None
        for r, row in enumerate(rows):
            x, y = 0, r * (h + band + TILE_GAP)
            for i in row:
                image = images[i]
                if image is not None:
                    canvas.paste(image.resize((widths[i], h), Image.Resampling.BILINEAR), (x, y))
                if draw is not None and labels is not None:
                    draw.text((x + 1, y + h + 1), _fit_label(draw, str(labels[i]), widths[i]), fill=255)
                x += widths[i] + TILE_GAP
        png = _png(canvas, level=6)
        if len(png) <= max_bytes:
            return png
        if h == 1:
            raise ValueError(f"no mosaic of {len(images)} thumbnails fits in {max_bytes} bytes")
        h = max(1, min(h - 1, round(h * min(0.9, math.sqrt(max_bytes / len(png))))))


def _fit_label(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    text = " ".join(text.split())  # one line
    while text and draw.textlength(text) > width - 2:
        text = text[:-1]
    return text


def markdown_png(png: bytes, alt: str) -> str:
    """A PNG as a markdown image with a data URL, for Dagster markdown metadata."""
    alt = " ".join(alt.split())
    for char in "\\[]":
        alt = alt.replace(char, "\\" + char)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# --- what the dataset viewer renders --------------------------------------------------------

# The Hugging Face dataset viewer turns each cell into JSON in ``get_cell_value``
# (huggingface/dataset-viewer, libs/libcommon/src/libcommon/viewer_utils/features.py). The
# version read for this (commit 1c5e40c200bfffbe702c8f70e1378dd7dad009e8) has a branch for
# Image and Audio (written out as asset files), lists, Sequence and dicts (recursing), and
# returns the cell as it is for Value, ClassLabel, Array2D–Array5D, Translation and
# TranslationVariableLanguages; any other feature type raises
# ``TypeError("could not determine the type of the data cell.")``. The same file lists
# ``UNSUPPORTED_FEATURES = [Value("binary")]``: such columns are left out of the viewer.
# Later versions add Video and Pdf cells (and List/LargeList, the list types of datasets 4+);
# they are taken as rendered here on that account, not from the source read.
#
# Json (datasets' ``Json``: JSON text in an ``arrow.json`` extension string) has no branch in
# ``get_cell_value`` and is NOT treated as rendered: such a cell falls through to the
# TypeError, and a viewer on a datasets release older than Json cannot even parse the
# features. A preview config must carry JSON as ``Value("string")`` text (or a dict of Values).
# Nifti, Mesh, BioSequence, BioStructure are not rendered either.
VIEWER_RENDERED_FEATURES: tuple[type, ...] = (
    datasets.Value,
    datasets.ClassLabel,
    datasets.Array2D,
    datasets.Array3D,
    datasets.Array4D,
    datasets.Array5D,
    datasets.Translation,
    datasets.TranslationVariableLanguages,
    datasets.Image,
    datasets.Audio,
    datasets.Video,
    datasets.Pdf,
)
#: Value dtypes the viewer leaves out (binary, as UNSUPPORTED_FEATURES) or cannot write as JSON
VIEWER_UNSUPPORTED_DTYPES = frozenset({"binary", "large_binary", "binary_view"})


def viewer_problems(features: datasets.Features | dict) -> list[str]:
    """What the dataset viewer cannot show in these features: one line per place, naming the
    column (and the path inside it: ``col.key``, ``col[]`` for list items). Empty: all shown."""
    problems: list[str] = []

    def visit(feature: object, path: str) -> None:
        if isinstance(feature, dict):
            for key, sub in feature.items():
                visit(sub, f"{path}.{key}")
        elif isinstance(feature, (list, tuple)):
            for sub in feature:
                visit(sub, f"{path}[]")
        elif isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence)):
            visit(feature.feature, f"{path}[]")
        elif isinstance(feature, datasets.Value) and feature.dtype in VIEWER_UNSUPPORTED_DTYPES:
            problems.append(f"{path}: Value({feature.dtype!r}) is left out by the dataset viewer")
        elif not isinstance(feature, VIEWER_RENDERED_FEATURES):
            name = getattr(feature, "_type", None) or type(feature).__name__
            problems.append(f"{path}: {name} is not rendered by the dataset viewer")

    for column, feature in features.items():
        visit(feature, str(column))
    return problems
