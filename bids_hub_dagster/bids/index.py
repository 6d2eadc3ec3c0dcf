"""The BIDS index: one row per session (or subject), its files per column, its phenotype."""

from __future__ import annotations

import functools
import gc
import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .columns import ABSENT, ColumnRule, infer_columns, row_key
from .companions import (
    CompanionFinder,
    lift_type,
    nifti_volumes,
    read_all_scans,
    read_all_sessions,
    read_events,
    read_gradients,
    read_tsv,
)
from .entities import distinguishing_entities, entity_sort_key, name_keys, natural_key
from .errors import AmbiguousColumnError, BidsError, shown
from .layout import BidsFile, read_dataset_description, scan
from .participants import Participants, read_participants
from .privacy import PrivacyPolicy, PrivacyReport, run_gate, strip_sidecar
from .sidecars import SidecarResolver

log = logging.getLogger(__name__)

RowKey = tuple[str, str | None]  # (subject_id, session_id): one row of the dataset; session None per subject
RESERVED_NAMES = frozenset({"subject_id", "session_id"})
SKIPPED_LISTED = 200  # skipped files named in the index's validation record (all are counted)


@dataclass(frozen=True)
class Companions:
    """Which companion column families the index carries beside each NIfTI column (all by default).

    ``sidecar`` (``C_sidecar``), ``entities`` (``C_entities``), ``events`` (``C_events``),
    ``gradients`` (``C_bval``/``C_bvec``) and ``sessions`` (the sessions.tsv columns).
    """

    sidecar: bool = True
    entities: bool = True
    events: bool = True
    gradients: bool = True
    sessions: bool = True

    FAMILIES = ("sidecar", "entities", "events", "gradients", "sessions")

    @classmethod
    def from_mapping(cls, raw: object) -> Companions:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise BidsError(
                f"companions must be a mapping of {', '.join(cls.FAMILIES)} to true/false, not {raw!r}."
            )
        unknown = sorted(set(raw) - set(cls.FAMILIES))
        if unknown:
            raise BidsError(f"companions: unknown key(s) {unknown}; known: {', '.join(cls.FAMILIES)}.")
        bad = {k: v for k, v in raw.items() if not isinstance(v, bool)}
        if bad:
            raise BidsError(f"companions: values must be true or false, not {bad}.")
        return cls(**raw)

    def to_mapping(self) -> dict[str, bool]:
        """The families turned off (the defaults are left out)."""
        return {k: False for k in self.FAMILIES if not getattr(self, k)}


@dataclass(frozen=True)
class SessionColumns:
    """The sessions.tsv columns a dataset carries: their types (as published) and descriptions."""

    columns: dict[str, str]
    descriptions: dict[str, str]


