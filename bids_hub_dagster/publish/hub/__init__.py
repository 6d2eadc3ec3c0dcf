"""Publishing to a Hugging Face Hub dataset repo, split by job:

- options.py   the spec's ``hub:`` options (HubOptions) and ``hf://datasets/ORG/NAME[@branch]`` URLs
- retry.py     which faults are retried and how long to wait (Backoff), the Hub's errors
- http.py      bounded HTTP waits for huggingface_hub's clients (BIDS_HUB_HTTP_TIMEOUT)
- batching.py  which files a publish still needs, in which commits (no network)
- repo.py      HubRepo: the destination itself (check, publish, verify, pre-upload)
"""

from .batching import Batch, RemoteFile, git_blob_id, plan_batches, plan_commits
from .options import (
    DEFAULT_FILES_PER_COMMIT,
    HUB_SCHEME,
    MAX_FILES_PER_COMMIT,
    HubOptions,
    is_hub_url,
    parse_hub_url,
)
from .repo import HubRepo
from .retry import (
    CONNECT_ATTEMPTS,
    Backoff,
    HubAccessError,
    HubTransientError,
    HubUnreachableError,
    call_with_retries,
    classify,
)

__all__ = [
    "CONNECT_ATTEMPTS",
    "DEFAULT_FILES_PER_COMMIT",
    "HUB_SCHEME",
    "MAX_FILES_PER_COMMIT",
    "Backoff",
    "Batch",
    "HubAccessError",
    "HubOptions",
    "HubRepo",
    "HubTransientError",
    "HubUnreachableError",
    "RemoteFile",
    "call_with_retries",
    "classify",
    "git_blob_id",
    "is_hub_url",
    "parse_hub_url",
    "plan_batches",
    "plan_commits",
]
