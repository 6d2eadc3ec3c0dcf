"""Thumbnails of NIfTI images (from the integrity check's decompression pass and from bytes in
memory), mosaics, and the dataset-viewer feature check: on nibabel's own test images and on
synthetic images built with nibabel."""

from __future__ import annotations

import base64
import gzip
import io
import logging
import os
import struct

import datasets
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_hub_dagster.dataset.nifti import check_gzip_bytes
from bids_hub_dagster.dataset.preview import (
    PANEL_GAP,
    PANEL_HEIGHT,
    TILE_GAP,
    VIEWER_RENDERED_FEATURES,
    Thumbnail,
    ThumbnailBuilder,
    markdown_png,
    mosaic_png,
    thumbnail_from_bytes,
    viewer_problems,
)

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
REAL_IMAGES = [  # (file, panels)
    ("anatomical.nii", 3),
    ("functional.nii", 3),  # 4D
    ("example4d.nii.gz", 3),  # 4D, gzip
    ("standard.nii.gz", 3),
    ("example_nifti2.nii.gz", 3),  # NIfTI-2, 4D
    ("reoriented_anat_moved.nii", 3),  # big-endian float, RAS
]


def _real(name: str) -> bytes:
    path = os.path.join(NIBABEL_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"nibabel ships no {name} here")
    with open(path, "rb") as f:
        return f.read()


def _pixels(thumb: Thumbnail) -> np.ndarray:
    image = Image.open(io.BytesIO(thumb.png))
    assert image.format == "PNG" and image.mode == "L"
    assert image.size == (thumb.width, thumb.height)
    return np.asarray(image)


def _panels(thumb: Thumbnail) -> list[np.ndarray]:
    """The panels of a thumbnail, left to right."""
    pixels = _pixels(thumb)
    assert sum(thumb.panel_widths) + PANEL_GAP * (thumb.panels - 1) == thumb.width
    out, x = [], 0
    for width in thumb.panel_widths:
        out.append(pixels[:, x : x + width])
        if x + width < thumb.width:
            assert not pixels[:, x + width : x + width + PANEL_GAP].any()  # the black gap
        x += width + PANEL_GAP
    return out


def _nii(data: np.ndarray, affine: np.ndarray | None = None, header=None, nifti2: bool = False) -> bytes:
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return cls(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine, header).to_bytes()


def _via_check(nii_gz: bytes, filename: str = "x.nii.gz") -> Thumbnail | None:
    """The thumbnail made in the integrity check's one decompression pass."""
    builder = ThumbnailBuilder(filename)
    check_gzip_bytes(nii_gz, consume=builder.consume)
    return builder.finish()


def _brain(shape=(31, 37, 29), seed=0) -> np.ndarray:
    """An ellipsoid with texture, brighter at the top (superior, +z), on a zero background."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = x**2 + y**2 + z**2 < 0.8
    return (inside * (100 + 50 * z + 10 * x + rng.normal(0, 3, shape))).astype(np.float32)


# --- real images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,panels", REAL_IMAGES)
def test_real_images_give_three_panel_thumbnails(name, panels):
    data = _real(name)
    thumb = thumbnail_from_bytes(data, name)
    assert thumb is not None
    assert thumb.height == PANEL_HEIGHT and thumb.panels == panels and not thumb.constant
    pixels = _pixels(thumb)
    assert pixels.std() > 10 and pixels.max() > 200  # real content, windowed to the full range
    assert len(thumb.png) < 60_000
    for panel in _panels(thumb):
        assert panel.shape[1] > 10 and panel.std() > 5


@pytest.mark.parametrize("name,panels", REAL_IMAGES)
def test_check_pass_gives_the_same_thumbnail(name, panels):
    data = _real(name)
    nii_gz = data if name.endswith(".gz") else gzip.compress(data, mtime=0)
    direct = thumbnail_from_bytes(data, name)
    assert direct is not None
    assert _via_check(nii_gz, name) == direct
    assert thumbnail_from_bytes(nii_gz, name) == direct
    raw = gzip.decompress(nii_gz)
    assert thumbnail_from_bytes(raw, name) == direct


def test_pieces_of_any_size_give_the_same_thumbnail():
    data = _real("example4d.nii.gz")
    raw = gzip.decompress(data)
    expected = thumbnail_from_bytes(raw)
    rng = np.random.default_rng(1)
    for sizes in ([1] * 600 + [len(raw)], [7, 333, 5000], [348, 4, 12345, 1]):
        builder = ThumbnailBuilder()
        pos, i = 0, 0
        while pos < len(raw):
            size = sizes[i] if i < len(sizes) else int(rng.integers(1, 50_000))
            builder.consume(raw[pos : pos + size])
            pos, i = pos + size, i + 1
        assert builder.finish() == expected


def test_large_gzip_in_several_pieces():
    """A volume larger than the check's 4 MiB pieces: planes split between pieces."""
    rng = np.random.default_rng(2)
    data = rng.normal(100, 20, (97, 101, 45, 5)).astype(np.float32)  # 8.8 MB, odd plane size
    data[:, :, :, 2] += np.linspace(0, 300, 45)  # the middle volume differs
    nii = _nii(data)
    pieces = []
    builder = ThumbnailBuilder()

    def consume(piece):
        pieces.append(len(piece))
        builder.consume(piece)

    check_gzip_bytes(gzip.compress(nii, compresslevel=1), consume=consume)
    assert len(pieces) >= 3
    thumb = builder.finish()
    assert thumb == thumbnail_from_bytes(nii)
    assert thumb == thumbnail_from_bytes(_nii(np.ascontiguousarray(data[..., 2])))