@dataclass
class Row:
    """One row of the dataset: its id, its files per column, and its phenotype."""

    subject_id: str
    session_id: str | None
    cells: dict[str, list[BidsFile]]
    phenotype: dict[str, Any]
    sessions: dict[str, Any] = field(default_factory=dict)  # the row's sessions.tsv values (row: session)

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
    sidecars: dict[str, dict[str, Any] | None]  # relpath -> merged sidecar (inheritance applied), None: none
    warnings: list[str] = field(default_factory=list)
    file_companions: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # relpath -> events/bval/bvec/scans
    session_columns: SessionColumns = field(default_factory=lambda: SessionColumns({}, {}))
    companion_families: dict[str, list[str]] = field(default_factory=dict)  # column -> families it carries
    field_types: dict[str, dict[str, str]] = field(default_factory=dict)  # column -> lifted field -> kind
    scans_types: dict[str, str] = field(default_factory=dict)  # published scans.tsv column -> kind
    validation: dict[str, Any] = field(default_factory=dict)  # counts and skipped files, for the summary
    privacy: dict[str, Any] = field(default_factory=dict)  # the privacy gate's report (JSON form)
    privacy_report: PrivacyReport | None = None  # the same, to print or refuse with; None: no gate ran

    def files_per_column(self) -> dict[str, int]:
        return {c.name: sum(len(r.cells[c.name]) for r in self.rows) for c in self.columns}

    def bytes_per_column(self) -> dict[str, int]:
        return {c.name: sum(f.size for r in self.rows for f in r.cells[c.name]) for c in self.columns}

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject_id for r in self.rows}, key=natural_key)

    def validation_lines(self) -> list[str]:
        """The validation summary, a line each: files indexed, skipped (with reasons), rows, columns, privacy."""
        v = self.validation
        lines = [
            f"files indexed  {v.get('files_indexed', 0)} of {v.get('files_found', 0)} NIfTI files found",
            f"skipped        {v.get('skipped', 0)} (names the BIDS schema does not allow)",
        ]
        lines += [f"  {shown(s['file'])}: {s['reason']}" for s in v.get("skipped_files", [])[:20]]
        if v.get("skipped", 0) > 20:
            lines.append(f"  … and {v['skipped'] - 20} more")
        lines.append(f"rows           {v.get('rows', len(self.rows))}")
        lines.append(f"columns        {v.get('columns', len(self.columns))} NIfTI columns")
        if self.privacy_report is not None:
            lines.append(f"privacy        {self.privacy_report.summary_line().removeprefix('privacy: ')}")
        return lines

    @property
    def sessions(self) -> int:
        return len({(r.subject_id, r.session_id) for r in self.rows if r.session_id is not None})


def _row_sort_key(key: RowKey) -> tuple[Any, ...]:
    sub, ses = key
    return (natural_key(sub), () if ses is None else natural_key(ses))


_Buckets = dict[tuple[str, str, str], list[tuple[int, BidsFile]]]


def _buckets(files: list[BidsFile]) -> _Buckets:
    """The files by (scope, datatype, suffix), each with its place in ``files``: a column rule then
    looks only at the buckets its scope, datatype and suffix allow."""
    out: _Buckets = defaultdict(list)
    for i, f in enumerate(files):
        out[(f.scope, f.datatype or ABSENT, f.suffix or ABSENT)].append((i, f))
    return out


def _candidates(rule: ColumnRule, buckets: _Buckets) -> list[BidsFile]:
    """The files ``rule`` may match (a superset: :meth:`ColumnRule.matches` decides), in scan order."""
    picked = [
        bucket
        for (scope, datatype, suffix), bucket in buckets.items()
        if scope == rule.scope and rule.datatype in (None, datatype) and rule.suffix in (None, suffix)
    ]
    if len(picked) == 1:
        return [f for _, f in picked[0]]
    return [f for _, f in heapq.merge(*picked, key=lambda pair: pair[0])]


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


