"""The BIDS index: one row per session (or subject), its files per column, its phenotype."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .columns import ColumnRule, infer_columns, row_key
from .entities import distinguishing_entities, entity_sort_key, natural_key
from .errors import AmbiguousColumnError, BidsError, shown
from .layout import BidsFile, read_dataset_description, scan
from .participants import Participants, read_participants
from .sidecars import SidecarResolver

log = logging.getLogger(__name__)

RowKey = tuple[str, str | None]  # (subject_id, session_id): one row of the dataset; session None per subject
RESERVED_NAMES = frozenset({"subject_id", "session_id"})


@dataclass
class Row:
    """One row of the dataset: its id, its files per column, and its phenotype."""

    subject_id: str
    session_id: str | None
    cells: dict[str, list[BidsFile]]
    phenotype: dict[str, Any]

    @property
    def files(self) -> list[BidsFile]:
        return [f for files in self.cells.values() for f in files]

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        return self.subject_id if self.session_id is None else f"{self.subject_id}/{self.session_id}"


@dataclass
class BidsIndex:
    """What a BIDS folder holds for one dataset spec."""

    root: Path
    description: dict[str, Any]
    row: str
    columns: list[ColumnRule]
    rows: list[Row]
    participants: Participants
    sidecars: dict[str, dict[str, Any]]  # relpath -> merged sidecar (inheritance applied)
    warnings: list[str] = field(default_factory=list)

    def files_per_column(self) -> dict[str, int]:
        return {c.name: sum(len(r.cells[c.name]) for r in self.rows) for c in self.columns}

    def bytes_per_column(self) -> dict[str, int]:
        return {c.name: sum(f.size for r in self.rows for f in r.cells[c.name]) for c in self.columns}

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject_id for r in self.rows}, key=natural_key)

    @property
    def sessions(self) -> int:
        return len({(r.subject_id, r.session_id) for r in self.rows if r.session_id is not None})


def _row_sort_key(key: RowKey) -> tuple[Any, ...]:
    sub, ses = key
    return (natural_key(sub), () if ses is None else natural_key(ses))


def _assign(rule: ColumnRule, files: list[BidsFile], row: str) -> dict[RowKey, list[BidsFile]]:
    by_row: dict[RowKey, list[BidsFile]] = defaultdict(list)
    for f in files:
        if f.subject is not None and rule.matches(f):
            by_row[row_key(f, row)].append(f)
    for key in sorted(by_row, key=_row_sort_key):
        matched = by_row[key]
        if len(matched) > 1:
            matched.sort(key=lambda f: entity_sort_key(f.name))
        if not rule.many and len(matched) > 1:
            a, b = matched[0], matched[1]
            differ = [d for d in distinguishing_entities(a.name, b.name) if d not in ("sub",)]
            if a.name.extension != b.name.extension and not differ:
                hint = "they differ only in extension (.nii vs .nii.gz): remove the duplicate"
            elif differ:
                hint = (
                    f"they differ in entity {differ[0]!r}: add `{differ[0]}: <value>` to the column "
                    f"to pick one, or set `many: true` to keep all"
                )
            else:
                hint = "set `many: true` to keep all"
            label = shown(key[0] if key[1] is None else f"{key[0]}/{key[1]}")
            raise AmbiguousColumnError(
                f"column {rule.name!r} holds one file per row, but row {label} matches "
                f"{len(matched)} files: {shown(a.relpath)} and {shown(b.relpath)}"
                + (f" (and {len(matched) - 2} more)" if len(matched) > 2 else "")
                + f"; {hint}."
            )
    return by_row


def build_index(
    root: Path | str,
    columns: Sequence[ColumnRule] | None = None,
    row: str = "session",
    phenotype: Sequence[str] | None = None,
) -> BidsIndex:
    """Index a BIDS folder for one dataset.

    Args:
        root: the BIDS dataset folder (holding ``dataset_description.json``).
        columns: the column rules; ``None`` infers one per (datatype, suffix) found.
        row: ``"session"`` (one row per subject and session) or ``"subject"``.
        phenotype: participants.tsv columns to keep; ``None`` keeps all.

    Returns:
        The index: rows sorted by subject and session (numbers numerically), files per
        column in entity order, typed phenotype, merged sidecars, and warnings.
    """
    root = Path(root).resolve()
    if row not in ("session", "subject"):
        raise BidsError(f"row must be 'session' or 'subject', not {row!r}.")
    description = read_dataset_description(root)
    scopes = [""] + sorted({c.scope for c in columns or () if c.scope})
    files, jsons = scan(root, scopes)
    warnings: list[str] = []
    rules = list(columns) if columns is not None else infer_columns(files, row)
    if not rules:
        raise BidsError(f"{shown(root)} holds no NIfTI files (.nii or .nii.gz) under sub-* folders.")
    names = [r.name for r in rules]
    reserved = [n for n in names if n in RESERVED_NAMES or n.startswith("_bids")]
    if reserved:
        raise BidsError(
            f"column name(s) {reserved} are reserved (subject_id, session_id, _bids*); rename them."
        )
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise BidsError(f"column names must be unique; repeated: {sorted(dupes)}.")

    cells: dict[RowKey, dict[str, list[BidsFile]]] = defaultdict(lambda: {r.name: [] for r in rules})
    for rule in rules:
        assigned = _assign(rule, files, row)
        if not assigned:
            where = f" in {shown(rule.scope)}" if rule.scope else ""
            warnings.append(
                f"column {rule.name!r} matches no file{where}: check its filters ({rule.to_mapping()})."
            )
        for key, matched in assigned.items():
            cells[key][rule.name] = matched

    participants = read_participants(root).select(list(phenotype) if phenotype is not None else None)
    clash = set(participants.columns) & (set(names) | {"subject_id", "session_id"})
    if clash:
        raise BidsError(f"phenotype column(s) {sorted(clash)} clash with column names; rename the column(s).")
    keys = sorted(cells, key=_row_sort_key)
    if not keys:
        raise BidsError(
            f"no row: none of the columns ({', '.join(names)}) matches a file under {shown(root)}; "
            "check their filters with `bids-hub-dagster index`."
        )
    subjects_with_data = {k[0] for k in keys}
    if participants.records:
        unlisted = sorted(subjects_with_data - set(participants.records), key=natural_key)
        if unlisted:
            warnings.append(
                f"{len(unlisted)} subject folder(s) missing from participants.tsv (phenotype left null): "
                + ", ".join(map(shown, unlisted))
            )
    warnings.extend(participants.warnings)
    no_data = sorted(set(participants.records) - subjects_with_data, key=natural_key)
    if no_data:
        log.info("participants without data (no row): %s", ", ".join(map(shown, no_data)))
    empty = {p: None for p in participants.columns}
    rows = [
        Row(
            subject_id=sub,
            session_id=ses,
            cells=cells[(sub, ses)],
            phenotype=participants.records.get(sub, empty),
        )
        for sub, ses in keys
    ]
    broken = [f.relpath for r in rows for f in r.files if f.broken_link]
    if broken:
        warnings.append(
            f"{len(broken)} file(s) are broken symlinks (annexed content not fetched; "
            f"run `datalad get` or `git annex get` on them): "
            + ", ".join(map(shown, broken[:20]))
            + (" …" if len(broken) > 20 else "")
        )
    resolver = SidecarResolver(root, jsons)
    sidecars = {f.relpath: resolver.resolve(f) for r in rows for f in r.files}
    warnings.extend(resolver.warnings)
    for w in warnings:
        log.info(w)  # returned to the caller, who shows them (CLI summary, Dagster log)
    return BidsIndex(
        root=root,
        description=description,
        row=row,
        columns=rules,
        rows=rows,
        participants=participants,
        sidecars=sidecars,
        warnings=warnings,
    )
