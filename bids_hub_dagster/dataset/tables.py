"""The BIDS index as an Arrow table, and the typed ``datasets.Dataset`` made from it.

The index table has one row per dataset row: ``subject_id``, ``session_id``, one column
of relative paths per dataset column (a string, or a list of strings for ``many``
columns), the typed phenotype and sessions.tsv columns, and ``_bids_files``: every file
of the row with its column, size, mtime, entities, merged JSON sidecar and companions
(events, bval/bvec, scans.tsv record). What the index knows beyond the rows (root,
columns, types, dataset_description) travels in the schema metadata, so the table alone
is enough to rebuild the dataset.

Beside each NIfTI column ``C`` the dataset carries its companion columns, named so that
users, docs and checks can rely on them (one more ``List`` level for a ``many`` column,
aligned element for element with ``C``):

- ``C_sidecar``   ``Json()``: the merged sidecar (BIDS inheritance), null without one
- ``C_entities``  ``Json()``: the entities as the file name spells them (``"run": "02"``)
- ``C_events``    ``List(Json())``: the typed records of the file's ``_events.tsv``
- ``C_bval``      ``List(float64)``; ``C_bvec`` ``List(List(float64))`` (3 × N), dwi files
- ``C_<Field>``   a typed sidecar field the spec lifts (``fields: [RepetitionTime]``)
- ``C_<column>``  a scans.tsv column the spec names (``scans_columns: [...]``)
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, Features, Json, List, Nifti, Value
from datasets.features.features import get_nested_type
from datasets.table import InMemoryTable

from ..bids.index import BidsIndex

META_KEY = b"bids_hub_dagster"
FILES_COLUMN = "_bids_files"
ID_COLUMNS = ("subject_id", "session_id")

_PA_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
FILE_STRUCT = pa.struct(
    [
        ("column", pa.string()),
        ("relpath", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("broken_link", pa.bool_()),
        ("entities", pa.string()),
        ("sidecar", pa.string()),  # JSON, null when no sidecar applies
        ("events", pa.string()),  # JSON list of records, null without an events file
        ("bval", pa.string()),  # JSON list, null without gradients
        ("bvec", pa.string()),  # JSON 3 x N lists
        ("scans", pa.string()),  # JSON record of the published scans.tsv columns, or null
    ]
)
#: companion column name of NIfTI column ``C``: family -> suffix
COMPANION_SUFFIXES = {"sidecar": "_sidecar", "entities": "_entities", "events": "_events"}
_KIND_FEATURES = {"string": "string", "int64": "int64", "float64": "float64", "bool": "bool"}


@dataclass(frozen=True)
class IndexInfo:
    """What the index table's schema metadata says about the dataset."""

    root: Path
    row: str
    columns: dict[str, bool]  # column name -> many
    phenotype: dict[str, str]  # phenotype column -> type name
    phenotype_descriptions: dict[str, str]
    description: dict[str, Any]  # dataset_description.json
    warnings: list[str]
    companions: dict[str, list[str]] = field(default_factory=dict)  # column -> families carried
    fields: dict[str, dict[str, str]] = field(default_factory=dict)  # column -> lifted field -> kind
    scans: dict[str, str] = field(default_factory=dict)  # published scans.tsv column -> kind
    sessions: dict[str, str] = field(default_factory=dict)  # sessions.tsv column (as published) -> kind
    session_descriptions: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # what indexing checked (counts, skipped)
    privacy: dict[str, Any] = field(default_factory=dict)  # the privacy gate's report
    preview: bool = False  # shards also make the preview config

    @classmethod
    def of(cls, table: pa.Table) -> IndexInfo:
        meta = (table.schema.metadata or {}).get(META_KEY)
        if meta is None:
            raise ValueError("this table is not a bids_hub_dagster index (no schema metadata).")
        raw = json.loads(meta)
        return cls(
            root=Path(raw["root"]),
            row=raw["row"],
            columns=raw["columns"],
            phenotype=raw["phenotype"],
            phenotype_descriptions=raw.get("phenotype_descriptions", {}),
            description=raw.get("description", {}),
            warnings=raw.get("warnings", []),
            companions=raw.get("companions", {}),
            fields=raw.get("fields", {}),
            scans=raw.get("scans", {}),
            sessions=raw.get("sessions", {}),
            session_descriptions=raw.get("session_descriptions", {}),
            validation=raw.get("validation", {}),
            privacy=raw.get("privacy", {}),
            preview=bool(raw.get("preview", False)),
        )

    def companion_features(self, name: str, many: bool) -> dict[str, Any]:
        """The companion columns of NIfTI column ``name``: column name -> feature, in order."""
        out: dict[str, Any] = {}
        families = self.companions.get(name, [])

        def shaped(feature: Any) -> Any:
            return List(feature) if many else feature

        if "sidecar" in families:
            out[f"{name}_sidecar"] = shaped(Json())
        if "entities" in families:
            out[f"{name}_entities"] = shaped(Json())
        if "events" in families:
            out[f"{name}_events"] = shaped(List(Json()))
        if "gradients" in families:
            out[f"{name}_bval"] = shaped(List(Value("float64")))
            out[f"{name}_bvec"] = shaped(List(List(Value("float64"))))
        for field_name, kind in self.fields.get(name, {}).items():
            out[f"{name}_{field_name}"] = shaped(Json() if kind == "json" else Value(kind))
        for column, kind in self.scans.items():
            out[f"{name}_{column}"] = shaped(Value(kind))
        return out

    def features(self) -> Features:
        """The HF features: ids, one ``Nifti()``/``List(Nifti())`` per column, typed phenotype."""
        feats: dict[str, Any] = {"subject_id": Value("string"), "session_id": Value("string")}
        for name, many in self.columns.items():
            feats[name] = List(Nifti()) if many else Nifti()
            feats.update(self.companion_features(name, many))
        for name, kind in self.phenotype.items():
            feats[name] = Value(kind)
        for name, kind in self.sessions.items():
            feats[name] = Value(kind)
        return Features(feats)