def _gc_paused(fn: Callable[..., BidsIndex]) -> Callable[..., BidsIndex]:
    """Run ``fn`` with Python's cyclic garbage collector paused (then as it was).

    Indexing builds hundreds of thousands of small, acyclic objects (file records, names,
    sidecar dicts), all kept: each full collection walks all of them and frees nothing. On a
    100,000-file tree those collections were half of the indexing time. Reference counting
    still frees everything as usual; the collector runs again once the index is built.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> BidsIndex:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@_gc_paused
def build_index(
    root: Path | str,
    columns: Sequence[ColumnRule] | None = None,
    row: str = "session",
    phenotype: Sequence[str] | None = None,
    *,
    companions: Companions | None = None,
    fields: Mapping[str, Sequence[str]] | None = None,
    scans_columns: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    follow_external_symlinks: bool = False,
    privacy: PrivacyPolicy | None = None,
    public_hub: bool | None = None,
    gate: bool = True,
) -> BidsIndex:
    """Index a BIDS folder for one dataset.

    Args:
        root: the BIDS dataset folder (holding ``dataset_description.json``).
        columns: the column rules; ``None`` infers one per (datatype, suffix) found.
        row: ``"session"`` (one row per subject and session) or ``"subject"``.
        phenotype: participants.tsv columns to keep; ``None`` keeps all.
        companions: the companion column families carried (all by default).
        fields: per column, sidecar fields lifted to typed columns ``C_<Field>``.
        scans_columns: scans.tsv columns published beside each file (none by default).
        rename: sessions.tsv column -> published name (a clash with a phenotype column).
        follow_external_symlinks: index files whose symlinks resolve outside ``root``.
        privacy: strip what this policy says from the published sidecars and tables, and
            run the privacy gate under it (None: neither); the report is the index's
            ``privacy_report`` (the caller refuses to publish when it blocks).
        public_hub: whether the destination is a public Hub repo, for the defacing
            affirmation (None: no destination, not checked).
        gate: run the gate's scan (it reads every NIfTI header); False only strips, for
            callers that compare with a publication already gated (verify, observations).

    Returns:
        The index: rows sorted by subject and session (numbers numerically), files per
        column in entity order, typed phenotype, merged sidecars, and warnings.
    """
    root = Path(root).resolve()
    if row not in ("session", "subject"):
        raise BidsError(f"row must be 'session' or 'subject', not {row!r}.")
    description = read_dataset_description(root)
    scopes = [""] + sorted({c.scope for c in columns or () if c.scope})
    scanned = scan(root, scopes, follow_external_symlinks=follow_external_symlinks)
    files, jsons, others = scanned.files, scanned.jsons, scanned.other
    warnings: list[str] = scanned.warnings()  # files skipped: their names are not BIDS
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
    buckets = _buckets(files)
    for rule in rules:
        assigned = _assign(rule, _candidates(rule, buckets), row)
        if not assigned:
            where = f" in {shown(rule.scope)}" if rule.scope else ""
            warnings.append(
                f"column {rule.name!r} matches no file{where}: check its filters ({rule.to_mapping()})."
            )
        for key, matched in assigned.items():
            cells[key][rule.name] = matched

    participants = read_participants(root).select(list(phenotype) if phenotype is not None else None)
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
    json_keys = name_keys(jsons)  # filed by both the sidecar resolver and the companion finder
    resolver = SidecarResolver(root, jsons, json_keys)
    sidecars = {
        f.relpath: resolver.resolve(f) if resolver.sources(f) else None for r in rows for f in r.files
    }
    warnings.extend(resolver.warnings)
    families = companions or Companions()
    found = _read_companions(
        root, rows, rules, families, CompanionFinder(root, [*jsons, *others], json_keys), warnings
    )
    field_types = _lift_types(rules, rows, sidecars, fields or {})
    scans_types = _scans(root, rows, scans_columns, found, warnings)
    sessions = _sessions(root, rows, row, families, participants, rename or {}, warnings)
    companion_families = {
        rule.name: [
            family
            for family, on in (
                ("sidecar", families.sidecar),
                ("entities", families.entities),
                ("events", rule.name in found.events),
                ("gradients", rule.name in found.gradients),
            )
            if on
        ]
        for rule in rules
    }
    report = None
    if privacy is not None and rename:  # a sessions column renamed by the spec answers to both names
        privacy = privacy.with_aliases(rename)
    if privacy is not None and gate:
        report = run_gate(
            root,
            _published_sidecars(resolver.read_sources(rows), families, fields or {}),
            [f.relpath for r in rows for f in r.files if not f.broken_link],
            _published_tables(root, rows, participants, sessions, scans_types, rename or {})
            + [(rel, header, cells) for rel, (header, cells) in sorted(found.events_files.items())],
            privacy,
            destination_is_public_hub=public_hub,
        )
    if privacy is not None and privacy.strip:
        sidecars = {rel: None if s is None else strip_sidecar(s, privacy) for rel, s in sidecars.items()}
        participants = participants.select([c for c in participants.columns if not privacy.strips(c)])
        for r in rows:
            r.phenotype = {c: r.phenotype.get(c) for c in participants.columns}
        sessions, scans_types = _strip_tables(rows, sessions, scans_types, found, privacy)
    _check_names(rules, companion_families, field_types, scans_types, participants, sessions)
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
        file_companions=found.files,
        session_columns=sessions,
        companion_families=companion_families,
        field_types=field_types,
        scans_types=scans_types,
        validation={
            "files_found": len(files),
            "files_indexed": sum(len(r.files) for r in rows),
            "skipped": len(scanned.skipped),
            "skipped_files": [{"file": rel, "reason": why} for rel, why in scanned.skipped[:SKIPPED_LISTED]],
            "rows": len(rows),
            "columns": len(rules),
        },
        privacy=report.to_json() if report is not None else {},
        privacy_report=report,
    )


@dataclass
class _Found:
    """Companions found per file, and the columns that have any of each kind."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    gradients: set[str] = field(default_factory=set)
    events_files: dict[str, tuple[list[str], list[list[str]]]] = field(default_factory=dict)  # as written