def test_timing(record_property):
    import time

    for name in ("anatomical.nii", "example4d.nii.gz"):
        data = _real(name)
        thumbnail_from_bytes(data)
        start = time.perf_counter()
        for _ in range(5):
            thumbnail_from_bytes(data)
        record_property(name, f"{(time.perf_counter() - start) / 5 * 1000:.1f} ms")
        assert time.perf_counter() - start < 5  # generous: shared CI cores


# --- which voxels, which way up ----------------------------------------------------------------


def test_4d_shows_the_middle_volume():
    base = _brain()
    volumes = [base * (1 + v) + v * np.linspace(0, 50, base.shape[0])[:, None, None] for v in range(5)]
    volumes[2] = base[::-1, :, :].copy()  # the middle one looks different
    four = np.stack(volumes, axis=-1).astype(np.float32)
    thumb = thumbnail_from_bytes(_nii(four))
    assert thumb == thumbnail_from_bytes(_nii(volumes[2].astype(np.float32)))
    for v in (0, 1, 3, 4):
        assert thumb != thumbnail_from_bytes(_nii(volumes[v].astype(np.float32)))
    # an even count: index n // 2
    assert thumbnail_from_bytes(_nii(four[..., :4])) == thumbnail_from_bytes(
        _nii(volumes[2].astype(np.float32))
    )


def test_4d_constant_volumes_pick_the_middle():
    shape = (9, 11, 13)
    four = np.stack([np.full(shape, 10.0 * v, np.float32) for v in range(3)], axis=-1)
    four[..., 1] = _brain(shape)  # only the middle volume has contrast
    thumb = thumbnail_from_bytes(gzip.compress(_nii(four)))
    assert thumb is not None and not thumb.constant
    four[..., 1] = 7.0
    thumb = thumbnail_from_bytes(gzip.compress(_nii(four)))
    assert thumb is not None and thumb.constant


def test_5d_takes_the_first_of_the_extra_dims():
    base = _brain()
    five = np.zeros(base.shape + (3, 2), np.float32)
    for t in range(3):
        for c in range(2):
            five[..., t, c] = base * (1 + t) + (t + 10 * c) * np.linspace(0, 80, base.shape[1])[None, :, None]
    assert thumbnail_from_bytes(_nii(five)) == thumbnail_from_bytes(_nii(five[..., 1, 0].copy()))