def nifti_columns(features: Features) -> dict[str, bool]:
    """The NIfTI columns of ``features``: ``{name: many}``, many when a cell holds a list of images.

    ``Nifti()`` gives False and ``List(Nifti())`` True; other columns (ids, phenotype)
    are left out. The one place that tells a NIfTI column and its shape from its feature.
    """
    out = {}
    for name, feature in features.items():
        if isinstance(feature, Nifti):
            out[name] = False
        elif isinstance(feature, List) and isinstance(feature.feature, Nifti):
            out[name] = True
    return out


def _json(value: Any) -> str | None:
    """JSON text of a value read from a BIDS file; NaN and infinities (which Python's json reads but
    JSON has not) become null, so every cell is valid JSON."""
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def index_to_table(index: BidsIndex, preview: bool = False) -> pa.Table:
    """The index as an Arrow table (see the module docstring for its layout).

    ``preview``: its shards also make the preview config (recorded, so that turning it on
    or off makes every shard stale).
    """
    many = {c.name: c.many for c in index.columns}
    data: dict[str, list[Any]] = {"subject_id": [], "session_id": []}
    for name in many:
        data[name] = []
    for name in index.participants.columns:
        data[name] = []
    for name in index.session_columns.columns:
        data[name] = []
    data[FILES_COLUMN] = []
    for row in index.rows:
        data["subject_id"].append(row.subject_id)
        data["session_id"].append(row.session_id)
        for name, is_many in many.items():
            rels = [f.relpath for f in row.cells[name]]
            data[name].append(rels if is_many else (rels[0] if rels else None))
        for name in index.participants.columns:
            data[name].append(row.phenotype.get(name))
        for name in index.session_columns.columns:
            data[name].append(row.sessions.get(name))
        records = []
        for col, files in row.cells.items():
            for f in files:
                extra = index.file_companions.get(f.relpath, {})
                records.append(
                    {
                        "column": col,
                        "relpath": f.relpath,
                        "size": f.size,
                        "mtime_ns": f.mtime_ns,
                        "broken_link": f.broken_link,
                        "entities": json.dumps(f.name.all_entities()),
                        "sidecar": _json(index.sidecars.get(f.relpath)),
                        "events": _json(extra.get("events")),
                        "bval": _json(extra.get("bval")),
                        "bvec": _json(extra.get("bvec")),
                        "scans": _json(extra.get("scans")),
                    }
                )
        data[FILES_COLUMN].append(records)
    fields = [pa.field("subject_id", pa.string()), pa.field("session_id", pa.string())]
    fields += [pa.field(n, pa.list_(pa.string()) if m else pa.string()) for n, m in many.items()]
    fields += [pa.field(n, _PA_TYPES[t]) for n, t in index.participants.columns.items()]
    fields += [pa.field(n, _PA_TYPES[t]) for n, t in index.session_columns.columns.items()]
    fields.append(pa.field(FILES_COLUMN, pa.list_(FILE_STRUCT)))
    meta = {
        "root": str(index.root),
        "row": index.row,
        "columns": many,
        "phenotype": index.participants.columns,
        "phenotype_descriptions": index.participants.descriptions,
        "description": index.description,
        "warnings": index.warnings,
        "companions": index.companion_families,
        "fields": index.field_types,
        "scans": index.scans_types,
        "sessions": index.session_columns.columns,
        "session_descriptions": index.session_columns.descriptions,
        "validation": index.validation,
        "privacy": index.privacy,
        "preview": preview,
    }
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})
    return pa.Table.from_pydict(data, schema=schema)