def _read_companions(
    root: Path,
    rows: list[Row],
    rules: list[ColumnRule],
    families: Companions,
    finder: CompanionFinder,
    warnings: list[str],
) -> _Found:
    """Each file's events and gradients (bval/bvec checked against its volume count)."""
    found = _Found()
    if not (families.events or families.gradients):
        return found
    without: list[str] = []  # dwi images no .bval/.bvec applies to
    for row in rows:
        for column, files in row.cells.items():
            for f in files:
                extra: dict[str, Any] = {}
                if families.events and (events := read_events(root, f, finder)) is not None:
                    extra["events"] = events.records
                    found.events.add(column)
                    header = list(events.columns)
                    found.events_files[events.path] = (
                        header,
                        [[t.get(c) or "n/a" for c in header] for t in events.texts],
                    )
                    warnings.extend(events.warnings)
                if families.gradients and f.datatype == "dwi" and not f.broken_link:
                    try:
                        volumes: int | None = nifti_volumes(f.path)
                    except BidsError:  # an unreadable image: its shard's file check names it
                        volumes = None
                    gradients = read_gradients(root, f, finder, volumes)
                    if gradients is not None:
                        extra["bval"], extra["bvec"] = gradients
                        found.gradients.add(column)
                    else:
                        without.append(f.relpath)
                if extra:
                    found.files[f.relpath] = extra
    if without:
        warnings.append(
            f"{len(without)} dwi image(s) have no .bval/.bvec (their gradients are published as null): "
            + ", ".join(map(shown, without[:20]))
            + (" …" if len(without) > 20 else "")
        )
    return found


def _lift_types(
    rules: list[ColumnRule],
    rows: list[Row],
    sidecars: Mapping[str, dict[str, Any] | None],
    fields: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, str]]:
    """Per column, the type of each lifted sidecar field (the BIDS schema's, as the values use it)."""
    names = {r.name for r in rules}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise BidsError(f"fields are given for column(s) {unknown} that the spec does not have.")
    out: dict[str, dict[str, str]] = {}
    for column, wanted in fields.items():
        values: dict[str, list[Any]] = {name: [] for name in wanted}
        for row in rows:
            for f in row.cells[column]:
                sidecar = sidecars.get(f.relpath) or {}
                for name in wanted:
                    if sidecar.get(name) is not None:
                        values[name].append(sidecar[name])
        out[column] = {name: lift_type(name, values[name]) for name in wanted}
    return out


