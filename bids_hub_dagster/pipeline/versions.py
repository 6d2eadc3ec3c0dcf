"""Data versions: what each stage of a dataset was built from, as short stable hashes.

Two words, one idea each: a *fingerprint* hashes the source files as they are on disk
(paths, sizes, mtimes) — of one shard's rows (``ShardRows.fingerprint``, recorded in the
shard file) or of the whole index (:func:`index_fingerprint`, the watch sensor's cursor);
a *version* is what a built thing is recorded with and compared by — by Dagster to tell
what is stale, and by the refresh logic to decide what to rebuild:

- the *structure* of an index: its columns, their types and the dataset's metadata. It
  is the data version of ``bids_index`` and ``hf_dataset``, which every shard reads: what
  the rows hold is left out, so that a file changed, added or removed, or a session
  added, makes only the shards whose rows changed stale;
- the *plan* of a dataset: its structure and the planned row ranges, recorded with
  ``hf_dataset`` so a refresh knows when the shard size changed;
- the *layout* of rows: files per column, entities, sidecars, phenotype — everything
  but file sizes and mtimes;
- each *shard*: the layout of its rows and its files' sizes and mtimes; the data
  version of a ``hub_shards`` partition;
- the *fingerprint* of the whole index: layout and every file's size and mtime; it
  changes whenever anything the dataset is built from changes;
- a *publication*: the shard versions in order, plus the destination.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import pyarrow as pa

from ..dataset.shards import ShardPlan, shard_rows
from ..dataset.tables import FILES_COLUMN, META_KEY

_STATS = ("size", "mtime_ns")


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _type_name(t: pa.DataType) -> str:
    """A type's name without list item names (parquet stores ``list<item>`` as ``list<element>``)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in t) + ">"
    return str(t)


#: index metadata that reports on the sources rather than describing the data: warnings, what
#: validation skipped, the privacy gate's findings (a gate run or not gives the same table)
_REPORTS = ("warnings", "validation", "privacy")


def _described(index_table: pa.Table) -> dict:
    meta = json.loads((index_table.schema.metadata or {}).get(META_KEY, b"{}"))
    for key in _REPORTS:
        meta.pop(key, None)
    return meta


def structure_version(index_table: pa.Table) -> str:
    """Columns, types and dataset metadata without reports (see the module docstring)."""
    fields = [(f.name, _type_name(f.type)) for f in index_table.schema]
    return _digest(fields, _described(index_table))


def layout_version(index_table: pa.Table) -> str:
    """The index without file sizes and mtimes (see the module docstring)."""
    rows = index_table.drop_columns([FILES_COLUMN]).to_pylist()
    files = [
        [{k: v for k, v in f.items() if k not in _STATS} for f in row]
        for row in index_table.column(FILES_COLUMN).to_pylist()
    ]
    return _digest(rows, files, _described(index_table))


def index_fingerprint(index_table: pa.Table) -> str:
    """The layout and every file's size and mtime: changes whenever a source changes."""
    stats = [[[f[k] for k in _STATS] for f in row] for row in index_table.column(FILES_COLUMN).to_pylist()]
    return _digest(layout_version(index_table), stats)


def plan_version(index_table: pa.Table, plan: ShardPlan) -> str:
    """The typed dataset's structure and its shard plan (the planned row ranges)."""
    return _digest(structure_version(index_table), plan.ranges)


def shard_versions(index_table: pa.Table, plan: ShardPlan) -> dict[str, str]:
    """``{partition key: data version}`` of every planned shard."""
    return {
        key: _digest(
            shard_rows(index_table, start, stop).fingerprint(),
            layout_version(index_table.slice(start, stop - start)),
        )
        for key, (start, stop) in zip(plan.keys(), plan.ranges, strict=True)
    }


def publication_version(shards: Mapping[str, str], destination: str) -> str:
    """What a publication holds: the shard versions in order, and where it went."""
    return _digest(sorted(shards.items()), destination)