def row_sizes(table: pa.Table) -> list[int]:
    """Bytes of NIfTI files per row, from the sizes recorded at indexing (os.stat)."""
    files = table.column(FILES_COLUMN).to_pylist()
    return [sum(f["size"] for f in row) for row in files]


def _json_array(values: list[str | None]) -> pa.Array:
    """A ``Json()`` column from JSON texts (None → null): the arrow.json extension over strings."""
    return pa.ExtensionArray.from_storage(get_nested_type(Json()), pa.array(values, type=pa.string()))


def _companion_column(
    name: str,
    many: bool,
    feature_name: str,
    feature: Any,
    records: list[list[dict]],
    info: IndexInfo,
    parse: Callable[[str], Any],
) -> pa.Array:
    """One companion column for all rows, aligned with ``records``: per row, the index records
    of NIfTI column ``name``'s files. ``parse`` reads a record's JSON text (shared, cached)."""
    suffix = feature_name[len(name) + 1 :]
    leaf = feature.feature if many else feature
    events = suffix == "events"

    def cell(record: dict) -> Any:
        if suffix in ("sidecar", "entities"):  # stored as the JSON text the column holds
            return record[suffix]
        if events:
            raw = record["events"]
            return None if raw is None else [json.dumps(e) for e in parse(raw)]
        if suffix in ("bval", "bvec"):
            raw = record[suffix]
            return None if raw is None else parse(raw)
        source = record["sidecar"] if suffix in info.fields.get(name, {}) else record["scans"]
        value = None if source is None else parse(source).get(suffix)
        return json.dumps(value) if value is not None and isinstance(leaf, Json) else value

    values = [[cell(r) for r in rows] if many else (cell(rows[0]) if rows else None) for rows in records]
    if isinstance(leaf, Json) or events:  # lists (one level per many, one per events file) of JSON texts
        return _nested_json_lists(values, depth=int(many) + int(events))
    return pa.array(values, type=get_nested_type(feature))


def _nested_json_lists(values: list, depth: int) -> pa.Array:
    """Lists (``depth`` levels, nulls allowed at each) of JSON texts as lists of ``Json()``."""
    if depth == 0:
        return _json_array(values)
    offsets: list[int] = [0]
    mask = []
    flat: list = []
    for v in values:
        mask.append(v is None)
        flat.extend(v or [])
        offsets.append(len(flat))
    child = _nested_json_lists(flat, depth - 1)
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), child, mask=pa.array(mask, type=pa.bool_())
    )


def dataset_from_index(table: pa.Table) -> Dataset:
    """The typed dataset: NIfTI cells hold absolute paths, not bytes, until shards embed them."""
    info = IndexInfo.of(table)
    features = info.features()
    root = str(info.root)
    files = table.column(FILES_COLUMN).to_pylist()
    owner = {
        companion: (name, many)
        for name, many in info.columns.items()
        for companion in info.companion_features(name, many)
    }
    per_column = {name: [[f for f in row if f["column"] == name] for row in files] for name in info.columns}
    parse = functools.lru_cache(maxsize=None)(json.loads)  # a sidecar read once for all its columns
    arrays: dict[str, pa.Array] = {}
    for name in features:
        if name in owner:
            column, many = owner[name]
            arrays[name] = _companion_column(
                column, many, name, features[name], per_column[column], info, parse
            )
            continue
        col = table.column(name).combine_chunks()
        if name in info.columns:
            paths = col.to_pylist()
            if info.columns[name]:
                cells = [[{"bytes": None, "path": f"{root}/{p}"} for p in ps] for ps in paths]
            else:
                cells = [None if p is None else {"bytes": None, "path": f"{root}/{p}"} for p in paths]
            col = pa.array(cells, type=get_nested_type(features[name]))
        arrays[name] = col
    arrow = pa.Table.from_pydict(arrays, schema=features.arrow_schema)
    return Dataset(InMemoryTable(arrow))
