"""Read a published dataset back with ``datasets.load_dataset`` and compare every byte."""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import httpx2
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from datasets import Features, load_dataset_builder
from datasets.exceptions import DatasetsError
from huggingface_hub import HfFileSystem

from ..bids.errors import shown
from ..bids.index import RowKey
from ..dataset.tables import IndexInfo, dataset_from_index
from .card import PREVIEW_CONFIG, full_config_name
from .digests import SourceDigest, sha256_file, source_key, trusted_source_digest

DIGEST_CHARS = 12  # of a sha256 shown in a problem: enough to tell two files apart


@dataclass
class VerifyReport:
    rows_expected: int
    rows_found: int = 0
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    unit: str = "files"  # what files_checked counts: the NIfTI files, or the published files
    sources_hashed: int = 0  # source files read and hashed to compare with
    digests_reused: int = 0  # source files compared by the digest the shard build recorded (not read)

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows_found == self.rows_expected

    def summary(self) -> str:
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.rows_found}/{self.rows_expected} rows, "
            f"{self.files_checked} {self.unit}, {self.bytes_checked} bytes compared by sha256"
        )
        if not self.problems:
            return head
        return head + "".join(f"\n  - {line}" for line in self.problem_lines())

    def problem_lines(self, limit: int = 50) -> list[str]:
        """The problems, one line each (at most ``limit``, then how many more); why it failed when none is listed."""
        lines = self.problems[:limit]
        if len(self.problems) > limit:
            lines.append(f"… and {len(self.problems) - limit} more")
        if not lines and not self.ok:
            lines.append(f"{self.rows_found} rows found, {self.rows_expected} expected")
        return lines


def short_digest(digest: str | None) -> str:
    """The first characters of a hex digest, as problems show it."""
    return "none" if digest is None else f"{digest[:DIGEST_CHARS]}…"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An error's text on one line (its lines joined), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return shown(text if len(text) <= limit else text[: limit - 1] + "…")


@dataclass
class _DataFiles:
    """The published data files ``datasets`` reads, in order, with their rows: says where row ``i`` is."""

    names: list[str] = field(default_factory=list)  # as shown: relative to the dataset's root
    starts: list[int] = field(default_factory=list)  # index of each file's first row
    bad_columns: list[set[str]] = field(default_factory=list)  # each file's missing or mistyped columns
    complete: bool = True  # False when a file's footer could not be read: rows cannot be placed

    def where(self, i: int) -> tuple[str, set[str]]:
        """The file and row in it of published row ``i``, and the columns its file has wrong."""
        k = bisect.bisect_right(self.starts, i) - 1
        if k < 0 or not self.complete:
            return f"published row {i}", set()
        return f"{self.names[k]} row {i - self.starts[k]}", self.bad_columns[k]


def _shown_file(url: str, folder: str = "data") -> str:
    """``hf://datasets/ORG/NAME@rev/data/x.parquet`` or ``/folder/data/x.parquet`` → ``data/x.parquet``."""
    url = re.sub(r"^hf://datasets/[^@]+@[^/]+/", "", url)
    head, sep, tail = url.rpartition(f"/{folder}/")
    return shown(f"{folder}/{tail}" if sep else url)


def _footer(url: str, token: str | None) -> pq.FileMetaData:
    """The parquet footer of a published data file (a local path or an ``hf://`` URL); only it is read."""
    fs, path = fsspec.core.url_to_fs(url, **({"token": token} if url.startswith("hf://") else {}))
    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).metadata


def _type_problems(
    where: str,
    found: dict[str, Any],
    expected: dict[str, Any],
    origin: str = "the BIDS index does not produce",
) -> list[str]:
    """Columns ``found`` (name → type) has and ``expected`` has not, the reverse, and types that differ."""
    problems = [f"{where}: extra column {n!r} ({found[n]}) that {origin}" for n in found if n not in expected]
    problems += [f"{where}: column {n!r} ({expected[n]}) is missing" for n in expected if n not in found]
    problems += [
        f"{where}: column {n!r} is {found[n]}, expected {expected[n]}"
        for n in expected
        if n in found and found[n] != expected[n]
    ]
    return problems


