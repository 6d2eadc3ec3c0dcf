"""Checks that a file is a NIfTI image that can be embedded, before its bytes are read."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

#: Arrow ``binary`` arrays use 32-bit offsets: one array holds at most 2 GiB - 1 bytes.
ARROW_BINARY_LIMIT = 2**31 - 1

_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


class NiftiFileError(ValueError):
    """A file cannot go into a NIfTI column; the message names it and says what to do."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _read_header(path: Path, compressed: bool) -> bytes:
    with open(path, "rb") as raw:
        if not compressed:
            return raw.read(544)
        try:
            with gzip.GzipFile(fileobj=raw) as gz:
                return gz.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            raise NiftiFileError(
                path, f"not a valid gzip stream ({exc}); the file is damaged or truncated"
            ) from None


def _check_gzip_complete(path: Path, data_end: int, version: str) -> None:
    """Check that a gzip stream is whole and holds at least ``data_end`` bytes.

    Cheap path: the gzip trailer's ISIZE (uncompressed size mod 2**32) equals what the
    header promises, which a file cut short almost never shows. Otherwise (cut short,
    multi-member/bgzip, padding) the stream is decompressed once to be sure.
    """
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", raw.read(4))
    if isize == data_end % 2**32:
        return
    total = 0
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            while chunk := gz.read(2**24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiFileError(
            path, f"damaged or truncated gzip stream ({exc}); copy or download the file again"
        ) from None
    if total < data_end:
        raise NiftiFileError(
            path,
            f"truncated {version} file: header promises {data_end} bytes of image, gzip stream holds {total}",
        )


def _expected_data_end(header: bytes) -> tuple[int, str] | None:
    """(vox_offset + voxel bytes, NIfTI version) read from a NIfTI-1/2 header, or None if not NIfTI."""
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348 and header[344:348] in _NIFTI1_MAGICS:
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            version = "NIfTI-1"
        elif sizeof_hdr == 540 and len(header) >= 540 and header[4:12] == _NIFTI2_MAGIC:
            dims = struct.unpack(endian + "8q", header[16:80])
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            version = "NIfTI-2"
        else:
            continue
        ndim = dims[0]
        if not 0 < ndim <= 7 or any(d < 0 for d in dims[1 : ndim + 1]):
            return None
        voxels = 1
        for d in dims[1 : ndim + 1]:
            voxels *= int(d)
        return int(vox_offset) + voxels * max(int(bitpix), 0) // 8, version
    return None


@dataclass(frozen=True)
class NiftiInfo:
    size: int  # bytes on disk
    version: str  # "NIfTI-1" or "NIfTI-2"


def check_nifti(path: Path | str) -> int:
    """Check ``path`` (see :func:`inspect_nifti`); return its size in bytes."""
    return inspect_nifti(path).size


def inspect_nifti(path: Path | str) -> NiftiInfo:
    """Check that ``path`` is a readable, complete NIfTI-1/2 file that fits in Arrow.

    Looks at the file system entry, then at the header (after gunzip for ``.nii.gz``),
    and at whether the voxel data is all there (for ``.nii.gz``, whether the gzip
    stream is whole).

    Returns:
        The file's size in bytes and its NIfTI version.

    Raises:
        NiftiFileError: naming the file, what is wrong with it and what to do.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise NiftiFileError(
            path,
            "broken symlink: its content is not present (a git-annex/DataLad file that was not fetched); "
            f"run `datalad get {path}` (or `git annex get {path}`) in the dataset, then run again",
        )
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise NiftiFileError(
            path, "file not found; it was moved or deleted after indexing: re-index"
        ) from None
    except OSError as exc:
        raise NiftiFileError(path, f"cannot be read: {exc}") from None
    if size == 0:
        raise NiftiFileError(path, "zero-byte file: it holds no image (a placeholder or failed copy)")
    if size > ARROW_BINARY_LIMIT:
        raise NiftiFileError(
            path,
            f"{size / 2**30:.2f} GiB is over the 2 GiB an Arrow binary value can hold, so it cannot be "
            "embedded in a Nifti() column; split the acquisition or store it compressed (.nii.gz)",
        )
    compressed = path.name.lower().endswith(".gz")
    try:
        header = _read_header(path, compressed)
    except PermissionError as exc:
        raise NiftiFileError(path, f"cannot be read: {exc}") from None
    found = _expected_data_end(header)
    if found is None:
        what = header[:40].lstrip()[:15]
        hint = " (it looks like HTML or text)" if what[:1] in (b"<", b"{", b"#") else ""
        raise NiftiFileError(
            path,
            f"not a NIfTI-1/2 image: no valid NIfTI header{' after gunzip' if compressed else ''}{hint}",
        )
    data_end, version = found
    if not compressed and size < data_end:
        raise NiftiFileError(
            path, f"truncated {version} file: header promises {data_end} bytes of image, file has {size}"
        )
    if compressed:
        _check_gzip_complete(path, data_end, version)
    return NiftiInfo(size=size, version=version)


def nifti_bytes_problem(data: bytes | None, name: str) -> str | None:
    """What is wrong with an embedded NIfTI cell (missing, empty, no NIfTI-1/2 header), or None.

    A cheap check of the bytes as they sit in a shard: the header is read (after gunzip
    for ``.gz`` names); the voxel data is not decoded.
    """
    if data is None:
        return "no bytes embedded"
    if not data:
        return "zero-byte cell"
    header = data[:544]
    if name.lower().endswith(".gz"):
        try:
            header = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
        except zlib.error as exc:
            return f"not a valid gzip stream ({exc})"
    if _expected_data_end(header) is None:
        return "not a NIfTI-1/2 image (no valid header)"
    return None