def _scans(
    root: Path, rows: list[Row], wanted: Sequence[str], found: _Found, warnings: list[str]
) -> dict[str, str]:
    """The scans.tsv columns the spec names, as a record per file; their types."""
    if not wanted:
        return {}
    scans = read_all_scans(root, sorted({r.subject_id for r in rows}, key=natural_key))
    warnings.extend(scans.warnings)
    missing = [c for c in wanted if c not in scans.columns]
    if missing:
        have = ", ".join(map(shown, scans.columns)) or "none (no scans.tsv found)"
        raise BidsError(f"scans_columns {missing} are not in the scans.tsv files (their columns: {have}).")
    for row in rows:
        for f in row.files:
            record = scans.records.get(f.relpath)
            if record is not None:
                found.files.setdefault(f.relpath, {})["scans"] = {c: record.get(c) for c in wanted}
    return {c: scans.columns[c] for c in wanted}


def _sessions(
    root: Path,
    rows: list[Row],
    row_unit: str,
    families: Companions,
    participants: Participants,
    rename: Mapping[str, str],
    warnings: list[str],
) -> SessionColumns:
    """The sessions.tsv columns as row columns (``row: session`` only), renamed as the spec says."""
    if not families.sessions or row_unit != "session":
        if rename:
            raise BidsError(
                "rename applies to sessions.tsv columns, which are carried with row: session only."
            )
        return SessionColumns({}, {})
    tables = read_all_sessions(root, sorted({r.subject_id for r in rows}, key=natural_key))
    columns: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for table in tables.values():
        columns.update(table.columns)
        descriptions.update(table.descriptions)
        warnings.extend(table.warnings)
    unknown = sorted(set(rename) - set(columns))
    if unknown:
        have = ", ".join(map(shown, columns)) or "none"
        raise BidsError(
            f"rename names sessions.tsv column(s) {unknown} that no sessions.tsv has (columns: {have})."
        )
    published: dict[str, str] = {}
    for c in columns:
        name = rename.get(c, c)
        if name in RESERVED_NAMES and c not in rename:
            name = f"sessions_{c}"
            warnings.append(
                f"sessions.tsv column {c!r} is published as {name!r}: {c} names the row id; choose another "
                f"name with `rename: {{{c}: <name>}}` in the spec"
            )
        published[name] = c
    clash = sorted(n for n in published if n in participants.columns)
    if clash:
        old = published[clash[0]]
        raise BidsError(
            f"sessions.tsv column(s) {clash} clash with participants.tsv columns of the same name; "
            f"rename the sessions column in the spec, e.g. `rename: {{{old}: session_{old}}}`."
        )
    for row in rows:
        table = tables.get(row.subject_id)
        record = table.records.get(row.session_id or "", {}) if table is not None else {}
        row.sessions = {new: record.get(old) for new, old in published.items()}
    on_disk = {(r.subject_id, r.session_id) for r in rows}
    unused = sorted(
        f"{sub}/{ses}" for sub, t in tables.items() for ses in t.records if (sub, ses) not in on_disk
    )
    if unused:
        warnings.append(
            f"{len(unused)} sessions.tsv row(s) name a session with no row of data (not published): "
            + ", ".join(map(shown, unused[:20]))
            + (" …" if len(unused) > 20 else "")
        )
    return SessionColumns(
        {new: columns[old] for new, old in published.items()},
        {new: descriptions[old] for new, old in published.items() if old in descriptions},
    )


def _check_names(
    rules: list[ColumnRule],
    families: Mapping[str, list[str]],
    field_types: Mapping[str, Mapping[str, str]],
    scans_types: Mapping[str, str],
    participants: Participants,
    sessions: SessionColumns,
) -> None:
    """Every published column name once: a companion may not shadow a column, a field or a table column."""
    seen: dict[str, str] = {"subject_id": "the row id", "session_id": "the row id"}

    def claim(name: str, what: str) -> None:
        if name in seen:
            raise BidsError(
                f"two published columns would be named {name!r}: {seen[name]} and {what}; rename a column "
                "in the spec (columns, fields or rename) so that every name is distinct."
            )
        seen[name] = what

    suffixes = {
        "sidecar": ["_sidecar"],
        "entities": ["_entities"],
        "events": ["_events"],
        "gradients": ["_bval", "_bvec"],
    }
    for rule in rules:
        claim(rule.name, f"NIfTI column {rule.name!r}")
    for rule in rules:
        for family in families.get(rule.name, []):
            for suffix in suffixes[family]:
                claim(rule.name + suffix, f"the {family} of column {rule.name!r}")
        for name in field_types.get(rule.name, {}):
            claim(f"{rule.name}_{name}", f"sidecar field {name!r} of column {rule.name!r}")
        for name in scans_types:
            claim(f"{rule.name}_{name}", f"scans.tsv column {name!r} of column {rule.name!r}")
    for name in participants.columns:
        claim(name, f"participants.tsv column {name!r}")
    for name in sessions.columns:
        claim(name, f"sessions.tsv column {name!r}")


