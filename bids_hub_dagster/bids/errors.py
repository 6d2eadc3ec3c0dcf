"""Errors raised while reading a BIDS folder: each names the file and what to do."""

from __future__ import annotations

from ..errors import UserError


class BidsError(UserError):
    """The BIDS folder (or the spec's view of it) cannot be indexed as asked."""


class AmbiguousColumnError(BidsError):
    """A single-file column matched more than one file in one row."""


def shown(value: object) -> str:
    """``value`` as text fit for one line of a message: a name with a newline or another control character
    is quoted with its characters escaped (``'sub-01_T1w\\nerror: x.nii'``), so it cannot forge lines."""
    text = str(value)
    return text if text.isprintable() else repr(text)
