"""Publish to a Hugging Face Hub dataset repo: batched, resumable, safe under rate limits.

The layout is the local folder's: ``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``.
A publish runs in four steps, all through ``huggingface_hub.HfApi``:

1. ``create_repo(exist_ok=True)``, and the branch when a revision is named.
2. Read the branch head and list the remote files with their sizes and LFS sha256.
3. Compare with the local shards' sha256: a shard whose remote copy matches is skipped,
   so a rerun after a failure sends only what is missing and a rerun with nothing
   changed makes no commit at all.
4. Upload the rest in batches (``preupload_lfs_files`` then ``create_commit``), at most
   ``files_per_commit`` files a commit, each commit pinned to the head it was planned on
   (``parent_commit``). The last commit carries the card and deletes the remote shards
   that the new plan no longer has.

Faults: ``huggingface_hub`` retries uploads itself, but not commits or repo reads. Here
every call is retried on HTTP 429 (after its Retry-After), 5xx and dropped connections,
with exponential backoff. A failed commit is never retried blindly: the head is read
again first, because a commit whose answer was lost may have been applied; if the
remote already holds the batch, it counts as done, otherwise it is re-planned on the new
head (this is also how 409/412 from a concurrent writer are handled). 401, 403 and 404
are permanent: they raise :class:`HubAccessError` saying what to do.

The token is handed to ``HfApi`` and nowhere else: no message of this module holds it.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

from ...bids.errors import shown
from ..card import PUBLISHED_MARK
from ..destinations import DestinationError, PublishResult, data_file_name
from ..digests import file_digest, mark_uploaded, was_uploaded
from ..manifest import MANIFEST_NAME, README, Manifest, ManifestError, adopted, describe
from ..verify import DIGEST_CHARS, VerifyReport, short_digest, verify_published

log = logging.getLogger(__name__)
T = TypeVar("T")
NOTHING_OWNED = Manifest.of(())

HUB_SCHEME = "hf://"
DEFAULT_FILES_PER_COMMIT = 50
MAX_FILES_PER_COMMIT = 100  # the Hub asks for fewer than ~100 files per commit
_REPO_URL = re.compile(r"^hf://datasets/([A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@([^/].*))?/?$")
_PART = re.compile(r"^[\w.-]+$")


class HubAccessError(DestinationError):
    """A permanent refusal (401, 403, 404): retrying will not help; the message says what will."""


class HubTransientError(RuntimeError):
    """The Hub kept failing with transient faults after every retry; running again may succeed."""


class HubUnreachableError(HubTransientError):
    """No connection could be made to the Hub's host (DNS failure, refused, connect timeout)."""


#: tries of a call whose connection cannot even be opened: an offline machine or a wrong
#: HF_ENDPOINT is said after a few seconds, not after the minutes of backoff an overloaded Hub gets
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class HubOptions:
    """How a dataset is published to the Hub (the spec's ``hub:`` mapping)."""

    private: bool | None = None  # applied when the repo is created; None: the Hub's default (public)
    revision: str | None = None  # branch to publish to; created from main when missing
    create_pr: bool = False  # open a pull request instead of writing the branch
    commit_message: str | None = None
    files_per_commit: int = DEFAULT_FILES_PER_COMMIT
    upload_shards: bool = False  # each shard partition pre-uploads its file as soon as it is built
    verify_download: bool = False  # after publishing, download it all and compare every NIfTI file

    KEYS = (
        "private",
        "revision",
        "create_pr",
        "commit_message",
        "files_per_commit",
        "upload_shards",
        "verify_download",
    )

    def __post_init__(self) -> None:
        n = self.files_per_commit
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_FILES_PER_COMMIT:
            raise ValueError(
                f"hub.files_per_commit must be an integer from 1 to {MAX_FILES_PER_COMMIT}, not {n!r}."
            )
        for key in ("private", "create_pr", "upload_shards", "verify_download"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"hub.{key} must be true or false, not {value!r}.")
        if self.create_pr and self.revision not in (None, "main"):
            raise ValueError("hub.create_pr opens a pull request against main; leave hub.revision unset.")
        if self.commit_message is not None and not str(self.commit_message).strip():
            raise ValueError("hub.commit_message must not be empty.")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> HubOptions:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.KEYS)
        if unknown:
            raise ValueError(f"unknown hub option(s) {sorted(unknown)}; known: {list(cls.KEYS)}.")
        return cls(**{k: v for k, v in raw.items() if v is not None})

    def to_mapping(self) -> dict[str, Any]:
        default = HubOptions()
        return {k: getattr(self, k) for k in self.KEYS if getattr(self, k) != getattr(default, k)}