def _published_sidecars(
    sources: Sequence[tuple[str, dict[str, Any] | None]],
    families: Companions,
    fields: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, Any]]:
    """The sidecar keys that would be published, per source file: all of them with the sidecar
    columns on, else only the fields the spec lifts into columns of their own."""
    if families.sidecar:
        return {rel: data for rel, data in sources if data}
    lifted = {name for wanted in fields.values() for name in wanted}
    kept = {rel: {k: v for k, v in data.items() if k in lifted} for rel, data in sources if data}
    return {rel: data for rel, data in kept.items() if data}


def _published_tables(
    root: Path,
    rows: list[Row],
    participants: Participants,
    sessions: SessionColumns,
    scans_types: Mapping[str, str],
    rename: Mapping[str, str],
) -> list[tuple[str, list[str], list[list[str]]]]:
    """The table columns that would be published, as written (relpath, header, rows), for the gate.

    participants.tsv's published phenotype, each subject's sessions.tsv columns (row:
    session) and the scans.tsv columns the spec names; a column that is not published
    cannot leak, so it is not scanned.
    """
    out: list[tuple[str, list[str], list[list[str]]]] = []

    def project(rel: str, wanted: Sequence[str]) -> None:
        if not wanted or not (root / rel).is_file():
            return
        table = read_tsv(root / rel, where=rel)
        cols = [c for c in wanted if c in table.columns]
        if cols:
            out.append((rel, cols, [[t.get(c) or "n/a" for c in cols] for t in table.texts]))

    project("participants.tsv", list(participants.columns))
    subjects = sorted({r.subject_id for r in rows}, key=natural_key)
    original = {new: old for old, new in rename.items()}
    session_cols = [original.get(c, c) for c in sessions.columns]
    for sub in subjects:
        project(f"{sub}/{sub}_sessions.tsv", session_cols)
    if scans_types:
        folders = {f.relpath.rsplit("/", 2)[0] for r in rows for f in r.files if f.scope == ""}
        for folder in sorted(folders):
            parts = folder.split("/")
            if parts[0].startswith("sub-"):
                stem = "_".join(p for p in parts if p.startswith(("sub-", "ses-")))
                project(f"{folder}/{stem}_scans.tsv", list(scans_types))
    return out


def _strip_tables(
    rows: list[Row],
    sessions: SessionColumns,
    scans_types: dict[str, str],
    found: _Found,
    privacy: PrivacyPolicy,
) -> tuple[SessionColumns, dict[str, str]]:
    """Sessions and scans columns without those the privacy policy strips."""
    kept = {c: t for c, t in sessions.columns.items() if not privacy.strips(c)}
    for r in rows:
        r.sessions = {c: r.sessions.get(c) for c in kept}
    scans = {c: t for c, t in scans_types.items() if not privacy.strips(c)}
    for extra in found.files.values():
        if "scans" in extra:
            extra["scans"] = {c: v for c, v in extra["scans"].items() if c in scans}
        if extra.get("events"):  # events columns the policy strips leave every record
            extra["events"] = [{c: v for c, v in e.items() if not privacy.strips(c)} for e in extra["events"]]
    descriptions = {c: d for c, d in sessions.descriptions.items() if c in kept}
    return SessionColumns(kept, descriptions), scans
