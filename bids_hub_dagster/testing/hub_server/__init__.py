"""A Hub test server speaking the HTTP protocol of ``huggingface_hub`` (see ``server.py``)."""

from .repo import Commit, FileEntry
from .server import DEFAULT_TOKEN, Fault, HubServer, RequestRecord

__all__ = ["DEFAULT_TOKEN", "Commit", "Fault", "FileEntry", "HubServer", "RequestRecord"]