def test_superior_is_up_whatever_the_storage_order():
    brain = _brain()  # odd sizes: the middle voxel is the same counted from either end
    ras = thumbnail_from_bytes(_nii(brain))
    assert ras is not None and ras.panels == 3
    sagittal, coronal, axial = _panels(ras)
    for panel in (sagittal, coronal):  # brighter towards +z: at the top
        rows = panel[panel.any(axis=1)]
        assert rows[: len(rows) // 3].mean() > rows[-len(rows) // 3 :].mean() + 20
    # stored LPI (x and z reversed) with an affine saying so
    lpi_affine = np.diag([-2.0, 2.0, -2.0, 1.0])
    lpi_affine[:3, 3] = [2.0 * (brain.shape[0] - 1), 0, 2.0 * (brain.shape[2] - 1)]
    assert thumbnail_from_bytes(_nii(brain[::-1, :, ::-1].copy(), lpi_affine)) == ras
    # stored with axes permuted (z, x, y) and an affine mapping them back
    permuted = np.transpose(brain, (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[0, 1] = affine[1, 2] = affine[2, 0] = 2.0
    affine[3, 3] = 1.0
    assert thumbnail_from_bytes(_nii(permuted, affine)) == ras


def test_voxel_aspect_sets_panel_widths():
    brain = _brain((21, 21, 21))
    iso = thumbnail_from_bytes(_nii(brain, np.diag([1.0, 1.0, 1.0, 1.0])))
    assert iso is not None and iso.width == 3 * PANEL_HEIGHT + 2 * PANEL_GAP
    # 2 mm along x: the coronal and axial panels (x across) are twice as wide
    wide = thumbnail_from_bytes(_nii(brain, np.diag([2.0, 1.0, 1.0, 1.0])))
    widths = [p.shape[1] for p in _panels(wide)]
    assert (
        widths[0] == PANEL_HEIGHT
        and abs(widths[1] - 2 * PANEL_HEIGHT) <= 1
        and abs(widths[2] - 2 * PANEL_HEIGHT) <= 1
    )


def test_2d_image_gives_one_panel():
    rng = np.random.default_rng(3)
    flat = rng.normal(50, 10, (40, 30)).astype(np.float32)
    for data in (flat, flat[:, :, None]):
        thumb = thumbnail_from_bytes(_nii(data))
        assert thumb is not None and thumb.panels == 1 and not thumb.constant
        assert thumb.width == round(PANEL_HEIGHT * 40 / 30)


def test_header_variants_give_the_same_picture():
    brain = _brain()
    expected = thumbnail_from_bytes(_nii(brain))
    assert thumbnail_from_bytes(_nii(brain, nifti2=True)) == expected
    big = _nii(brain, header=nib.Nifti1Header(endianness=">"))
    assert big[:4] == b"\x00\x00\x01\x5c"  # really big-endian
    assert thumbnail_from_bytes(big) == expected
    assert (
        thumbnail_from_bytes(gzip.compress(_nii(brain, nifti2=True, header=nib.Nifti2Header(endianness=">"))))
        == expected
    )


def test_scale_slope_and_intercept_apply():
    raw = (np.clip(_brain(), 0, None) + 20).astype(np.int16)  # all nonzero
    plain = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    plain.header.set_slope_inter(1.0, 0.0)
    negative = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    negative.header.set_slope_inter(-1.0, 0.0)
    a = thumbnail_from_bytes(plain.to_bytes())
    b = thumbnail_from_bytes(negative.to_bytes())
    assert a is not None and b is not None and a != b
    for pa, pb in zip(_panels(a), _panels(b), strict=True):  # inverted picture
        assert np.abs(pa.astype(int) + pb.astype(int) - 255).max() <= 2


def test_rgb_and_complex_images():
    brain = np.clip(_brain(), 0, 255).astype(np.uint8)
    rgb = np.zeros(brain.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = brain, brain, brain
    thumb = thumbnail_from_bytes(_nii(rgb))
    assert thumb is not None and not thumb.constant
    assert thumb == thumbnail_from_bytes(_nii(brain.astype(np.float32)))  # gray RGB: same luminance
    complex_image = (brain.astype(np.float32) * np.exp(1j * 0.7)).astype(np.complex64)
    thumb = thumbnail_from_bytes(_nii(complex_image))
    assert thumb is not None and thumb.panels == 3 and not thumb.constant


def test_constant_images_are_black_and_flagged():
    for data in (np.zeros((10, 12, 14), np.int16), np.full((10, 12, 14), 3.5, np.float32)):
        thumb = thumbnail_from_bytes(_nii(data))
        assert thumb is not None and thumb.constant and thumb.panels == 3
        assert not _pixels(thumb).any()
        assert _via_check(gzip.compress(_nii(data))) == thumb
    mask = np.zeros((11, 11, 11), np.uint8)
    mask[3:8, 3:8, 3:8] = 1  # two values: a window from 0 to 1, not constant
    thumb = thumbnail_from_bytes(_nii(mask))
    assert thumb is not None and not thumb.constant and _pixels(thumb).max() == 255


# --- bytes that are no image --------------------------------------------------------------------


def test_undecodable_bytes_give_none(caplog):
    caplog.set_level(logging.DEBUG, logger="bids_hub_dagster.dataset.preview")
    good = _nii(_brain())
    hdr_pair = bytearray(good)
    hdr_pair[344:348] = b"ni1\x00"  # header of a .hdr/.img pair: no image in the file
    zero_dim = bytearray(good)
    struct.pack_into("<h", zero_dim, 42, 0)  # dim[1] = 0: no voxels
    huge = bytearray(good)
    struct.pack_into("<hhh", huge, 42, 32767, 32767, 32767)  # slices of 2**30 voxels: not read
    cases = {
        "garbage": os.urandom(5000),
        "empty": b"",
        "short": good[:100],
        "truncated .nii": good[: len(good) // 2],
        "garbage gzip": gzip.compress(os.urandom(5000)),
        "truncated gzip": gzip.compress(good)[:-200],
        "not gzip after magic": b"\x1f\x8b" + os.urandom(1000),
        "ni1 magic": bytes(hdr_pair),
        "zero dims": bytes(zero_dim),
        "huge dims": bytes(huge),
    }
    for name, data in cases.items():
        assert thumbnail_from_bytes(data, name) is None, name
        builder = ThumbnailBuilder(name)
        builder.consume(data)  # never raises
        builder.consume(b"more")
        assert builder.finish() is None, name
    assert any("no thumbnail" in record.getMessage() for record in caplog.records)


def test_cifti_gives_none():
    assert thumbnail_from_bytes(_real("row_major.dconn.nii"), "row_major.dconn.nii") is None


def test_builder_never_breaks_the_check():
    """A consumer fed garbage leaves the integrity check to say what it says."""
    builder = ThumbnailBuilder()
    check = check_gzip_bytes(gzip.compress(os.urandom(3000)), consume=builder.consume)
    assert check.size == 3000 and builder.finish() is None


# --- mosaics and markdown -------------------------------------------------------------------------


def _thumbs() -> list[bytes]:
    out = []
    for name, _ in REAL_IMAGES:
        thumb = thumbnail_from_bytes(_real(name))
        assert thumb is not None
        out.append(thumb.png)
    return out


def test_mosaic_rows_and_labels():
    pngs = _thumbs()
    widths = [Image.open(io.BytesIO(p)).width for p in pngs]
    image = Image.open(io.BytesIO(mosaic_png(pngs, columns=4)))
    rows = [widths[:4], widths[4:]]
    assert image.size == (
        max(sum(row) + TILE_GAP * (len(row) - 1) for row in rows),
        2 * PANEL_HEIGHT + TILE_GAP,
    )
    pixels = np.asarray(image)
    assert pixels[:PANEL_HEIGHT, : widths[0]].std() > 10  # the first thumbnail, at full size
    labelled = Image.open(io.BytesIO(mosaic_png(pngs, columns=3, labels=[n for n, _ in REAL_IMAGES])))
    assert labelled.height > 2 * PANEL_HEIGHT + TILE_GAP  # a band for the labels under each row
    gap = mosaic_png([pngs[0], None], columns=2)  # a missing thumbnail: a black square
    assert Image.open(io.BytesIO(gap)).size == (widths[0] + TILE_GAP + PANEL_HEIGHT, PANEL_HEIGHT)


@pytest.mark.parametrize("max_bytes", [200_000, 30_000, 5_000])
def test_mosaic_fits_max_bytes(max_bytes):
    pngs = _thumbs() * 3
    png = mosaic_png(pngs, columns=4, max_bytes=max_bytes, labels=[f"sub-{i:02d}" for i in range(len(pngs))])
    assert len(png) <= max_bytes
    assert Image.open(io.BytesIO(png)).width > 10


def test_mosaic_refuses_nonsense():
    with pytest.raises(ValueError):
        mosaic_png([])
    with pytest.raises(ValueError):
        mosaic_png(_thumbs()[:2], labels=["one"])
    with pytest.raises(ValueError):
        mosaic_png(_thumbs(), max_bytes=10)


def test_markdown_png():
    png = _thumbs()[0]
    text = markdown_png(png, "sub-01 [T1w]\nrun")
    assert text.startswith("![sub-01 \\[T1w\\] run](data:image/png;base64,") and text.endswith(")")
    assert base64.b64decode(text.split("base64,", 1)[1][:-1]) == png


# --- what the dataset viewer renders --------------------------------------------------------------


def test_viewer_problems_names_nifti_columns():
    features = datasets.Features(
        {
            "nifti": datasets.Nifti(),
            "niftis": datasets.List(datasets.Nifti()),
            "nested": {"x": datasets.List({"y": datasets.Nifti()})},
            "large": datasets.LargeList(datasets.Nifti()),
            "sidecar": datasets.Json(),
            "blob": datasets.Value("binary"),
            "thumb": datasets.Image(),
            "thumbs": datasets.List(datasets.Image()),
            "subject": datasets.Value("string"),
            "age": datasets.Value("float32"),
            "entities": {"sub": datasets.Value("string"), "run": datasets.Value("int32")},
            "label": datasets.ClassLabel(names=["a", "b"]),
        }
    )
    problems = viewer_problems(features)
    flagged = sorted(p.split(":", 1)[0] for p in problems)
    assert flagged == ["blob", "large[]", "nested.x[].y", "nifti", "niftis[]", "sidecar"]
    assert any("Nifti" in p for p in problems) and any("Json" in p for p in problems)


def test_viewer_accepts_a_preview_config():
    features = datasets.Features(
        {
            "thumbnail": datasets.Image(),
            "thumbnails": datasets.List(datasets.Image()),
            "path": datasets.Value("string"),
            "sidecar": datasets.Value("string"),  # JSON as text: rendered
            "shape": datasets.List(datasets.Value("int32")),
            "entities": {"sub": datasets.Value("string")},
        }
    )
    assert viewer_problems(features) == []
    assert datasets.Image in VIEWER_RENDERED_FEATURES and datasets.Nifti not in VIEWER_RENDERED_FEATURES
    assert datasets.Json not in VIEWER_RENDERED_FEATURES