def _check_schemas(
    files: list[str], card: Features | None, expected: Features, token: str | None, report: VerifyReport
) -> _DataFiles:
    """Compare the published features (the card's) and each data file's schema with ``expected``.

    Reads only the files' parquet footers. Returns where each file's rows are.
    """
    if card is not None:
        report.problems += _type_problems(
            "the published features (README.md dataset_info)",
            {n: repr(f) for n, f in card.items()},
            {n: repr(f) for n, f in expected.items()},
        )
    want = {f.name: f.type for f in expected.arrow_schema}
    located = _DataFiles()
    row = 0
    for url in files:
        name = _shown_file(url)
        try:
            meta = _footer(url, token)
        except (OSError, ValueError, pa.ArrowException, httpx2.HTTPError) as exc:
            report.problems.append(f"{name}: cannot read its parquet footer: {one_line(exc)}")
            located.complete = False
            continue
        found = {f.name: f.type for f in meta.schema.to_arrow_schema()}
        report.problems += _type_problems(name, found, want)
        located.names.append(name)
        located.starts.append(row)
        located.bad_columns.append({n for n in want if found.get(n) != want[n]})
        row += meta.num_rows
    return located


HASH_THREADS = 2  # cells and sources hashed beside the thread that reads the next row (hashlib frees the GIL)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Digests:
    """The sha256 of cells and of source files, computed on a few threads while the next row is read.

    A source file's digest is the shard build's record while the file keeps the stamp it had
    when the build hashed it (then the file is not read); any other source file is hashed here.
    """

    def __init__(
        self,
        root: Path,
        recorded: Mapping[str, SourceDigest] | None,
        report: VerifyReport,
        pool: concurrent.futures.Executor | None = None,
    ) -> None:
        self.root = root
        self.recorded = recorded or {}
        self.report = report
        self.pool = pool
        self._sources: dict[str, concurrent.futures.Future[str] | str] = {}
        # id(bytes) -> (the bytes, kept so that the id is not reused while listed; their hash)
        self._cells: dict[int, tuple[bytes, concurrent.futures.Future[str]]] = {}

    def start(self, rel: str, data: bytes) -> None:
        """Begin hashing a cell's bytes and finding its source's digest (before :meth:`cell`/:meth:`source`)."""
        if self.pool is not None:
            self._cells[id(data)] = (data, self.pool.submit(_sha256, data))
        if rel in self._sources:
            return
        path = self.root / rel
        digest = trusted_source_digest(path, self.recorded.get(source_key(path))) if self.recorded else None
        if digest is not None:
            self.report.digests_reused += 1
            self._sources[rel] = digest
        elif self.pool is not None:  # no record, or the file changed since the build hashed it
            self._sources[rel] = self.pool.submit(sha256_file, path)

    def cell(self, data: bytes) -> str:
        started = self._cells.pop(id(data), None)
        return started[1].result() if started is not None and started[0] is data else _sha256(data)

    def drop(self, cells: list[bytes]) -> None:
        """Forget the hashes of ``cells`` that were started and not asked for (a row not compared)."""
        for data in cells:
            started = self._cells.pop(id(data), None)
            if started is not None:
                started[1].cancel()

    def source(self, rel: str) -> str:
        """The source file's digest. Raises OSError when it cannot be read."""
        known = self._sources.pop(rel, None)
        if isinstance(known, str):
            return known
        self.report.sources_hashed += 1
        return known.result() if known is not None else sha256_file(self.root / rel)

    def cancel(self) -> None:
        for future in [*(f for _, f in self._cells.values()), *self._sources.values()]:
            if isinstance(future, concurrent.futures.Future):
                future.cancel()
        self._cells.clear()
        self._sources.clear()


def _row_cells(
    row: dict, expected: dict[RowKey, dict[str, list[Any]]], info: IndexInfo
) -> Iterator[tuple[str, bytes]]:
    """(source relpath, embedded bytes) of each NIfTI cell of ``row`` that :func:`_check_row` will compare."""
    want_row = expected.get((row.get("subject_id"), row.get("session_id")))
    if want_row is None:
        return
    for name, many in info.columns.items():
        cell = row.get(name)
        got = (cell or []) if many else ([] if cell is None else [cell])
        want = want_row[name]
        if not isinstance(got, list) or len(got) != len(want):
            continue
        for value, rel in zip(got, want, strict=True):
            data = value.get("bytes") if isinstance(value, dict) else None
            if isinstance(data, bytes):
                yield rel, data


