"""Errors raised while reading a BIDS folder: each names the file and what to do."""

from __future__ import annotations


class BidsError(ValueError):
    """The BIDS folder (or the spec's view of it) cannot be indexed as asked."""


class AmbiguousColumnError(BidsError):
    """A single-file column matched more than one file in one row."""
