"""Parquet codecs on NIfTI bytes: what each codec saves and costs, for .nii and .nii.gz.

    .venv/bin/python bench/compression.py

Writes the same brain-like int16 volume (a real NIfTI-1 image written by nibabel, the
generator of bench/shards.py) as 8 rows of one binary column, with each codec, to an
in-memory parquet file; prints the size ratio and write/read throughput side by side,
uncompressed ("none") being the baseline. This is what `compression: auto` is based on.
"""

from __future__ import annotations

import gzip
import io
import time

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from shards import _brain  # bench/shards.py (the script's folder is on sys.path): the same volumes

CODECS = (("none", None), ("snappy", None), ("lz4", None), ("zstd", 1), ("zstd", 3))


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    raw = nib.Nifti1Image(_brain((176, 208, 176), 0), np.eye(4)).to_bytes()
    files = {".nii": raw, ".nii.gz": gzip.compress(raw, compresslevel=6)}
    print(f"volume: {len(raw) / 1e6:.1f} MB as .nii, {len(files['.nii.gz']) / 1e6:.1f} MB as .nii.gz")
    print(f"{'file':<8} {'codec':<8} {'size ratio':>10} {'write MB/s':>11} {'read MB/s':>10}")
    for ext, data in files.items():
        table = pa.table({"bytes": pa.array([data] * 8, pa.binary())})
        mb = len(data) * 8 / 1e6
        for codec, level in CODECS:
            buf = io.BytesIO()

            def write(buf=buf, codec=codec, level=level, table=table):
                buf.seek(0)
                buf.truncate()
                pq.write_table(
                    table,
                    buf,
                    compression=codec,
                    compression_level=level,
                    use_dictionary=False,
                    write_statistics=False,
                )

            write_s = best_of(write)
            payload = buf.getvalue()
            read_s = best_of(lambda payload=payload: pq.read_table(pa.BufferReader(payload)))
            label = codec if level is None else f"{codec}-{level}"
            print(
                f"{ext:<8} {label:<8} {len(data) * 8 / len(payload):>10.2f} {mb / write_s:>11.0f} {mb / read_s:>10.0f}"
            )


if __name__ == "__main__":
    main()