def _check_row(
    row: dict,
    at: tuple[str, set[str]],
    expected: dict[RowKey, dict[str, list[Any]]],
    info: IndexInfo,
    seen: set[RowKey],
    report: VerifyReport,
    digests: _Digests | None = None,
) -> None:
    """Compare one published row with its source files and phenotype; record what differs in ``report``.

    ``at`` is the row's place (the data file and the row in it), and the columns its file
    has wrong, already reported: their cells are not compared. ``digests`` gives the cells' and
    the source files' sha256 (default: hashed here, each source file read).
    """
    digests = digests or _Digests(info.root, None, report)
    where, bad_columns = at
    report.rows_found += 1
    key = (row.get("subject_id"), row.get("session_id"))
    label = shown(key[0] if key[1] is None else f"{key[0]}/{key[1]}")
    if key in seen:
        report.problems.append(f"row {label} appears more than once ({where})")
        return
    seen.add(key)
    if key not in expected:
        report.problems.append(f"row {label} is not in the BIDS index ({where})")
        return
    for name, many in info.columns.items():
        if name in bad_columns:
            continue
        cell = row.get(name)
        got = (cell or []) if many else ([] if cell is None else [cell])
        want = expected[key][name]
        if len(got) != len(want):
            report.problems.append(f"{label} {name}: {len(got)} file(s), expected {len(want)} ({where})")
            continue
        for k, (value, rel) in enumerate(zip(got, want, strict=True)):
            column = f"{name}[{k}]" if many else name
            data = value.get("bytes") if isinstance(value, dict) else None
            if data is None:
                report.problems.append(f"{label} {column}: {shown(rel)} is not embedded (no bytes) ({where})")
                continue
            if value.get("path") != Path(rel).name:
                report.problems.append(
                    f"{label} {column}: path {value.get('path')!r}, expected {Path(rel).name!r} ({where})"
                )
            try:
                source = digests.source(rel)
            except OSError as exc:
                report.problems.append(f"{label} {column}: cannot read the source {shown(rel)}: {exc}")
                continue
            found = digests.cell(data)
            if found != source:
                report.problems.append(
                    f"{label} {column}: bytes differ from {shown(rel)} (sha256 expected "
                    f"{short_digest(source)} from the source, found {short_digest(found)}; {where})"
                )
            report.files_checked += 1
            report.bytes_checked += len(data)
    for name, source in _value_columns(info).items():
        if name in bad_columns or name not in row:
            continue  # a missing column is a schema problem, reported once
        if _plain(row[name]) != expected[key][name]:
            report.problems.append(
                f"{label} {name}: {_short(row[name])}, expected {_short(expected[key][name])} from {source} ({where})"
            )


def _value_columns(info: IndexInfo) -> dict[str, str]:
    """The columns compared by value (not by file bytes): name -> where their values come from."""
    out = {name: "participants.tsv" for name in info.phenotype}
    out |= {name: "sessions.tsv" for name in info.sessions}
    for name, many in info.columns.items():
        out |= {c: "the BIDS files" for c in info.companion_features(name, many)}
    return out


