"""Companion files of BIDS data files: events, diffusion gradients, sessions and scans tables, lifted metadata.

Pure BIDS reading (no Dagster, no ``datasets``): the index and the features are built elsewhere.

* :func:`read_tsv` reads a BIDS TSV file (UTF-8, BOM tolerated, tab separated, header required,
  ``n/a`` and empty cells null) into a :class:`TsvTable` whose columns are typed:

  1. a column named in ``numeric`` (``onset``, ``duration`` of events) is float64, and a value that
     is not a number there is an error naming the file, the line and the column;
  2. a column whose JSON description has ``Levels`` is a string column (codes are categories);
  3. a column whose JSON description has a ``Format`` (BIDS 1.10+, "Permitted formats for values in
     the described column") is typed by it: ``number`` float64, ``integer`` and ``index`` int64,
     ``boolean`` bool, any other format (``label``, ``date``, ``datetime``, ``uri``, ...) string.
     When the values do not fit the declared format, a warning says so and rule 4 types the column;
  4. else the type is inferred from the values as participants.tsv columns are (int64 when all
     are integers that fit, float64 when all are numbers, bool when all are true/false, else string;
     a leading zero keeps strings). ``Units`` on a column whose values are not numbers is a warning.

* Tables read from several files (one sessions.tsv per subject, one scans.tsv per session, one
  events.tsv per run) are typed alike with :func:`merged_columns` / :func:`unify`: equal types stay,
  int64 with float64 is float64, any other mix is string; a column that is entirely null in a
  file (and not declared) does not vote. Values are converted again from their original text,
  so a float64 column of ints or a string column of numbers keeps what the file says.

* :class:`CompanionFinder` applies the BIDS inheritance principle to a list of candidate relpaths
  (it never walks the disk): a candidate applies to a data file when it sits in the data file's
  folder or an ancestor (within the file's scope), has the asked suffix and extension, and its
  entities are a subset of the data file's. The nearest one (deepest folder, then most entities)
  wins; two at the same rank is an error. JSON companions are merged, least specific first.

* :func:`lift_type` types a sidecar metadata field lifted into its own column, using the BIDS
  schema's metadata definitions to decide between the types the values could have.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from .entities import NameKey, name_key, parse_filename
from .errors import BidsError, shown
from .layout import BidsFile, read_json_object
from .participants import _FLOAT, _INT, _INT64, NULLS, ColumnType, _convert, _infer_type

__all__ = [
    "NULLS",
    "ColumnType",
    "CompanionFinder",
    "LiftKind",
    "ScansTable",
    "SessionsTable",
    "TsvTable",
    "convert_value",
    "infer_column_type",
    "lift_column",
    "lift_type",
    "lift_value",
    "merge_types",
    "merged_columns",
    "nifti_volumes",
    "parse_bval",
    "parse_bvec",
    "read_all_scans",
    "read_all_sessions",
    "read_events",
    "read_gradients",
    "read_scans",
    "read_sessions",
    "read_tsv",
    "unify",
]

LiftKind = Literal["float64", "int64", "string", "bool", "json"]

#: Columns of an events file that must hold numbers (seconds).
EVENTS_NUMERIC = ("onset", "duration")

#: ``Format`` of a column description (BIDS schema ``objects.formats``) → column type.
_FORMAT_TYPES: dict[str, ColumnType] = {
    "number": "float64",
    "integer": "int64",
    "index": "int64",
    "boolean": "bool",
}


def infer_column_type(values: list[str], description: Mapping[str, Any] | None = None) -> ColumnType:
    """The type of a TSV column from its texts (participants.tsv rules; ``Levels`` → string)."""
    return _infer_type(values, dict(description or {}))


def convert_value(text: str | None, kind: ColumnType) -> Any:
    """One TSV cell as ``kind`` (``n/a``, empty and None → None)."""
    return None if text is None else _convert(text, kind)


def _fits(values: Iterable[str], kind: ColumnType) -> bool:
    present = [v for v in values if v not in NULLS]
    if kind == "float64":
        return all(_FLOAT.match(v) for v in present)
    if kind == "int64":
        return all(_INT.match(v) and -_INT64 <= int(v) < _INT64 for v in present)
    if kind == "bool":
        return all(v.lower() in ("true", "false") for v in present)
    return True


# --------------------------------------------------------------------------------------------- TSV


@dataclass(frozen=True)
class TsvTable:
    """A typed BIDS TSV file: one record per line, every column of the file in each record."""

    path: str  # where it was read from, for messages
    columns: dict[str, ColumnType]  # in file order
    records: list[dict[str, Any]]
    descriptions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # The cells as written (None for n/a or empty), to convert again when types are merged.
    texts: list[dict[str, str | None]] = field(default_factory=list, repr=False, compare=False)
    # Columns whose type was declared (numeric, Levels, Format): they vote even when all null.
    declared: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False)

    def voting(self) -> dict[str, ColumnType]:
        """The column types that should count when merging with other tables."""
        return {
            name: kind
            for name, kind in self.columns.items()
            if name in self.declared or any(t.get(name) is not None for t in self.texts)
        }

    def retyped(self, columns: Mapping[str, ColumnType]) -> TsvTable:
        """This table with ``columns`` (usually from :func:`merged_columns`): values converted
        again from their text, a column the file lacks is None in every record."""
        columns = dict(columns)
        records = [
            {name: convert_value(t.get(name), kind) for name, kind in columns.items()} for t in self.texts
        ]
        return replace(self, columns=columns, records=records)

    def keyed(self, column: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Records keyed by ``column`` (``prefix`` added when the value lacks it), that column dropped.

        A missing key column, an empty key or a key listed twice is an error naming the file.
        """
        if column not in self.columns:
            have = ", ".join(map(shown, self.columns)) or "none"
            raise BidsError(f"{shown(self.path)} has no {column} column (its columns: {have}).")
        out: dict[str, dict[str, Any]] = {}
        for line, (text, record) in enumerate(zip(self.texts, self.records, strict=True), start=2):
            key = text.get(column)
            if key is None:
                raise BidsError(f"{shown(self.path)} line {line} has no {column}; every line needs one.")
            if prefix and not key.startswith(prefix):
                key = prefix + key
            if key in out:
                raise BidsError(f"{shown(self.path)} lists {shown(key)} twice (line {line}).")
            out[key] = {k: v for k, v in record.items() if k != column}
        return out


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BidsError(
            f"{shown(path)} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise BidsError(f"{shown(path)} cannot be read: {exc.strerror or exc}.") from None


def read_tsv(
    path: Path,
    sidecar: Mapping[str, Any] | None = None,
    numeric: Sequence[str] = (),
    where: str | None = None,
) -> TsvTable:
    """Read a BIDS TSV file typed by its JSON description ``sidecar`` (see the module doc).

    ``where`` names the file in messages (default: ``path``). Blank lines are skipped; a line
    with more or fewer fields than the header is an error naming the file and the line.
    """
    where = where or str(path)
    sidecar = sidecar or {}
    lines = _decode(path).split("\n")
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        if header is None:
            header = cells
            for j, name in enumerate(header, start=1):
                if not name:
                    raise BidsError(f"{shown(where)}: column {j} of the header (line {number}) has no name.")
            dupes = sorted({n for n in header if header.count(n) > 1})
            if dupes:
                raise BidsError(f"{shown(where)}: the header (line {number}) names column(s) {dupes} twice.")
            continue
        if len(cells) != len(header):
            raise BidsError(
                f"{shown(where)} line {number} has {len(cells)} tab-separated fields, the header has "
                f"{len(header)}; every line needs one value per column (n/a when there is none)."
            )
        rows.append((number, cells))
    if header is None:
        raise BidsError(f"{shown(where)} is empty: a BIDS TSV file needs a header line naming its columns.")

    columns: dict[str, ColumnType] = {}
    declared: set[str] = set()
    warnings: list[str] = []
    for j, name in enumerate(header):
        values = [cells[j] for _, cells in rows]
        raw_meta = sidecar.get(name)
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        if name in numeric:
            for number, cells in rows:
                v = cells[j]
                if v not in NULLS and not _FLOAT.match(v):
                    raise BidsError(
                        f"{shown(where)} line {number} column {name}: {shown(repr(v))} is not a number "
                        f"(write seconds as a decimal number, or n/a)."
                    )
            columns[name] = "float64"
            declared.add(name)
            continue
        if "Levels" in meta:
            columns[name] = "string"
            declared.add(name)
            continue
        fmt = meta.get("Format")
        if isinstance(fmt, str):
            kind = _FORMAT_TYPES.get(fmt, "string")
            if _fits(values, kind):
                columns[name] = kind
                declared.add(name)
                continue
            odd = next(v for v in values if v not in NULLS and not _fits([v], kind))
            warnings.append(
                f"{where} column {name!r} is declared Format {fmt!r} but holds {odd!r}: typed from its values"
            )
        columns[name] = infer_column_type(values, meta)
        if columns[name] == "string" and "Units" in meta:
            odd_values = [v for v in values if v not in NULLS and not _FLOAT.match(v)]
            if odd_values:
                warnings.append(
                    f"{where} column {name!r} has Units ({meta['Units']}) but values that are not numbers "
                    f"(e.g. {odd_values[0]!r}): kept as strings"
                )
    texts = [
        {name: (None if c in NULLS else c) for name, c in zip(header, cells, strict=True)}
        for _, cells in rows
    ]
    records = [{name: convert_value(t[name], columns[name]) for name in header} for t in texts]
    descriptions: dict[str, str] = {}
    for name in header:
        meta = sidecar.get(name)
        if isinstance(meta, dict):
            text = meta.get("Description") or meta.get("LongName")
            if text:
                descriptions[name] = str(text)
    return TsvTable(
        path=where,
        columns=columns,
        records=records,
        descriptions=descriptions,
        warnings=tuple(warnings),
        texts=texts,
        declared=frozenset(declared),
    )


def merge_types(a: ColumnType, b: ColumnType) -> ColumnType:
    """One type for a column typed ``a`` in one table and ``b`` in another.

    Equal types stay; int64 with float64 is float64; any other pair is string.
    """
    if a == b:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "string"


def merged_columns(tables: Iterable[TsvTable], exclude: Iterable[str] = ()) -> dict[str, ColumnType]:
    """The union of the tables' columns (first-seen order) with their merged types.

    A column that is entirely null in a table, and not declared there, does not vote; a column
    no table votes for is string.
    """
    skip = set(exclude)
    order: dict[str, None] = {}
    votes: dict[str, ColumnType] = {}
    for table in tables:
        voting = table.voting()
        for name in table.columns:
            if name in skip:
                continue
            order.setdefault(name)
            if name in voting:
                votes[name] = merge_types(votes[name], voting[name]) if name in votes else voting[name]
    return {name: votes.get(name, "string") for name in order}


K = TypeVar("K")


def unify(tables: Mapping[K, TsvTable]) -> dict[K, TsvTable]:
    """The tables typed alike: every one retyped to :func:`merged_columns` of all of them
    (so each record has every column of any table, None where its file lacks it)."""
    columns = merged_columns(tables.values())
    return {key: table.retyped(columns) for key, table in tables.items()}


# --------------------------------------------------------------------------------- inheritance


class CompanionFinder:
    """Finds the companion files (events.tsv/.json, .bval, .bvec, ...) that apply to a data file.

    Built from relpaths (as :func:`bids_hub_dagster.bids.layout.scan` lists them); the disk is not
    walked. A candidate applies when it sits in the data file's folder or one of its ancestors
    (up to the top of the file's scope), has the asked suffix and extension, and its entities
    are all in the data file's name with the same values.
    """

    def __init__(
        self, root: Path, relpaths: Iterable[str], keys: Mapping[str, NameKey] | None = None
    ) -> None:
        """``keys``: :func:`.entities.name_keys` of (some of) the relpaths, when the caller has them."""
        self.root = root
        self._by_dir: dict[tuple[str, str | None, str], list[tuple[str, frozenset[tuple[str, str]]]]] = (
            defaultdict(list)
        )
        self._kinds: set[tuple[str | None, str]] = set()  # (suffix, extension) of any candidate
        for rel in relpaths:
            folder, _, filename = rel.rpartition("/")
            known = keys.get(rel) if keys is not None else None
            suffix, extension, entities = known if known is not None else name_key(filename)
            self._by_dir[(folder, suffix, extension.lower())].append((rel, entities))
            self._kinds.add((suffix, extension.lower()))

    def sources(self, file: BidsFile, suffix: str, extension: str) -> list[str]:
        """Every applicable candidate, least specific first (shallowest folder, then fewest entities)."""
        ranked = self._ranked(file.relpath, file.scope, file.name.all_entities(), suffix, extension)
        return [rel for _, rel in ranked]

    def _ranked(
        self, relpath: str, scope: str, entities: Mapping[str, str], suffix: str, extension: str
    ) -> list[tuple[tuple[int, int], str]]:
        if (suffix, extension.lower()) not in self._kinds:  # no such file anywhere: nothing to look for
            return []
        parts = relpath.split("/")[:-1]
        scope_depth = len(scope.split("/")) if scope else 0
        ents = entities.items()
        found: list[tuple[tuple[int, int], str]] = []
        for depth in range(scope_depth, len(parts) + 1):
            folder = "/".join(parts[:depth])
            for rel, cand in self._by_dir.get((folder, suffix, extension.lower()), ()):
                if cand <= ents and rel != relpath:
                    found.append(((depth, len(cand)), rel))
        return sorted(found)

    def find(self, file: BidsFile, suffix: str, extension: str) -> str | None:
        """The nearest applicable candidate (deepest folder, then most entities), or None.

        Two candidates equally near (e.g. ``sub-01_task-a_events.tsv`` and ``sub-01_run-1_events.tsv``
        beside ``sub-01_task-a_run-1_bold.nii.gz``) is an error: BIDS forbids that ambiguity.
        """
        ranked = self._ranked(file.relpath, file.scope, file.name.all_entities(), suffix, extension)
        if not ranked:
            return None
        best_rank, best = ranked[-1]
        ties = [rel for rank, rel in ranked if rank == best_rank]
        if len(ties) > 1:
            raise BidsError(
                f"{shown(file.relpath)}: several {suffix}{extension} files apply to it equally "
                f"({', '.join(map(shown, ties))}); BIDS allows one per folder level: merge or rename them."
            )
        return best

    def merged_json(self, companion: str, scope: str, suffix: str) -> dict[str, Any]:
        """The ``suffix.json`` files that apply to the companion file ``companion`` (a relpath, e.g. the
        events.tsv that :meth:`find` chose; ``scope`` as the data file's), merged: nearer files override."""
        entities = parse_filename(companion.rpartition("/")[2]).all_entities()
        merged: dict[str, Any] = {}
        for _, rel in self._ranked(companion, scope, entities, suffix, ".json"):
            merged.update(read_json_object(self.root / rel, f"one description per {suffix}.tsv column"))
        return merged


# -------------------------------------------------------------------------------------- events


def read_events(root: Path, file: BidsFile, finder: CompanionFinder) -> TsvTable | None:
    """The events of ``file`` (its applicable ``_events.tsv``, typed by the applicable ``_events.json``
    files), or None when none applies. ``onset`` and ``duration`` are float64 (``n/a`` → None); a
    file without ``onset`` is an error, one without ``duration`` a warning. Each record holds every
    column of that events file; use :func:`unify` to type the events of several files alike.
    """
    rel = finder.find(file, "events", ".tsv")
    if rel is None:
        return None
    sidecar = finder.merged_json(rel, file.scope, "events")
    table = read_tsv(root / rel, sidecar, numeric=EVENTS_NUMERIC, where=rel)
    if "onset" not in table.columns:
        raise BidsError(
            f"{shown(rel)} has no onset column (its columns: {', '.join(map(shown, table.columns)) or 'none'}); "
            "a BIDS events file starts with onset and duration, in seconds."
        )
    if "duration" not in table.columns:
        table = replace(table, warnings=(*table.warnings, f"{rel} has no duration column"))
    return table


# ---------------------------------------------------------------------------------- gradients


def nifti_volumes(path: Path) -> int:
    """The number of volumes of a NIfTI image: its 4th dimension (1 for a 3D image)."""
    import nibabel  # a heavy import, only when gradients are read

    try:
        shape = nibabel.load(path).header.get_data_shape()
    except Exception as exc:  # nibabel raises many kinds; all mean the header is unreadable
        raise BidsError(f"{shown(path)}: its NIfTI header cannot be read ({exc}).") from None
    return int(shape[3]) if len(shape) >= 4 else 1


def _numbers(rel: str, line: int, tokens: list[str]) -> list[float]:
    out = []
    for tok in tokens:
        try:
            value = float(tok)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BidsError(f"{shown(rel)} line {line}: {shown(repr(tok))} is not a number.")
        out.append(value)
    return out


def _rows(text: str) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def parse_bval(text: str, rel: str) -> list[float]:
    """The b-values of a ``.bval`` file: whitespace-separated numbers (on one line, or one per line)."""
    values: list[float] = []
    for line, tokens in _rows(text):
        values.extend(_numbers(rel, line, tokens))
    return values


def parse_bvec(text: str, rel: str) -> list[list[float]]:
    """The gradient directions of a ``.bvec`` file: 3 rows of N whitespace-separated numbers."""
    rows = [(line, _numbers(rel, line, tokens)) for line, tokens in _rows(text)]
    if len(rows) != 3:
        hint = ""
        if rows and all(len(r) == 3 for _, r in rows):
            hint = " (it looks transposed: one line per volume; BIDS wants x, y and z on three lines)"
        raise BidsError(f"{shown(rel)} has {len(rows)} non-empty lines; a .bvec file needs exactly 3{hint}.")
    lengths = [len(r) for _, r in rows]
    if len(set(lengths)) > 1:
        raise BidsError(
            f"{shown(rel)}: its 3 rows have different lengths ({lengths[0]}, {lengths[1]}, {lengths[2]})."
        )
    return [r for _, r in rows]


def read_gradients(
    root: Path, file: BidsFile, finder: CompanionFinder, volumes: int | None
) -> tuple[list[float], list[list[float]]] | None:
    """The b-values and b-vectors of ``file`` (its applicable ``.bval`` and ``.bvec``, by inheritance,
    with the file's own suffix, e.g. ``dwi``), or None when neither applies.

    ``volumes`` is the image's volume count (:func:`nifti_volumes`; None when the header
    cannot be read: the shard's file check names such a file); a count that differs, a
    .bvec that is not 3 rows of equal length, a value that is not a number, or only one of
    the pair is an error naming the file.
    """
    suffix = file.suffix or "dwi"
    bval_rel = finder.find(file, suffix, ".bval")
    bvec_rel = finder.find(file, suffix, ".bvec")
    if bval_rel is None and bvec_rel is None:
        return None
    if bval_rel is None or bvec_rel is None:
        have, lacks = (bval_rel, ".bvec") if bvec_rel is None else (bvec_rel, ".bval")
        raise BidsError(
            f"{shown(file.relpath)}: {shown(have)} applies to it but no {lacks} file does; "
            "diffusion data needs both (add the missing one beside it)."
        )
    bval = parse_bval(_decode(root / bval_rel), bval_rel)
    bvec = parse_bvec(_decode(root / bvec_rel), bvec_rel)
    if volumes is None:
        if len(bval) != len(bvec[0]):
            raise BidsError(
                f"{shown(bval_rel)} has {len(bval)} b-values but {shown(bvec_rel)} has {len(bvec[0])} "
                "directions per row; they must match one for one."
            )
        return bval, bvec
    if len(bval) != volumes:
        raise BidsError(
            f"{shown(bval_rel)} has {len(bval)} b-values but {shown(file.relpath)} has {volumes} volumes; "
            "they must match one for one."
        )
    if len(bvec[0]) != volumes:
        raise BidsError(
            f"{shown(bvec_rel)} has {len(bvec[0])} directions per row but {shown(file.relpath)} has "
            f"{volumes} volumes; they must match one for one."
        )
    return bval, bvec


# ------------------------------------------------------------------------------ sessions, scans


def _subject_label(subject: str) -> str:
    return subject if subject.startswith("sub-") else f"sub-{subject}"


def _tabular_sidecar(root: Path, tsv_rel: str, suffix: str) -> dict[str, Any]:
    """The merged ``suffix.json`` files that apply to the TSV file ``tsv_rel`` (inheritance principle):
    those in its folder or an ancestor whose entities are a subset of its own, nearer overriding."""
    parts = tsv_rel.split("/")
    ents = parse_filename(parts[-1]).all_entities().items()
    found: list[tuple[int, int, str]] = []
    for depth in range(len(parts)):
        folder = root.joinpath(*parts[:depth])
        try:
            names = sorted(p.name for p in folder.iterdir() if p.name.endswith(f"{suffix}.json"))
        except OSError:
            continue
        for name in names:
            cand = parse_filename(name)
            if cand.suffix == suffix and cand.extension == ".json" and cand.all_entities().items() <= ents:
                found.append((depth, len(cand.all_entities()), "/".join([*parts[:depth], name])))
    merged: dict[str, Any] = {}
    for _, _, rel in sorted(found):
        merged.update(read_json_object(root / rel, f"one description per {suffix}.tsv column"))
    return merged


@dataclass(frozen=True)
class SessionsTable:
    """One subject's ``sub-XX_sessions.tsv``: a record per session, keyed ``"ses-YY"``."""

    subject: str  # "sub-01"
    columns: dict[str, ColumnType]  # session_id excluded
    records: dict[str, dict[str, Any]]  # "ses-01" -> {column: value}
    descriptions: dict[str, str]
    warnings: tuple[str, ...] = ()
    table: TsvTable | None = field(default=None, repr=False, compare=False)

    def retyped(self, columns: Mapping[str, ColumnType]) -> SessionsTable:
        """This subject's sessions with ``columns`` (from :func:`merged_columns` across subjects)."""
        if self.table is None:
            raise ValueError("a SessionsTable built without its TsvTable cannot be retyped")
        table = self.table.retyped({"session_id": "string", **columns})
        return replace(self, columns=dict(columns), records=table.keyed("session_id", "ses-"), table=table)


def read_sessions(root: Path, subject: str) -> SessionsTable | None:
    """``sub-XX/sub-XX_sessions.tsv`` typed by the applicable ``sessions.json`` files (e.g.
    ``sub-XX_sessions.json`` beside it, a top-level ``sessions.json``), or None when absent.

    Types are this subject's own; :func:`read_all_sessions` types all subjects alike.
    """
    sub = _subject_label(subject)
    rel = f"{sub}/{sub}_sessions.tsv"
    if not (root / rel).is_file():
        return None
    table = read_tsv(root / rel, _tabular_sidecar(root, rel, "sessions"), where=rel)
    records = table.keyed("session_id", "ses-")
    columns = {k: v for k, v in table.columns.items() if k != "session_id"}
    descriptions = {k: v for k, v in table.descriptions.items() if k != "session_id"}
    return SessionsTable(sub, columns, records, descriptions, table.warnings, table)


def read_all_sessions(root: Path, subjects: Iterable[str]) -> dict[str, SessionsTable]:
    """The sessions tables of ``subjects`` that have one (keyed ``"sub-XX"``), all with the same
    columns and types (:func:`merged_columns` across subjects)."""
    tables = {t.subject: t for s in subjects if (t := read_sessions(root, s)) is not None}
    columns = merged_columns(
        (t.table for t in tables.values() if t.table is not None), exclude=["session_id"]
    )
    return {sub: t.retyped(columns) for sub, t in tables.items()}


@dataclass(frozen=True)
class ScansTable:
    """Records of scans.tsv files keyed by the data file's relpath from the BIDS root."""

    columns: dict[str, ColumnType]  # filename excluded
    records: dict[str, dict[str, Any]]  # "sub-01/anat/sub-01_T1w.nii.gz" -> {column: value}
    descriptions: dict[str, str]
    warnings: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> ScansTable:
        return cls(columns={}, records={}, descriptions={})


def _scans_files(root: Path, sub: str) -> list[str]:
    rels = []
    base = root / sub
    if (base / f"{sub}_scans.tsv").is_file():
        rels.append(f"{sub}/{sub}_scans.tsv")
    if base.is_dir():
        for ses in sorted(p.name for p in base.iterdir() if p.name.startswith("ses-") and p.is_dir()):
            rel = f"{sub}/{ses}/{sub}_{ses}_scans.tsv"
            if (root / rel).is_file():
                rels.append(rel)
    return rels


def _scans_table(root: Path, rels: list[str]) -> ScansTable:
    tables = {rel: read_tsv(root / rel, _tabular_sidecar(root, rel, "scans"), where=rel) for rel in rels}
    columns = merged_columns(tables.values(), exclude=["filename"])
    records: dict[str, dict[str, Any]] = {}
    descriptions: dict[str, str] = {}
    warnings: list[str] = []
    for rel, table in tables.items():
        folder = rel.rpartition("/")[0]
        retyped = table.retyped({"filename": "string", **columns})
        for key, record in retyped.keyed("filename").items():
            name = key.replace("\\", "/")
            target = posixpath.normpath(posixpath.join(folder, name))
            if name.startswith("/") or target.startswith("../") or not target.startswith(folder + "/"):
                raise BidsError(
                    f"{shown(rel)} lists {shown(key)}, which is not inside {shown(folder)}; "
                    "filename is relative to the folder holding the scans file (e.g. anat/sub-01_T1w.nii.gz)."
                )
            if target in records:
                raise BidsError(f"{shown(rel)}: {shown(target)} is listed by more than one scans file.")
            records[target] = record
        descriptions.update({k: v for k, v in table.descriptions.items() if k != "filename"})
        warnings.extend(table.warnings)
    return ScansTable(columns, records, descriptions, tuple(warnings))


def read_scans(root: Path, subject: str) -> ScansTable:
    """The scans.tsv files of a subject (``sub-XX/sub-XX_scans.tsv`` and each session's
    ``sub-XX/ses-YY/sub-XX_ses-YY_scans.tsv``), typed alike, keyed by data-file relpath."""
    return _scans_table(root, _scans_files(root, _subject_label(subject)))


def read_all_scans(root: Path, subjects: Iterable[str]) -> ScansTable:
    """:func:`read_scans` over ``subjects``, typed alike across all of them."""
    return _scans_table(root, [rel for s in subjects for rel in _scans_files(root, _subject_label(s))])


# --------------------------------------------------------------------------------- typed lifts

_SCHEMA_KINDS: dict[str, LiftKind] = {
    "number": "float64",
    "integer": "int64",
    "string": "string",
    "boolean": "bool",
    "array": "json",
    "object": "json",
}


def _kinds_of(definition: Mapping[str, Any]) -> set[LiftKind]:
    kinds: set[LiftKind] = set()
    if "type" in definition:
        kinds.add(_SCHEMA_KINDS.get(str(definition["type"]), "json"))
    for option in definition.get("anyOf", ()) or ():
        kinds |= _kinds_of(option)
    return kinds


@cache
def schema_kinds(field_name: str) -> frozenset[LiftKind] | None:
    """The column types the BIDS schema allows for the metadata field ``field_name`` (every
    definition of that name, ``anyOf`` alternatives included), or None for a field it lacks."""
    from bidsschematools import schema as bids_schema

    metadata = bids_schema.load_schema().objects.metadata
    kinds: set[LiftKind] = set()
    known = False
    for definition in metadata.values():
        if definition.get("name") == field_name:
            known = True
            kinds |= _kinds_of(definition)
    return frozenset(kinds or {"json"}) if known else None


def _value_kind(value: Any) -> LiftKind:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64" if -_INT64 <= value < _INT64 else "json"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"


def lift_type(field_name: str, values: list[Any]) -> LiftKind:
    """The column type of sidecar field ``field_name`` lifted into a column holding ``values``.

    The values decide, the BIDS schema settles what they leave open:

    * ints and floats together are float64; ints alone are float64 when the schema says the
      field is a ``number`` (``RepetitionTime: 2`` → 2.0), int64 otherwise;
    * values of one kind get that kind: where the schema allows several (``EchoTime`` is a
      number or an array), the one the values use;
    * values of several kinds (a number in one file, an array in another), lists and objects
      are json (JSON text);
    * no values (None only): the schema's type when it allows one scalar type, else json;
      a field the schema lacks is then string.

    A field the schema lacks is typed from its values alone.
    """
    allowed = schema_kinds(field_name)
    kinds = {_value_kind(v) for v in values if v is not None}
    if kinds == {"int64", "float64"}:
        kinds = {"float64"}
    if not kinds:
        if allowed is None:
            return "string"
        return next(iter(allowed)) if len(allowed) == 1 else "json"
    if len(kinds) > 1:
        return "json"
    (kind,) = kinds
    if kind == "int64" and allowed is not None and "float64" in allowed and "int64" not in allowed:
        return "float64"
    return kind


def lift_value(value: Any, kind: LiftKind, field_name: str = "", where: str = "") -> Any:
    """``value`` as a cell of a ``kind`` column (from :func:`lift_type`): ints become floats in a
    float64 column, anything becomes JSON text in a json column, None stays None.

    A value that does not fit is an error naming ``field_name`` and the file ``where``
    (it cannot happen when ``kind`` came from :func:`lift_type` over the same values).
    """
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    vk = _value_kind(value)
    if vk == kind:
        return value
    if kind == "float64" and vk == "int64":
        return float(value)
    label = f"{field_name} of {where}" if where else field_name or "a lifted value"
    raise BidsError(f"{shown(label)}: {value!r} is not a {kind} value like the rest of the column.")


def lift_column(field_name: str, values: list[Any]) -> tuple[LiftKind, list[Any]]:
    """:func:`lift_type` of the values and the values converted to it."""
    kind = lift_type(field_name, values)
    return kind, [lift_value(v, kind, field_name) for v in values]
