"""The store of the tool's intermediate files: a local folder, or any fsspec URL (see :mod:`.store`)."""

from .store import (
    CHUNK,
    FsspecStore,
    LocalStore,
    Recorded,
    Store,
    StoredState,
    StoreError,
    is_remote,
    open_store,
    scratch_folder,
    scratch_root,
)

__all__ = [
    "CHUNK",
    "FsspecStore",
    "LocalStore",
    "Recorded",
    "Store",
    "StoredState",
    "StoreError",
    "is_remote",
    "open_store",
    "scratch_folder",
    "scratch_root",
]
