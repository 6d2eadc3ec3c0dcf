"""BIDS only: entities, the folder walk, participants, sidecars, and rows. No Dagster, no datasets."""

from .columns import ColumnRule, infer_columns
from .entities import BidsName, parse_filename
from .errors import AmbiguousColumnError, BidsError
from .index import BidsIndex, Row, build_index
from .layout import BidsFile

__all__ = [
    "AmbiguousColumnError",
    "BidsError",
    "BidsFile",
    "BidsIndex",
    "BidsName",
    "ColumnRule",
    "Row",
    "build_index",
    "infer_columns",
    "parse_filename",
]
