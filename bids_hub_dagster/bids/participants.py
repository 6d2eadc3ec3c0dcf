"""participants.tsv, typed by participants.json."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import BidsError, shown
from .layout import read_json_object

log = logging.getLogger(__name__)

ColumnType = Literal["string", "int64", "float64", "bool"]
NULLS = frozenset({"n/a", ""})


@dataclass(frozen=True)
class Participants:
    """The phenotype table: one record per participant, columns typed."""

    columns: dict[str, ColumnType]  # phenotype columns in file order, participant_id excluded
    records: dict[str, dict[str, Any]]  # "sub-01" -> {column: value}
    descriptions: dict[str, str]
    warnings: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> Participants:
        return cls(columns={}, records={}, descriptions={})

    def select(self, names: list[str] | None) -> Participants:
        """Keep only ``names`` (all when None); an unknown name is an error."""
        if names is None:
            return self
        missing = [n for n in names if n not in self.columns]
        if missing:
            have = ", ".join(map(shown, self.columns)) or "none"
            raise BidsError(f"phenotype column(s) {missing} are not in participants.tsv (it has: {have}).")
        return Participants(
            columns={n: self.columns[n] for n in names},
            records={k: {n: r.get(n) for n in names} for k, r in self.records.items()},
            descriptions={n: d for n, d in self.descriptions.items() if n in names},
            warnings=tuple(w for w in self.warnings if any(f"column {n!r}" in w for n in names)),
        )


_INT = re.compile(r"^[+-]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_INT64 = 2**63
_LEADING_ZERO = re.compile(r"^[+-]?0[0-9]")


def _infer_type(values: list[str], sidecar: dict[str, Any]) -> ColumnType:
    """The type of a participants.tsv column from its values and its participants.json entry.

    Strings when the column has ``Levels`` (codes are categories), when any value keeps
    a leading zero (``007`` is an id, not 7), or when any value is not a plain decimal
    number; int64 when every value is an integer that fits; else float64.
    """
    if "Levels" in sidecar:
        return "string"
    present = [v for v in values if v not in NULLS]
    if not present:
        return "string"
    if any(_LEADING_ZERO.match(v) for v in present):
        return "string"
    if all(_INT.match(v) for v in present):
        # integers beyond int64 are identifiers (a float would round them): strings
        return "int64" if all(-_INT64 <= int(v) < _INT64 for v in present) else "string"
    if all(_FLOAT.match(v) for v in present):
        return "float64"
    if all(v.lower() in ("true", "false") for v in present):
        return "bool"
    return "string"


def _convert(value: str, kind: ColumnType) -> Any:
    if value in NULLS:
        return None
    if kind == "int64":
        return int(value)
    if kind == "float64":
        return float(value)
    if kind == "bool":
        return value.lower() == "true"
    return value


def read_participants(root: Path) -> Participants:
    """Read ``participants.tsv`` typed by ``participants.json``; ``n/a`` becomes null.

    Columns described with ``Levels`` stay strings (codes such as ``1``/``2`` are
    categories, not numbers); other columns are int64 when every value is an integer,
    float64 when every value is a number, else strings.
    """
    tsv = root / "participants.tsv"
    if not tsv.is_file():
        return Participants.empty()
    sidecar_path = root / "participants.json"
    sidecar: dict[str, Any] = {}
    if sidecar_path.is_file():
        sidecar = read_json_object(sidecar_path, "one description per participants.tsv column")
    try:
        with tsv.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                return Participants.empty()
            rows = [[c.strip() for c in r] for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise BidsError(
            f"{shown(tsv)} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None
    except (OSError, csv.Error) as exc:
        raise BidsError(f"{shown(tsv)} cannot be read: {exc}.") from None
    if "participant_id" not in header:
        raise BidsError(f"{shown(tsv)} has no participant_id column (its columns: {header}).")
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise BidsError(f"{shown(tsv)} line {i} has {len(r)} fields, the header has {len(header)}.")
    id_col = header.index("participant_id")
    columns: dict[str, ColumnType] = {}
    for j, name in enumerate(header):
        if j == id_col:
            continue
        meta = sidecar.get(name) if isinstance(sidecar.get(name), dict) else {}
        columns[name] = _infer_type([r[j] for r in rows], meta)
    records: dict[str, dict[str, Any]] = {}
    for r in rows:
        pid = r[id_col]
        if not pid.startswith("sub-"):
            pid = f"sub-{pid}"
        if pid in records:
            raise BidsError(f"{shown(tsv)} lists {shown(pid)} twice.")
        records[pid] = {name: _convert(r[j], columns[name]) for j, name in enumerate(header) if j != id_col}
    descriptions = {
        name: str(meta.get("Description"))
        for name, meta in sidecar.items()
        if name in columns and isinstance(meta, dict) and meta.get("Description")
    }
    warnings = []
    for j, name in enumerate(header):
        meta = sidecar.get(name)
        if j == id_col or columns[name] != "string" or not isinstance(meta, dict) or "Units" not in meta:
            continue
        odd = [r[j] for r in rows if r[j] not in NULLS and not _FLOAT.match(r[j])]
        if odd and "Levels" not in meta:
            warnings.append(
                f"participants.tsv column {name!r} has Units ({meta['Units']}) in participants.json but values "
                f"that are not numbers (e.g. {odd[0]!r}): kept as strings"
            )
    return Participants(columns=columns, records=records, descriptions=descriptions, warnings=tuple(warnings))
