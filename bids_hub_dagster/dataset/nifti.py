"""Checks that a file is a NIfTI image that can be embedded.

Before its bytes are read: the file system entry and the header (:func:`inspect_nifti`,
cheap). While its bytes are embedded: for ``.nii.gz``, the whole gzip stream, decompressed
once from the bytes in memory with every member's CRC-32 and length checked
(:func:`check_gzip_bytes`, :func:`check_file_bytes`)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bids.errors import shown
from ..errors import UserError

#: Arrow ``binary`` arrays use 32-bit offsets: one array holds at most 2 GiB - 1 bytes.
ARROW_BINARY_LIMIT = 2**31 - 1

_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


class NiftiFileError(UserError):
    """A file cannot go into a NIfTI column; the message names it and says what to do."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{shown(path)}: {problem}")  # a newline in the name cannot forge a line


class GzipStreamError(ValueError):
    """Bytes that do not decompress whole as gzip; the message says what is wrong and where."""


@dataclass(frozen=True)
class GzipCheck:
    """A gzip stream that decompressed whole, every member's CRC-32 and length matching."""

    size: int  # decompressed bytes, all members together
    members: int  # gzip members (1, or more for bgzip / concatenated streams)


#: threads that check gzip streams at once (zlib releases the GIL); each holds a few MB
CHECK_THREADS = min(4, os.cpu_count() or 1)
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_IN_CHUNK = 2**20  # compressed bytes handed to zlib at a time (a view, not a copy)
_GZIP_OUT_CHUNK = 2**22  # at most this many decompressed bytes in memory at a time
_ZLIB_PROBLEMS = {
    "incorrect data check": "CRC-32 mismatch: the decompressed data does not match the gzip trailer's checksum",
    "incorrect length check": "length mismatch: the decompressed size does not match the gzip trailer",
    "incorrect header check": "no gzip header",
    "header crc mismatch": "the gzip header's own CRC does not match",
}


def _zlib_problem(exc: zlib.error, member_start: int, fed_up_to: int) -> str:
    text = str(exc).split(": ", 1)[-1]  # "Error -3 while decompressing data: invalid distance too far back"
    what = _ZLIB_PROBLEMS.get(text, f"invalid deflate data: {text}")
    return f"{what}; in the gzip member from byte {member_start}, found by byte {fed_up_to}"


def check_gzip_bytes(
    data: bytes | bytearray | memoryview, consume: Callable[[bytes], object] | None = None
) -> GzipCheck:
    """Decompress a whole gzip stream once, in bounded memory, as ``gzip -t`` tests it.

    Every member is inflated to its end and zlib checks its trailer: the CRC-32 of the
    decompressed data and its length (ISIZE). Members one after another (bgzip,
    ``cat a.gz b.gz``) are one stream, and zero bytes after a member are padding, as
    Python's :mod:`gzip` reads them; anything else after a member is an error.

    Args:
        data: the compressed bytes (read through a view, never copied whole).
        consume: called with each piece of decompressed data, in order (at most 4 MiB
            each), e.g. to read a header or build a preview in the same pass.

    Returns:
        The decompressed size and the number of members.

    Raises:
        GzipStreamError: saying what is wrong (CRC or length mismatch, invalid deflate
            data, truncated stream, trailing garbage) and at which byte.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    pos = total = members = 0
    while True:
        if members:  # zero padding after a member, as gzip accepts it
            while pos < n:
                block = bytes(view[pos : pos + 65536])
                rest = block.lstrip(b"\x00")
                pos += len(block) - len(rest)
                if rest:
                    break
        if pos >= n:
            break
        start = pos
        if view[pos : pos + 2] != _GZIP_MAGIC:
            what = (
                f"{n - pos} byte(s) after the last gzip member are not gzip data"
                if members
                else "no gzip header"
            )
            raise GzipStreamError(f"{what} (at byte {pos})")
        members += 1
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            if inflater.unconsumed_tail:  # the output was capped: go on with the input zlib kept
                piece: bytes | memoryview = inflater.unconsumed_tail
            else:
                piece = view[pos : pos + _GZIP_IN_CHUNK]
                pos += len(piece)
            try:
                out = inflater.decompress(piece, _GZIP_OUT_CHUNK)
            except zlib.error as exc:
                raise GzipStreamError(_zlib_problem(exc, start, pos)) from None
            if out:
                total += len(out)
                if consume is not None:
                    consume(out)
            elif not piece:
                raise GzipStreamError(
                    f"truncated: the data ends (at byte {n}) inside the gzip member starting at byte {start}"
                )
        pos -= len(inflater.unused_data)  # where the next member (or padding) starts
    if not members:
        raise GzipStreamError("empty: no gzip member")
    return GzipCheck(size=total, members=members)


def check_file_bytes(
    path: Path | str,
    data: bytes | bytearray | memoryview,
    consume: Callable[[bytes], object] | None = None,
) -> GzipCheck | None:
    """Check the bytes of a file as they are embedded: a ``.gz`` file's whole gzip stream.

    The header check (:func:`inspect_nifti`) ran before the bytes were read; this one
    runs on the bytes themselves, once, where they are embedded. Other files: None.

    Raises:
        NiftiFileError: naming the file, what is wrong and what to do.
    """
    if not str(path).lower().endswith(".gz"):
        return None
    try:
        return check_gzip_bytes(data, consume)
    except GzipStreamError as exc:
        raise NiftiFileError(
            path,
            f"not a valid gzip stream ({exc}); the file is damaged (`gzip -t` rejects it too): "
            "copy or download it again",
        ) from None


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
    multi-member/bgzip, padding) the stream is decompressed once to be sure. The cheap
    path proves nothing about the data in between (garbage of the same length keeps the
    trailer): the CRC-32 of every file is checked as its bytes are embedded
    (:func:`check_file_bytes`), so a damaged stream never reaches a shard.
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
            f"run `datalad get {shown(path)}` (or `git annex get {shown(path)}`) in the dataset, then run again",
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
    """What is wrong with an embedded NIfTI cell (missing, empty, damaged gzip, no NIfTI-1/2 header), or None.

    A check of the bytes as they sit in a shard: for ``.gz`` names the whole gzip stream
    is decompressed once (:func:`check_gzip_bytes`: every member's CRC-32 and length),
    and the header is read from that same pass; the voxel data is not decoded.
    """
    if data is None:
        return "no bytes embedded"
    if not data:
        return "zero-byte cell"
    header = data[:544]
    if name.lower().endswith(".gz"):
        head = bytearray()

        def keep_header(piece: bytes) -> None:
            if len(head) < 544:
                head.extend(piece[: 544 - len(head)])

        try:
            check_gzip_bytes(data, keep_header)
        except GzipStreamError as exc:
            return f"not a valid gzip stream ({exc})"
        header = bytes(head)
    if _expected_data_end(header) is None:
        return "not a NIfTI-1/2 image (no valid header)"
    return None