@dataclass(frozen=True)
class Backoff:
    """Retries of one Hub call: ``attempts`` tries, waits doubling from ``base`` up to ``cap`` s."""

    attempts: int = 6
    base: float = 2.0
    cap: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError(f"retries need attempts >= 1 and waits >= 0, not {self}.")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.cap, self.base * 2**attempt)
        return max(wait, retry_after) if retry_after is not None else wait


def is_hub_url(value: str) -> bool:
    return value.startswith(HUB_SCHEME)


def parse_hub_url(value: str) -> tuple[str, str | None]:
    """``hf://datasets/ORG/NAME[@revision]`` → ``("ORG/NAME", revision or None)``."""
    m = _REPO_URL.match(value)
    if not m or not all(_PART.match(p) for p in m.group(1).split("/")):
        raise DestinationError(
            f"{value}: a Hub destination is hf://datasets/ORG/NAME (optionally @branch), "
            "with letters, digits, '-', '_' and '.' in ORG and NAME."
        )
    return m.group(1), m.group(2)


def git_blob_id(data: bytes) -> str:
    """The git object id the Hub lists for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files only


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date), if it said."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_storage_upload(exc: BaseException) -> bool:
    """Whether the error came from sending bytes to the storage (LFS PUT or Xet), not from the Hub API."""
    return any(
        isinstance(c, RuntimeError) and str(c).startswith("Error while uploading") for c in _causes(exc)
    )


def unreachable(exc: BaseException) -> BaseException | None:
    """The cause that says the Hub's host could not be reached at all, if any.

    DNS failures, refused connections and connect timeouts: no request reached the Hub.
    A connection dropped mid-request (``ReadError``, ``RemoteProtocolError``…) is not one
    of them: the Hub was there, and those are retried as usual.
    """
    return next(
        (
            c
            for c in _causes(exc)
            if isinstance(
                c, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError, socket.gaierror)
            )
        ),
        None,
    )


def classify(exc: BaseException) -> tuple[str, float | None]:
    """``("transient" | "conflict" | "permanent", retry_after)`` of an error from a Hub call.

    The chain of causes is searched, because ``huggingface_hub`` wraps upload errors in
    a ``RuntimeError`` naming the file. Permanent: the Hub API refused (4xx other than
    408/409/412/429), or a bug (``TypeError``…). Everything else is retried: 429, 5xx,
    dropped connections, a storage PUT refused (its presigned URL may have expired: the
    retry asks for fresh ones), and unknown runtime errors (Xet reports network faults
    as a bare ``RuntimeError``). ``HF_HUB_OFFLINE=1`` is permanent: it stays set.
    """
    if any(isinstance(c, OfflineModeIsEnabled) for c in _causes(exc)):
        return "permanent", None
    storage = _is_storage_upload(exc)
    for cause in _causes(exc):
        status = _status(cause)
        if status is not None:
            if status in (408, 429) or status >= 500:
                return "transient", _retry_after(cause)
            if status in (409, 412):
                return "conflict", None
            return ("transient" if storage else "permanent"), None
        if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return "transient", None
    if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, NotImplementedError):
        return "transient", None
    return "permanent", None


_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def _short(exc: BaseException) -> str:
    """The first line of an error, without URL query strings (presigned upload URLs carry signatures)."""
    text = str(exc).strip().splitlines()
    first = _QUERY.sub(r"\1?…", next((line for line in text if line.strip()), type(exc).__name__))
    status = _status(exc)
    return first if status is None or str(status) in first else f"HTTP {status}: {first}"


@dataclass
class _Batch:
    """One planned commit: files to add, paths to delete, and whether it carries the card."""

    adds: list[str]
    deletes: list[str] = field(default_factory=list)
    card: bytes | None = None
    manifest: bytes | None = None  # the new .bids_hub_manifest.json, with the card

    @property
    def empty(self) -> bool:
        return not self.adds and not self.deletes and self.card is None and self.manifest is None


def plan_batches(
    adds: list[str], deletes: list[str], card: bytes | None, size: int, manifest: bytes | None = None
) -> list[_Batch]:
    """Commits of at most ``size`` files each (additions, deletions, the card and the manifest all count).

    Additions come first, deletions of the old plan's files after them, and the card and
    manifest in the last commit, so that no file is deleted before its replacements are
    in. They get a commit of their own only when the last batch is full. No change gives
    no commit.
    """
    items = [(name, False) for name in adds] + [(path, True) for path in deletes]
    if not items and card is None and manifest is None:
        return []
    card_slot = (card is not None) + (manifest is not None)
    tail = len(items) % size or (size if items else 0)  # items in the last commit
    if tail + card_slot > size:
        tail = 0
    cut = len(items) - tail
    chunks = [items[i : i + size] for i in range(0, cut, size)] + [items[cut:]]
    batches = [_Batch([n for n, gone in c if not gone], [n for n, gone in c if gone]) for c in chunks]
    batches[-1].card = card
    batches[-1].manifest = manifest
    return batches


def _shard_addition(name: str, path: Path) -> CommitOperationAdd:
    """The upload of one shard file, with the sha256 we already hold (the client would hash it again)."""
    op = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
    op.upload_info.sha256 = bytes.fromhex(file_digest(path))
    return op


@dataclass(frozen=True)
class _Committed:
    """A commit made (or found applied) by the publisher."""

    oid: str
    url: str | None  # None when the commit was found applied after its answer was lost
    pr_revision: str | None = None
    pr_url: str | None = None


class HubRepo:
    """A Hub dataset repo as a publishing destination."""

    def __init__(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        options: HubOptions = HubOptions(),
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.options = options
        self.branch = options.revision or constants.DEFAULT_REVISION
        self.api = HfApi(endpoint=endpoint, token=token)
        self.backoff = backoff
        self._sleep = sleep
        self._progress = progress or log.info
        self.repo_url = f"{self.api.endpoint}/datasets/{repo_id}"
        self.url = self.repo_url
        if self.branch != constants.DEFAULT_REVISION:
            self.url += f"/tree/{self.branch}"
        self.load_id = repo_id
        self.load_revision: str | None = None if self.branch == constants.DEFAULT_REVISION else self.branch
        self.published_head: str | None = None  # the commit the last publish left the branch (or PR) at

    @classmethod
    def from_url(cls, value: str, options: HubOptions = HubOptions(), **kwargs: Any) -> HubRepo:
        repo_id, revision = parse_hub_url(value)
        if revision is not None:
            if options.revision not in (None, revision):
                raise DestinationError(
                    f"{value} names branch {revision!r} but hub.revision is {options.revision!r}; give one."
                )
            options = replace(options, revision=revision)
        return cls(repo_id, options=options, **kwargs)

    # -- calls with retries ------------------------------------------------------------

    def _call(
        self, what: str, fn: Callable[..., T], *args: Any, attempts: int | None = None, **kwargs: Any
    ) -> T:
        """``fn(*args, **kwargs)``, retried on transient faults; permanent ones become HubAccessError.

        ``attempts`` lowers the number of tries for calls that ``huggingface_hub`` already
        retries itself (uploads), so that retries do not multiply.
        """
        tries = min(attempts or self.backoff.attempts, self.backoff.attempts)
        for attempt in range(tries):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                kind, retry_after = classify(exc)
                if kind != "transient":
                    raise self._explain(what, exc) from None
                if (cause := unreachable(exc)) is not None and attempt + 1 >= min(tries, CONNECT_ATTEMPTS):
                    raise HubUnreachableError(
                        f"{what}: cannot reach the Hub at {self.api.endpoint} (network): {_short(cause)}; "
                        f"check your connection and HF_ENDPOINT (tried {attempt + 1} times). Run again once "
                        "it is reachable: what is already uploaded is kept."
                    ) from None
                if attempt + 1 == tries:
                    raise HubTransientError(
                        f"{what} on {self.repo_id} failed {tries} times: {_short(exc)}. "
                        "The Hub may be overloaded or rate-limiting this repo. Run again later: "
                        "what is already uploaded is kept."
                    ) from None
                wait = self.backoff.delay(attempt, retry_after)
                self._progress(f"{what}: {_short(exc)}; retrying in {wait:.1f} s")
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _explain(self, what: str, exc: BaseException) -> Exception:
        status = next((s for c in _causes(exc) if (s := _status(c)) is not None), None)
        repo = self.repo_url
        if any(isinstance(c, OfflineModeIsEnabled) for c in _causes(exc)):
            return HubAccessError(
                f"{what}: HF_HUB_OFFLINE is set, so {repo} cannot be reached; unset it (or set it to 0) "
                "to publish to the Hub."
            )
        if status == 401:
            return HubAccessError(
                f"{what}: the Hub rejected the credentials for {repo} (HTTP 401). Set HF_TOKEN to a "
                "valid access token with write permission (https://huggingface.co/settings/tokens)."
            )
        if status == 403:
            return HubAccessError(
                f"{what}: the token may not write to {repo} (HTTP 403). Use a token with write access "
                f"to the {self.repo_id.split('/')[0]!r} namespace, or ask its admins for the write role."
            )
        if isinstance(exc, RevisionNotFoundError):
            return HubAccessError(f"{what}: {repo} has no branch {self.branch!r} (HTTP 404).")
        if status == 404 or isinstance(exc, RepositoryNotFoundError):
            return HubAccessError(
                f"{what}: {repo} was not found (HTTP 404). Check the name in the destination, and that "
                "the token belongs to a user who can see the repo."
            )
        if status is not None:
            return HubAccessError(f"{what} on {repo} failed (HTTP {status}): {_short(exc)}")
        return HubAccessError(f"{what} on {repo} failed: {_short(exc)}")

    # -- reading the remote ------------------------------------------------------------

    def check(self) -> None:
        """Refuse what cannot work before any shard is built: a bad or read-only token, a foreign namespace.

        Creates the repo (and branch) when missing. ``create_repo(exist_ok=True)`` accepts an
        existing repo even for a token that may not write to it, so the token's role is read too.
        """
        who = self._call("check the token", self.api.whoami)
        role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubAccessError(
                f"the token in use is read-only: it cannot publish to {self.repo_url}. Set HF_TOKEN to a "
                "token with the write role (https://huggingface.co/settings/tokens)."
            )
        self.ensure_repo()
        head = self.head()
        remote = self.remote_files(head)
        self._refuse_foreign(remote, self.owned(remote, head))

    def ensure_repo(self) -> None:
        """Create the repo (and the branch) when missing; say so when its visibility differs from ``private``."""
        self._call(
            "create the dataset repo",
            self.api.create_repo,
            self.repo_id,
            repo_type="dataset",
            private=self.options.private,
            exist_ok=True,
        )
        if self.options.private is not None:
            info = self._call("read the repo", self.api.repo_info, self.repo_id, repo_type="dataset")
            if bool(info.private) != self.options.private:
                self._progress(
                    f"warning: {self.repo_url} is {'private' if info.private else 'public'}, but hub.private "
                    f"is {self.options.private}: it applies when the repo is created; change it in the "
                    "repo's settings."
                )
        if self.branch != constants.DEFAULT_REVISION:
            self._call(
                f"create branch {self.branch!r}",
                self.api.create_branch,
                self.repo_id,
                branch=self.branch,
                repo_type="dataset",
                exist_ok=True,
            )

    def head(self, revision: str | None = None) -> str:
        """The commit id at the tip of ``revision`` (default: the publishing branch)."""
        info = self._call(
            "read the branch head",
            self.api.repo_info,
            self.repo_id,
            repo_type="dataset",
            revision=revision or self.branch,
        )
        return str(info.sha)

    def remote_files(self, revision: str) -> dict[str, RemoteFile]:
        """Every file at ``revision`` (a commit id), with sizes and LFS sha256."""

        def listing() -> list:
            return list(
                self.api.list_repo_tree(self.repo_id, repo_type="dataset", revision=revision, recursive=True)
            )

        files = {}
        for entry in self._call("list the remote files", listing):
            if isinstance(entry, RepoFile):
                sha = entry.lfs.sha256 if entry.lfs is not None else None
                files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id, sha)
        return files

    def _pull_requests(self) -> dict[str, str]:
        """``{"refs/pr/N": head commit}`` of the repo's pull requests."""
        refs = self._call(
            "list pull requests",
            self.api.list_repo_refs,
            self.repo_id,
            repo_type="dataset",
            include_pull_requests=True,
        )
        return {r.ref: r.target_commit for r in refs.pull_requests or []}

    # -- publishing --------------------------------------------------------------------

    def _message(self, default: str) -> str:
        return self.options.commit_message or default

    def _read_remote(self, path: str, revision: str) -> bytes:
        """The bytes of one (small) remote file at ``revision``."""
        with tempfile.TemporaryDirectory(prefix="bids-hub-read-") as tmp:
            local = self._call(
                f"read {path}",
                self.api.hf_hub_download,
                self.repo_id,
                path,
                repo_type="dataset",
                revision=revision,
                cache_dir=tmp,
            )
            return Path(local).read_bytes()

    def owned(self, remote: Mapping[str, RemoteFile], revision: str) -> Manifest:
        """What earlier publications wrote to the repo: its manifest, else (no manifest) what it adopts.

        A repo published before manifests existed is adopted when its README.md carries
        the tool's mark; otherwise the tool owns nothing there and deletes nothing.
        """
        if MANIFEST_NAME in remote:
            data = self._read_remote(MANIFEST_NAME, revision)
            try:
                return Manifest.parse(data, f"{self.url}/{MANIFEST_NAME}")
            except ManifestError as exc:
                raise DestinationError(str(exc)) from None
        if README in remote and PUBLISHED_MARK in self._read_remote(README, revision).decode(
            "utf-8", "replace"
        ):
            return adopted(remote)
        return Manifest.of(())

    def _refuse_foreign(self, remote: Mapping[str, RemoteFile], owned: Manifest) -> None:
        """Files under data/ that no publication of this tool wrote would mix with the dataset: refuse."""
        foreign = [p for p in remote if p.startswith("data/") and p not in owned.files]
        if foreign:
            raise DestinationError(
                f"{self.url}: data/ holds {len(foreign)} file(s) that bids_hub_dagster did not write: "
                f"{describe(foreign)}. datasets would load them with the published shards; remove them from "
                "the repo, or publish to another repo or branch (hub.revision)."
            )

    def plan(
        self,
        shard_files: Sequence[Path],
        card: bytes,
        remote: Mapping[str, RemoteFile],
        owned: Manifest = NOTHING_OWNED,
    ) -> tuple[list[_Batch], list[str]]:
        """The commits still needed to make the remote equal to ``shard_files`` + card + manifest, and the names skipped.

        Only files that ``owned`` lists (the previous publication's manifest) are deleted.
        """
        n = len(shard_files)
        adds, skipped = [], []
        for i, path in enumerate(shard_files):
            name = data_file_name(i, n)
            there = remote.get(name)
            if there is not None and there.size == path.stat().st_size and there.sha256 == file_digest(path):
                skipped.append(name)
            else:
                adds.append(name)
        wanted = {data_file_name(i, n) for i in range(n)}
        deletes = sorted(p for p in owned.files if p.startswith("data/") and p in remote and p not in wanted)
        readme = remote.get(README)
        card_changed = readme is None or readme.blob_id != git_blob_id(card)
        final = Manifest.of([*wanted, README])
        there = remote.get(MANIFEST_NAME)
        manifest = final.to_bytes()
        manifest_changed = there is None or there.blob_id != git_blob_id(manifest)
        batches = plan_batches(
            adds,
            deletes,
            card if card_changed else None,
            self.options.files_per_commit,
            manifest=manifest if manifest_changed else None,
        )
        widened = Manifest(owned.files | final.files).to_bytes()
        if len(batches) > 1 and (there is None or there.blob_id != git_blob_id(widened)):
            # several commits: first widen the manifest to old and new files, so that a publish
            # interrupted between two commits leaves every file it committed listed as its own
            batches.insert(0, _Batch([], manifest=widened))
        return batches, skipped

    def publish(self, shard_files: Sequence[Path], card: DatasetCard) -> PublishResult:
        if not shard_files:
            raise DestinationError(f"{self.url}: nothing to publish (no shard files).")
        shard_files = [Path(p) for p in shard_files]
        n = len(shard_files)
        local = {data_file_name(i, n): p for i, p in enumerate(shard_files)}
        content = str(card).encode("utf-8")
        result = PublishResult(url=self.url)
        self.ensure_repo()
        parent = self.head()
        remote = self.remote_files(parent)
        owned = self.owned(remote, parent)
        self._refuse_foreign(remote, owned)
        batches, result.files_skipped = self.plan(shard_files, content, remote, owned)
        self.published_head = parent
        if not batches:
            self._progress(f"{self.url}: all {n} shard(s) and the card are already published; no commit")
            return result
        present = {f.sha256 for f in remote.values() if f.sha256}
        pr_revision: str | None = None  # set by the first commit when opening a pull request
        for k, batch in enumerate(batches, 1):
            last = k == len(batches)
            title = self._message(
                f"Publish {self.repo_id}"
                if last
                else f"Publish {self.repo_id}: shards, commit {k}/{len(batches)}"
            )
            for name in batch.adds:
                path = local[name]
                if file_digest(path) not in present and not was_uploaded(path, self.repo_url):
                    result.bytes_written += path.stat().st_size
            done = self._commit_batch(batch, local, title, parent, pr_revision)
            parent = done.oid
            if done.url is not None:
                result.commit_urls.append(done.url)
            if self.options.create_pr and pr_revision is None:
                pr_revision, result.pr_url = done.pr_revision, done.pr_url
                self.load_revision = pr_revision
            result.files_written += batch.adds + ([README] if batch.card is not None else [])
            result.files_removed += batch.deletes
            present |= {file_digest(local[name]) for name in batch.adds}
            self._progress(
                f"{self.url}: commit {k}/{len(batches)} done ({len(batch.adds)} file(s)"
                + (f", {len(batch.deletes)} removed" if batch.deletes else "")
                + (", card" if batch.card is not None else "")
                + ")"
            )
        self.published_head = parent
        return result

    def _operations(self, batch: _Batch, local: Mapping[str, Path]) -> list:
        ops: list = [_shard_addition(name, local[name]) for name in batch.adds]
        if batch.card is not None:
            ops.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=batch.card))
        if batch.manifest is not None:
            ops.append(CommitOperationAdd(path_in_repo=MANIFEST_NAME, path_or_fileobj=batch.manifest))
        ops += [CommitOperationDelete(path_in_repo=p) for p in batch.deletes]
        return ops

    def _applied(self, batch: _Batch, local: Mapping[str, Path], remote: Mapping[str, RemoteFile]) -> _Batch:
        """What of ``batch`` the remote does not hold yet."""
        adds = [n for n in batch.adds if (f := remote.get(n)) is None or f.sha256 != file_digest(local[n])]
        deletes = [p for p in batch.deletes if p in remote]
        card, manifest = batch.card, batch.manifest
        if card is not None and (f := remote.get(README)) is not None and f.blob_id == git_blob_id(card):
            card = None
        if manifest is not None and (f := remote.get(MANIFEST_NAME)) and f.blob_id == git_blob_id(manifest):
            manifest = None
        return _Batch(adds, deletes, card, manifest)

    def _found_pull_request(self, before: Mapping[str, str], title: str) -> _Committed | None:
        """The pull request a lost ``create_pr`` commit opened, if it was applied."""
        for ref, oid in self._pull_requests().items():
            if ref in before:
                continue
            commits = self._call("read a pull request", self.api.list_repo_commits, self.repo_id,
                                 repo_type="dataset", revision=ref)  # fmt: skip
            if commits and commits[0].title == title:
                num = ref.rsplit("/", 1)[-1]
                return _Committed(oid, None, ref, f"{self.repo_url}/discussions/{num}")
        return None

    def _commit_batch(
        self, batch: _Batch, local: Mapping[str, Path], title: str, parent: str, pr_revision: str | None
    ) -> _Committed:
        """Upload and commit one batch, retried until the remote holds it."""
        revision = pr_revision or self.branch
        opens_pr = self.options.create_pr and pr_revision is None
        ops = self._operations(batch, local)
        self._call(
            "upload shard files",
            self.api.preupload_lfs_files,
            self.repo_id,
            additions=[op for op in ops if isinstance(op, CommitOperationAdd)],
            repo_type="dataset",
            revision=revision,
            create_pr=opens_pr,
            attempts=3,  # huggingface_hub already retries each upload 5 times
        )
        prs_before = self._pull_requests() if opens_pr else {}
        for attempt in range(self.backoff.attempts):
            try:
                info = self.api.create_commit(
                    self.repo_id,
                    operations=ops,
                    commit_message=title,
                    repo_type="dataset",
                    revision=revision,
                    create_pr=opens_pr,
                    parent_commit=parent,
                )
                if info.oid == parent:  # huggingface_hub found nothing to change: no commit was made
                    return _Committed(parent, None)
                return _Committed(info.oid, info.commit_url, info.pr_revision, info.pr_url)
            except Exception as exc:
                kind, retry_after = classify(exc)
                if kind == "permanent":
                    raise self._explain(f"commit {len(batch.adds)} file(s)", exc) from None
                if attempt + 1 == self.backoff.attempts:
                    raise HubTransientError(
                        f"commit to {self.repo_id} failed {self.backoff.attempts} times: {_short(exc)}. "
                        "Run again: files already committed are skipped."
                    ) from None
                # the commit may have been applied although its answer was lost: look before retrying
                if opens_pr and (found := self._found_pull_request(prs_before, title)) is not None:
                    self._progress(f"commit to {self.repo_id}: already applied as {found.pr_revision}")
                    return found
                head = self.head(revision)
                if head != parent:
                    remote = self.remote_files(head)
                    rest = self._applied(batch, local, remote)
                    if rest.empty:
                        self._progress(f"commit to {self.repo_id}: already applied as {head[:8]}")
                        return _Committed(head, None)
                    batch, parent, ops = rest, head, self._operations(rest, local)
                    if kind == "conflict":
                        self._progress(
                            f"commit to {self.repo_id}: the branch moved ({_short(exc)}); re-planned"
                        )
                        continue  # a new head to commit on: no reason to wait
                wait = self.backoff.delay(attempt, retry_after)
                self._progress(f"commit to {self.repo_id}: {_short(exc)}; retrying in {wait:.1f} s")
                self._sleep(wait)
        raise AssertionError("unreachable")

    def verify(self, index_table: pa.Table) -> VerifyReport:
        """Load the published revision back from the Hub (fresh cache) and compare every byte."""
        return verify_published(self.load_id, index_table, revision=self.load_revision, token=self.api.token)

    def verify_files(
        self, shard_files: Sequence[Path], card: DatasetCard, index_table: pa.Table
    ) -> VerifyReport:
        """Compare each published file with its local source by sha256 (LFS oid) and size, without downloading.

        Reads the commit the last publish left (``published_head``), so a later writer
        cannot make it pass or fail. The shard files were checked against their sources
        when they were built; a full read-back is :meth:`verify`.
        """
        shard_files = [Path(p) for p in shard_files]
        n = len(shard_files)
        report = VerifyReport(rows_expected=index_table.num_rows, unit="published files")
        remote = self.remote_files(self.published_head or self.head(self.load_revision))
        for i, path in enumerate(shard_files):
            name = data_file_name(i, n)
            there = remote.get(name)
            if there is None:
                report.problems.append(
                    f"{name} is missing from {self.url} (expected a copy of {shown(path)})"
                )
            elif (there.sha256, there.size) != (digest := file_digest(path), size := path.stat().st_size):
                found = "not an LFS file" if there.sha256 is None else f"found {short_digest(there.sha256)}"
                report.problems.append(
                    f"{name} differs from {shown(path)}: sha256 expected {short_digest(digest)}, {found}; "
                    f"size expected {size}, found {there.size}"
                )
            else:
                report.files_checked += 1
                report.bytes_checked += there.size
                report.rows_found += pq.ParquetFile(path).metadata.num_rows
        extra = sorted(
            p for p in remote if p.startswith("data/") and p not in {data_file_name(i, n) for i in range(n)}
        )
        report.problems += [f"{shown(p)} is not a shard of this publication" for p in extra]
        readme = remote.get("README.md")
        blob = git_blob_id(str(card).encode("utf-8"))
        if readme is None or readme.blob_id != blob:
            found = "missing" if readme is None else f"found {readme.blob_id[:DIGEST_CHARS]}…"
            report.problems.append(
                f"README.md of {self.url} is not the card of this publication: "
                f"git blob id expected {blob[:DIGEST_CHARS]}…, {found}"
            )
        else:
            report.files_checked += 1
            report.bytes_checked += readme.size
        return report

    def preupload_shard(self, path: Path, index: int, num_shards: int) -> int:
        """Send one shard's bytes to the repo's storage without a commit; returns the bytes handed over.

        The later publish commits the file without sending it again. Nothing is sent when
        the branch already holds this exact file or an earlier pre-upload sent it. (When
        the storage already holds the same bytes under another name, the client skips
        the transfer but the count still includes them.)
        """
        path = Path(path)
        name = data_file_name(index, num_shards)
        if was_uploaded(path, self.repo_url):
            return 0
        digest = file_digest(path)
        infos = self._call(
            f"look up {name}",
            self.api.get_paths_info,
            self.repo_id,
            [name],
            repo_type="dataset",
            revision=self.branch,
        )
        if any(isinstance(i, RepoFile) and i.lfs is not None and i.lfs.sha256 == digest for i in infos):
            mark_uploaded(path, self.repo_url)  # a rerun: the branch already holds this exact file
            return 0
        op = _shard_addition(name, path)
        self._call(
            f"pre-upload {name}",
            self.api.preupload_lfs_files,
            self.repo_id,
            additions=[op],
            repo_type="dataset",
            revision=self.branch,
            create_pr=self.options.create_pr,
            attempts=3,
        )
        mark_uploaded(path, self.repo_url)
        return path.stat().st_size
