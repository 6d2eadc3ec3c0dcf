"""BIDS filename parsing driven by the official BIDS schema (bidsschematools).

The schema supplies the entity short names (``sub``, ``ses``, ``acq``, ...), their
canonical order and their format (``index`` entities are integers, ``label`` entities
strings), the datatype folder names, and the valid extensions. Nothing here is tuned to
one dataset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from bidsschematools import schema as bids_schema


@dataclass(frozen=True)
class EntityInfo:
    """One BIDS entity as the schema defines it."""

    name: str  # long name, e.g. "acquisition"
    key: str  # short name used in filenames, e.g. "acq"
    format: str  # "label" or "index"
    order: int  # position in the schema's canonical entity order


@dataclass(frozen=True)
class BidsSchema:
    """The parts of the BIDS schema that indexing needs."""

    bids_version: str
    entities: tuple[EntityInfo, ...]
    datatypes: frozenset[str]
    extensions: tuple[str, ...]  # longest first, so ".nii.gz" wins over ".gz"
    by_key: dict[str, EntityInfo] = field(init=False, compare=False, hash=False, repr=False)
    by_name: dict[str, EntityInfo] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {e.key: e for e in self.entities})
        object.__setattr__(self, "by_name", {e.name: e for e in self.entities})

    def entity(self, key_or_name: str) -> EntityInfo | None:
        """Look an entity up by its short key (``acq``) or long name (``acquisition``)."""
        return self.by_key.get(key_or_name) or self.by_name.get(key_or_name)


@cache
def load_schema() -> BidsSchema:
    """Load the BIDS schema shipped with bidsschematools (cached per process)."""
    raw = bids_schema.load_schema()
    objects = raw.objects.entities
    order = list(raw.rules.entities)
    entities = []
    for long_name in order:
        obj = objects[long_name]
        entities.append(
            EntityInfo(name=long_name, key=obj["name"], format=obj["format"], order=order.index(long_name))
        )
    extensions = sorted(
        {v["value"] for v in raw.objects.extensions.values() if v["value"].startswith(".")},
        key=len,
        reverse=True,
    )
    return BidsSchema(
        bids_version=str(raw.bids_version),
        entities=tuple(entities),
        datatypes=frozenset(raw.objects.datatypes.keys()),
        extensions=tuple(extensions),
    )


NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS filename: key-value entities, suffix and extension.

    ``entities`` keeps the raw string values as written in the filename, keyed by the
    schema's short names; ``unknown`` holds key-value pairs whose key the schema does
    not define (kept, so that two files differing only there can still be told apart).
    """

    entities: dict[str, str]
    suffix: str | None
    extension: str
    unknown: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        return self.entities.get(key, self.unknown.get(key))

    def all_entities(self) -> dict[str, str]:
        return {**self.entities, **self.unknown}


def split_extension(filename: str) -> tuple[str, str]:
    """Split ``name.nii.gz`` into ``("name", ".nii.gz")``.

    A BIDS name has no dot before its extension, so the extension starts at the first
    dot (``.nii.gz``, ``.dlabel.nii``, ``.tsv.gz``); a stem with dots (not valid BIDS)
    keeps them when its end is one of the schema's extensions.
    """
    stem, dot, ext = filename.partition(".")
    if not dot:
        return stem, ""
    ext = dot + ext
    if "_" in ext or "-" in ext or ext.count(".") > 2:  # a dot inside the stem: longest schema extension
        lower = filename.lower()
        for known in load_schema().extensions:
            if known and lower.endswith(known) and len(filename) > len(known):
                return filename[: -len(known)], filename[-len(known) :]
    return stem, ext


def parse_filename(filename: str) -> BidsName:
    """Parse a BIDS filename into entities, suffix and extension.

    >>> parse_filename("sub-01_ses-1_task-rest_run-2_bold.nii.gz").entities
    {'sub': '01', 'ses': '1', 'task': 'rest', 'run': '2'}
    """
    stem, extension = split_extension(filename)
    parts = stem.split("_")
    suffix: str | None = parts[-1]
    if "-" in parts[-1]:
        suffix = None
    else:
        parts = parts[:-1]
    known = load_schema().by_key
    entities: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for part in parts:
        key, dash, value = part.partition("-")
        if not dash:
            unknown[part] = ""
            continue
        (entities if key in known else unknown)[key] = value
    return BidsName(entities=entities, suffix=suffix, extension=extension, unknown=unknown)


NameKey = tuple[str | None, str, frozenset[tuple[str, str]]]


def name_key(filename: str) -> NameKey:
    """A filename's suffix, extension and entities (known and unknown, as a frozenset).

    What sidecar and companion matching compare (:func:`name_keys` files a tree's names once
    for both).
    """
    stem, extension = split_extension(filename)
    parts = stem.split("_")
    suffix: str | None = parts.pop()
    if "-" in suffix:  # no suffix: the last part is an entity (parse_filename's rule)
        parts.append(suffix)
        suffix = None
    pairs: dict[str, str] = {}
    for part in parts:  # what parse_filename's entities and unknown hold, merged as all_entities()
        key, _, value = part.partition("-")
        pairs[key] = value
    return suffix, extension, frozenset(pairs.items())


def name_keys(relpaths: Iterable[str]) -> dict[str, NameKey]:
    """relpath -> :func:`name_key` of its filename."""
    return {rel: name_key(rel.rpartition("/")[2]) for rel in relpaths}


_NUM = re.compile(r"(\d+)")


@lru_cache(maxsize=65536)
def natural_key(value: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs numerically: ``run-2`` before ``run-10``."""
    return tuple((0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in _NUM.split(value) if tok)


def typed_value(key: str, value: str) -> int | str:
    """The value of an entity as the schema types it (``index`` → int when it parses)."""
    info = load_schema().by_key.get(key)
    if info is not None and info.format == "index" and value.isdigit():
        return int(value)
    return value


def entity_sort_key(name: BidsName) -> tuple[Any, ...]:
    """Order files by their entities in the schema's canonical order, numbers numerically.

    An absent entity sorts before any present value; unknown entities and then the
    suffix and extension break the remaining ties.
    """
    schema = load_schema()
    key: list[Any] = [(0,)] * len(schema.entities)
    for k, value in name.entities.items():
        key[schema.by_key[k].order] = (1, natural_key(value))
    # One element for all unknown entities, so names with and without them still compare.
    key.append(tuple((k, natural_key(name.unknown[k])) for k in sorted(name.unknown)))
    key.append(natural_key(name.suffix or ""))
    key.append(name.extension)
    return tuple(key)


def distinguishing_entities(a: BidsName, b: BidsName) -> list[str]:
    """Entity keys whose values differ between two filenames (schema order first)."""
    keys = [e.key for e in load_schema().entities] + sorted(set(a.unknown) | set(b.unknown))
    return [k for k in keys if a.value(k) != b.value(k)]