def _plain(value: Any) -> Any:
    """A cell as Python values: ``Json`` cells (read undecoded, as JSON text) parsed."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@contextlib.contextmanager
def _quiet_parquet_reader():
    """Silence the error ``datasets`` logs (a whole schema, over many lines) before raising: the report says it."""
    logger = logging.getLogger("datasets.packaged_modules.parquet.parquet")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_LOAD_ERRORS = (OSError, DatasetsError, ValueError, KeyError)
_READ_ERRORS = (OSError, DatasetsError, pa.ArrowException, ValueError, httpx2.HTTPError)


def _builder(
    load_id: str, config_name: str | None, *, revision: str | None, token: str | None, cache_dir: str
):
    """What ``load_dataset(load_id, config_name, streaming=True)`` builds, reading one row group at a time."""
    return load_dataset_builder(
        load_id,
        config_name,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        # read one row group at a time: pre-buffering would hold a whole shard in memory
        fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False),
    )


def verify_preview_config(
    load_id: str,
    num_rows: int,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
    keys: list[RowKey] | None = None,
) -> list[str]:
    """Check the ``preview`` config of a publication: it loads with ``datasets`` and holds ``num_rows`` rows.

    Reads the card (its configs and preview features) and each preview file's parquet
    footer: rows counted, columns and types compared with the card's preview features.
    With ``keys`` (the index's rows), the preview is also read through ``datasets``
    (streaming, undecoded) and must hold each row once (by ``subject_id``/``session_id``,
    when it has them). The problems found, one line each.
    """
    shown_id = shown(load_id)
    with tempfile.TemporaryDirectory(prefix="bids-hub-verify-") as tmp:
        try:
            builder = _builder(
                load_id, PREVIEW_CONFIG, revision=revision, token=token, cache_dir=cache_dir or tmp
            )
            files = [str(f) for f in (builder.config.data_files or {}).get("train", [])]
            features = builder.info.features
        except _LOAD_ERRORS as exc:
            return [
                f"cannot load the {PREVIEW_CONFIG} config of {shown_id} with datasets.load_dataset: {one_line(exc)}"
            ]
        if not files:
            return [f"the {PREVIEW_CONFIG} config of {shown_id} has no data files"]
        problems: list[str] = []
        want = None if features is None else {f.name: f.type for f in features.arrow_schema}
        rows, complete = 0, True
        for url in files:
            name = _shown_file(url, "preview")
            try:
                meta = _footer(url, token)
            except (OSError, ValueError, pa.ArrowException, httpx2.HTTPError) as exc:
                problems.append(f"{name}: cannot read its parquet footer: {one_line(exc)}")
                complete = False
                continue
            rows += meta.num_rows
            if want is not None:
                found = {f.name: f.type for f in meta.schema.to_arrow_schema()}
                problems += _type_problems(name, found, want, "the card's preview features do not list")
        if complete and rows != num_rows:
            problems.append(
                f"the {PREVIEW_CONFIG} config of {shown_id} has {rows} rows, expected {num_rows} (one per row "
                "of the full data)"
            )
        if keys is None or problems:
            return problems
        expected = Counter(keys)
        seen: Counter = Counter()
        try:
            with _quiet_parquet_reader():
                for row in builder.as_streaming_dataset(split="train").decode(False):
                    if "subject_id" in row:
                        seen[(row.get("subject_id"), row.get("session_id"))] += 1
                    else:
                        seen[None] += 1
        except _READ_ERRORS as exc:
            return [f"reading the {PREVIEW_CONFIG} config of {shown_id} failed: {one_line(exc)}"]
        if None in seen:  # no row ids in the preview: only its rows can be counted
            if seen[None] != num_rows:
                problems.append(
                    f"the {PREVIEW_CONFIG} config of {shown_id} read {seen[None]} rows, expected {num_rows}"
                )
            return problems
        label = {k: shown(k[0] if k[1] is None else f"{k[0]}/{k[1]}") for k in expected | seen}
        wrong = [
            f"{PREVIEW_CONFIG} row {label[k]} appears {seen[k]} time(s), expected {expected[k]}"
            for k in sorted(expected | seen, key=str)
            if seen[k] != expected[k]
        ]
        problems += wrong[:50] + ([f"… and {len(wrong) - 50} more preview rows"] if len(wrong) > 50 else [])
    return problems


def verify_published(
    load_id: str,
    index_table: pa.Table,
    cache_dir: str | None = None,
    *,
    revision: str | None = None,
    token: str | None = None,
    config_name: str | None = None,
    source_digests: Mapping[str, SourceDigest] | None = None,
) -> VerifyReport:
    """Load ``load_id`` (a folder or a Hub repo id; streaming, fresh cache) and check it against the index.

    The published schema must be the one the index gives (the card's features and each
    data file's columns and types: no column more, none less); every row of the index
    must appear exactly once, and every cell must hold the bytes of its source files, in
    order, compared by sha256, and the phenotype of participants.tsv. ``revision`` and
    ``token`` are for Hub repos: a branch or ``refs/pr/N``, and the token a private repo
    needs. Each problem names the row, the column, the file and the digests.

    The full data is checked whatever the default config is: ``config_name``, else the
    config the card names for it (``default``, or ``full`` when the preview is the
    default). A ``preview`` config, when the card has one, must load and hold each row of
    the index once (:func:`verify_preview_config`).

    ``source_digests`` (:func:`.digests.load_source_digests` of the stored shards) are the
    source files' sha256 as the shard build hashed them from the bytes it embedded: a source
    file whose stamp is still the one recorded is compared by that digest, without being read
    again (each published byte is then read once, and no source byte); any other is hashed.
    """
    from .hub.http import bound_http_waits

    bound_http_waits()  # a Hub that never answers is given up on
    HfFileSystem.clear_instance_cache()  # its listings are cached per process: read the repo as it is now
    info = IndexInfo.of(index_table)
    expected: dict[RowKey, dict[str, list[Any]]] = {}
    subs = index_table.column("subject_id").to_pylist()
    sess = index_table.column("session_id").to_pylist()
    cols = {name: index_table.column(name).to_pylist() for name in info.columns}
    typed = dataset_from_index(index_table).data.table
    values = {name: _plain(typed.column(name).to_pylist()) for name in _value_columns(info)}
    for i, key in enumerate(zip(subs, sess, strict=True)):
        cells: dict[str, Any] = {}
        for name, many in info.columns.items():
            value = cols[name][i]
            cells[name] = list(value) if many else ([] if value is None else [value])
        for name, column in values.items():
            cells[name] = column[i]
        expected[key] = cells
    report = VerifyReport(rows_expected=len(expected))
    seen: set[RowKey] = set()
    shown_id = shown(load_id)
    with tempfile.TemporaryDirectory(prefix="bids-hub-verify-") as tmp:
        try:  # what load_dataset(load_id, split="train", streaming=True) does, keeping the builder
            load = {"revision": revision, "token": token, "cache_dir": cache_dir or tmp}
            builder = _builder(load_id, config_name, **load)
            configs = set(builder.builder_configs)
            full = config_name or full_config_name(configs)
            if full is not None and builder.config.name != full:  # the preview is the default
                builder = _builder(load_id, full, **load)
            card = builder.info.features  # the card's dataset_info; None without (then read from the files)
            ds = builder.as_streaming_dataset(split="train").decode(False)
            files = [str(f) for f in (builder.config.data_files or {}).get("train", [])]
        except (OSError, DatasetsError, ValueError, KeyError) as exc:
            report.problems.append(f"cannot load {shown_id} with datasets.load_dataset: {one_line(exc)}")
            return report
        located = _check_schemas(files, card, info.features(), token, report)
        schema_ok = not report.problems
        pool = concurrent.futures.ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="verify-sha256")
        digests = _Digests(info.root, source_digests, report, pool)
        pending: tuple[dict, tuple[str, set[str]], list[bytes]] | None = None  # the row being hashed

        def finish() -> None:
            nonlocal pending
            if pending is not None:
                row, at, cells = pending
                pending = None
                _check_row(row, at, expected, info, seen, report, digests)
                digests.drop(cells)

        try:
            with _quiet_parquet_reader():
                for i, row in enumerate(ds):  # each row is hashed while the next one is read
                    cells = []
                    for rel, data in _row_cells(row, expected, info):
                        digests.start(rel, data)
                        cells.append(data)
                    finish()
                    pending = (row, located.where(i), cells)
            finish()
        except _READ_ERRORS as exc:
            finish()  # the rows read before the failure are reported as they are
            report.problems.append(
                f"reading {shown_id} failed after {report.rows_found} rows: "
                + (one_line(exc) if schema_ok else f"{one_line(exc, 120)} (the columns differ: see above)")
            )
        finally:
            digests.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        if PREVIEW_CONFIG in configs:
            report.problems += verify_preview_config(
                load_id,
                len(expected),
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                keys=list(expected),
            )
    missing = [k for k in expected if k not in seen]
    for sub, ses in missing[:50]:
        report.problems.append(f"row {shown(sub if ses is None else f'{sub}/{ses}')} is missing")
    if len(missing) > 50:
        report.problems.append(f"… and {len(missing) - 50} more rows are missing")
    return report
