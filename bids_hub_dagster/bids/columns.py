"""Column rules: which BIDS files fill which dataset column, and how to infer them."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .entities import load_schema, typed_value
from .errors import BidsError, shown
from .layout import BidsFile

#: Keys of a column rule that are not entity filters.
RULE_KEYS = frozenset({"datatype", "suffix", "scope", "many", "extension"})
#: ``datatype``/``suffix`` value meaning "the file has none" (``null`` in a spec).
ABSENT = ""
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ColumnRule:
    """Selects, per row, the files of one dataset column.

    ``entities`` maps an entity's short key (``acq``, ``run``, ``desc`` ...) to the
    values allowed; ``None`` among them allows the entity to be absent. ``datatype`` and
    ``suffix`` of ``None`` match anything; :data:`ABSENT` (``null`` in YAML) matches
    files that have none (e.g. a file directly in ``sub-01/``).
    """

    name: str
    datatype: str | None = None
    suffix: str | None = None
    scope: str = ""
    many: bool = False
    extension: str | None = None
    entities: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, name: str, raw: Mapping[str, Any]) -> ColumnRule:
        """Build a rule from its spec mapping, e.g. ``{datatype: anat, suffix: T1w, acq: mprage}``."""
        if not COLUMN_NAME.match(name):
            raise BidsError(f"column name {name!r} must be an identifier (letters, digits, _).")
        if not isinstance(raw, Mapping):
            raise BidsError(f"column {name!r} must be a mapping of filters, not {raw!r}.")
        schema = load_schema()
        entities: dict[str, tuple[str | None, ...]] = {}
        for key, value in raw.items():
            if key in RULE_KEYS:
                continue
            info = schema.entity(str(key))
            if info is None:
                known = ", ".join(e.key for e in schema.entities)
                raise BidsError(
                    f"column {name!r}: {key!r} is not a BIDS entity. Filters are datatype, suffix, scope, "
                    f"many, extension, or an entity: {known}."
                )
            values = value if isinstance(value, list) else [value]
            entities[info.key] = tuple(None if v is None else str(v) for v in values)
        datatype = _optional(raw, "datatype")
        if datatype not in (None, ABSENT) and datatype not in schema.datatypes:
            raise BidsError(
                f"column {name!r}: datatype {datatype!r} is not a BIDS datatype ({', '.join(sorted(schema.datatypes))})."
            )
        scope = str(raw.get("scope") or "").strip("/")
        if scope and (scope.startswith("..") or "/../" in f"/{scope}/"):
            raise BidsError(f"column {name!r}: scope {scope!r} must be a folder inside the BIDS root.")
        many = raw.get("many", False)
        if not isinstance(many, bool):
            raise BidsError(f"column {name!r}: many must be true or false, not {many!r}.")
        return cls(
            name=name,
            datatype=datatype,
            suffix=_optional(raw, "suffix"),
            scope=scope,
            many=many,
            extension=_optional(raw, "extension") or None,
            entities=entities,
        )

    def to_mapping(self) -> dict[str, Any]:
        """The spec mapping of this rule (inverse of :meth:`from_mapping`)."""
        out: dict[str, Any] = {}
        if self.scope:
            out["scope"] = self.scope
        for key in ("datatype", "suffix"):
            value = getattr(self, key)
            if value is not None:
                out[key] = None if value == ABSENT else value
        for key, values in self.entities.items():
            out[key] = values[0] if len(values) == 1 else list(values)
        if self.extension:
            out["extension"] = self.extension
        if self.many:
            out["many"] = True
        return out

    def matches(self, file: BidsFile) -> bool:
        if file.scope != self.scope:
            return False
        if self.datatype is not None and (file.datatype or ABSENT) != self.datatype:
            return False
        if self.suffix is not None and (file.suffix or ABSENT) != self.suffix:
            return False
        if self.extension is not None and file.name.extension != self.extension:
            return False
        for key, allowed in self.entities.items():
            value = file.name.entities.get(key)
            if value is None:
                if None not in allowed:
                    return False
                continue
            typed = typed_value(key, value)
            if not any(a is not None and typed_value(key, a) == typed for a in allowed):
                return False
        return True


def _optional(raw: Mapping[str, Any], key: str) -> str | None:
    """A filter value: missing → None (any); explicit null → ABSENT (none); else the string."""
    if key not in raw:
        return None
    value = raw[key]
    if value is None:
        return ABSENT
    if isinstance(value, (list, tuple, dict)):
        raise BidsError(f"{key} takes one value, not {value!r}: make one column per {key}.")
    return str(value)


def row_key(file: BidsFile, row: str) -> tuple[str, str | None]:
    """The row a file belongs to: ``(sub-XX, ses-YY | None)``; per subject, session is None."""
    sub = f"sub-{file.subject}"
    if row == "subject" or file.session is None:
        return sub, None
    return sub, f"ses-{file.session}"


def infer_columns(files: Iterable[BidsFile], row: str) -> list[ColumnRule]:
    """One column per (datatype, suffix) pair found among the raw tree's NIfTI files.

    Named by the lower-cased suffix, prefixed with the datatype where a suffix occurs in
    two datatypes; ``many`` where any row holds more than one matching file. Every raw
    NIfTI file lands in exactly one column.

    One image saved twice, as ``.nii`` and as ``.nii.gz``, is an error naming both: it would
    silently make its column hold a list.
    """
    files = list(files)
    _refuse_duplicate_extensions(files)
    pairs: dict[tuple[str | None, str | None], Counter[tuple[str, str | None]]] = defaultdict(Counter)
    for f in files:
        if f.scope == "" and f.subject is not None:
            pairs[(f.datatype, f.suffix)][row_key(f, row)] += 1
    datatypes_per_suffix: dict[str | None, set[str | None]] = defaultdict(set)
    for datatype, suffix in pairs:
        datatypes_per_suffix[suffix].add(datatype)
    rules: list[ColumnRule] = []
    taken: set[str] = set()
    for (datatype, suffix), per_row in sorted(pairs.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        base = _identifier((suffix or "file").lower())
        name = base if len(datatypes_per_suffix[suffix]) == 1 else f"{datatype or 'nodatatype'}_{base}"
        if name in taken or name in ("subject_id", "session_id"):
            name = f"{datatype or 'nodatatype'}_{base}"
        taken.add(name)
        rules.append(
            ColumnRule(
                name=name,
                datatype=datatype or ABSENT,
                suffix=suffix or ABSENT,
                many=max(per_row.values()) > 1,
            )
        )
    return rules


def _refuse_duplicate_extensions(files: list[BidsFile]) -> None:
    by_stem: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if f.scope == "" and f.is_nifti:
            by_stem[f.relpath[: -len(f.name.extension)]].append(f.relpath)
    dupes = sorted(paths for paths in by_stem.values() if len(paths) > 1)
    if dupes:
        first = sorted(dupes[0])
        more = f" ({len(dupes) - 1} more image(s) are saved twice likewise)" if len(dupes) > 1 else ""
        raise BidsError(
            f"{shown(first[0])} and {shown(first[1])} are one image saved twice, as .nii and as .nii.gz; "
            f"remove one of them{more}."
        )


def _identifier(text: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return ident if COLUMN_NAME.match(ident) else f"c_{ident}"
