"""The BIDS index as an Arrow table, and the typed ``datasets.Dataset`` made from it.

The index table has one row per dataset row: ``subject_id``, ``session_id``, one column
of relative paths per dataset column (a string, or a list of strings for ``many``
columns), the typed phenotype, and ``_bids_files``: every file of the row with its
column, size, mtime, entities and merged JSON sidecar. What the index knows beyond the
rows (root, columns, phenotype types, dataset_description) travels in the schema
metadata, so the table alone is enough to rebuild the dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, Features, List, Nifti, Value
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
        ("sidecar", pa.string()),
    ]
)


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
        )

    def features(self) -> Features:
        """The HF features: ids, one ``Nifti()``/``List(Nifti())`` per column, typed phenotype."""
        feats: dict[str, Any] = {"subject_id": Value("string"), "session_id": Value("string")}
        for name, many in self.columns.items():
            feats[name] = List(Nifti()) if many else Nifti()
        for name, kind in self.phenotype.items():
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


def index_to_table(index: BidsIndex) -> pa.Table:
    """The index as an Arrow table (see the module docstring for its layout)."""
    many = {c.name: c.many for c in index.columns}
    data: dict[str, list[Any]] = {"subject_id": [], "session_id": []}
    for name in many:
        data[name] = []
    for name in index.participants.columns:
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
        data[FILES_COLUMN].append(
            [
                {
                    "column": col,
                    "relpath": f.relpath,
                    "size": f.size,
                    "mtime_ns": f.mtime_ns,
                    "broken_link": f.broken_link,
                    "entities": json.dumps(f.name.all_entities()),
                    "sidecar": json.dumps(index.sidecars.get(f.relpath, {})),
                }
                for col, files in row.cells.items()
                for f in files
            ]
        )
    fields = [pa.field("subject_id", pa.string()), pa.field("session_id", pa.string())]
    fields += [pa.field(n, pa.list_(pa.string()) if m else pa.string()) for n, m in many.items()]
    fields += [pa.field(n, _PA_TYPES[t]) for n, t in index.participants.columns.items()]
    fields.append(pa.field(FILES_COLUMN, pa.list_(FILE_STRUCT)))
    meta = {
        "root": str(index.root),
        "row": index.row,
        "columns": many,
        "phenotype": index.participants.columns,
        "phenotype_descriptions": index.participants.descriptions,
        "description": index.description,
        "warnings": index.warnings,
    }
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})
    return pa.Table.from_pydict(data, schema=schema)


def row_sizes(table: pa.Table) -> list[int]:
    """Bytes of NIfTI files per row, from the sizes recorded at indexing (os.stat)."""
    files = table.column(FILES_COLUMN).to_pylist()
    return [sum(f["size"] for f in row) for row in files]


def dataset_from_index(table: pa.Table) -> Dataset:
    """The typed dataset: NIfTI cells hold absolute paths, not bytes, until shards embed them."""
    info = IndexInfo.of(table)
    features = info.features()
    root = str(info.root)
    arrays: dict[str, pa.Array] = {}
    for name in features:
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
