"""Publish to a Hugging Face Hub dataset repo: batched, resumable, safe under rate limits.

The layout is the local folder's: ``data/train-XXXXX-of-NNNNN.parquet`` plus ``README.md``
(and, with a preview, ``preview/train-XXXXX-of-NNNNN.parquet`` and ``preview.png``).
A publish runs in four steps, all through ``huggingface_hub.HfApi``:

1. ``create_repo(exist_ok=True)``, and the branch when a revision is named.
2. Read the branch head and list the remote files with their sizes and LFS sha256.
3. Compare with the local shards' sha256: a shard whose remote copy matches is skipped,
   so a rerun after a failure sends only what is missing and a rerun with nothing
   changed makes no commit at all.
4. Upload the rest in batches (``preupload_lfs_files`` then ``create_commit``), at most
   ``files_per_commit`` files a commit, each commit pinned to the head it was planned on
   (``parent_commit``). The last commit carries the card and deletes the remote files of
   the previous publication that the new one no longer has.

Faults: every call is retried on HTTP 429, 5xx and dropped connections (:mod:`.retry`).
A failed commit is never retried blindly: the head is read again first, because a
commit whose answer was lost may have been applied; if the remote already holds the
batch, it counts as done, otherwise it is re-planned on the new head (this is also how
409/412 from a concurrent writer are handled). 401, 403 and 404 are permanent: they
raise :class:`HubAccessError` saying what to do.

From a remote store (``s3://…``) the files are keys: steps 3 and the verification use the
sha256 and size of each file's digest record and its parquet footer (``publish(source=…)``,
:mod:`..sources`), and step 4 copies each batch's files to scratch just before its upload and
removes them once it is committed (huggingface_hub uploads from paths or bytes, not file
objects), so scratch holds one batch at most, never the dataset.

The package splits the job: :mod:`.options` (the spec's ``hub:`` options, ``hf://``
URLs), :mod:`.retry` (which faults are retried, backoff, messages), :mod:`.batching`
(which files a publish still needs, in which commits) and this module, the repo itself.

The token is handed to ``HfApi`` and nowhere else: no message of this module holds it.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from ...bids.errors import shown
from ..card import is_tool_card
from ..destinations import (
    DestinationError,
    Link,
    Markdown,
    PublishResult,
    check_publishable,
    data_file_name,
    published_names,
)
from ..digests import file_digest, mark_uploaded, was_uploaded
from ..manifest import (
    MANIFEST_NAME,
    PREVIEW_PNG,
    README,
    Manifest,
    ManifestError,
    adopted,
    describe,
    is_guarded,
)
from ..sources import LOCAL_FILES, FileSource
from ..verify import DIGEST_CHARS, VerifyReport, short_digest, verify_preview_config, verify_published
from .batching import (
    NOTHING_OWNED,
    Batch,
    RemoteFile,
    git_blob_id,
    local_files,
    plan_commits,
    remote_matches,
    still_needed,
)
from .http import bound_http_waits
from .options import HubOptions, parse_hub_url
from .retry import (
    Backoff,
    HubAccessError,
    HubTransientError,
    call_with_retries,
    classify,
    refusal,
    short_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_OPTIONS = HubOptions()
DEFAULT_BACKOFF = Backoff()


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
        options: HubOptions = DEFAULT_OPTIONS,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.http_timeout = bound_http_waits()  # no request to the Hub waits forever
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
    def from_url(cls, value: str, options: HubOptions = DEFAULT_OPTIONS, **kwargs: Any) -> HubRepo:
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

        See :func:`.retry.call_with_retries`; ``attempts`` lowers the tries of calls that
        ``huggingface_hub`` already retries itself (uploads).
        """
        return call_with_retries(
            what,
            functools.partial(fn, *args, **kwargs),
            backoff=self.backoff,
            explain=self._explain,
            endpoint=self.api.endpoint,
            target=self.repo_id,
            sleep=self._sleep,
            progress=self._progress,
            attempts=attempts,
        )

    def _explain(self, what: str, exc: BaseException) -> HubAccessError:
        return refusal(what, exc, repo_url=self.repo_url, repo_id=self.repo_id, branch=self.branch)

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

    def is_public(self) -> bool | None:
        """The repo's visibility as the Hub says it now (None: no such repo yet; it is created per ``private``)."""

        def read() -> bool | None:
            try:
                info = self.api.repo_info(self.repo_id, repo_type="dataset")
            except RepositoryNotFoundError:
                return None
            return not info.private

        return self._call("read the repo's visibility", read)

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

        A repo published before manifests existed is adopted when its README.md is a card
        the tool rendered (:func:`..card.is_tool_card`); otherwise the tool owns nothing
        there and deletes nothing.
        """
        if MANIFEST_NAME in remote:
            data = self._read_remote(MANIFEST_NAME, revision)
            try:
                manifest = Manifest.parse(data, f"{self.url}/{MANIFEST_NAME}")
            except ManifestError as exc:
                raise DestinationError(str(exc)) from None
            there = remote.get(README)
            if there is not None and not manifest.owns_readme_blob(there.blob_id):
                return manifest.without_readme()  # edited since it was published: the user's now
            return manifest
        text = self._read_remote(README, revision).decode("utf-8", "replace") if README in remote else ""
        if is_tool_card(text):
            return adopted(remote, text)
        return Manifest.of(())

    def _refuse_foreign(self, remote: Mapping[str, RemoteFile], owned: Manifest) -> None:
        """Files under data/ or preview/ that no publication of this tool wrote would mix with the
        dataset, and a README.md or preview.png of someone else would be replaced: refuse."""
        foreign = [p for p in remote if is_guarded(p) and p not in owned.files]
        if foreign:
            raise DestinationError(
                f"{self.url} holds {len(foreign)} file(s) that bids_hub_dagster did not write: "
                f"{describe(foreign)}. Publishing would replace README.md with the dataset card (and "
                "preview.png with its picture), and datasets would load files under data/ and preview/ "
                "with the published ones; remove them from the repo (its history keeps them), or publish "
                "to another repo or branch (hub.revision)."
            )

    def plan(
        self,
        shard_files: Sequence[Path],
        card: bytes,
        remote: Mapping[str, RemoteFile],
        owned: Manifest = NOTHING_OWNED,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
        source: FileSource = LOCAL_FILES,
    ) -> tuple[list[Batch], list[str]]:
        """The commits still needed and the names skipped (see :func:`.batching.plan_commits`)."""
        return plan_commits(
            shard_files,
            card,
            remote,
            self.options.files_per_commit,
            owned,
            preview_files=preview_files,
            preview_png=preview_png,
            source=source,
        )

    #: publishes the files of a remote store a commit batch at a time (``publish(source=…)``)
    publishes_from_store = True

    def publish(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
        source: FileSource = LOCAL_FILES,
    ) -> PublishResult:
        """Publish in commit batches (see the module docstring).

        ``source`` says how the files are read (:mod:`..sources`): local paths as they are,
        or the keys of a remote store, whose sizes and sha256 (the digest records) plan the
        commits and whose files are copied to scratch one commit batch at a time, for that
        batch's upload and commit only (its retries included), then removed: scratch never
        holds more than one batch, also when a commit fails or Ctrl-C stops it.
        """
        check_publishable(self.url, shard_files, preview_files)
        shard_files = [Path(p) for p in shard_files]
        preview_files = [Path(p) for p in preview_files]
        n = len(shard_files)
        local = local_files(shard_files, preview_files)
        content = str(card).encode("utf-8")
        result = PublishResult(url=self.url, source=source)
        self.ensure_repo()
        parent = self.head()
        remote = self.remote_files(parent)
        owned = self.owned(remote, parent)
        self._refuse_foreign(remote, owned)
        batches, result.files_skipped = self.plan(
            shard_files,
            content,
            remote,
            owned,
            preview_files=preview_files,
            preview_png=preview_png,
            source=source,
        )
        self.published_head = parent
        if not batches:
            what = f"all {n} shard(s)" + (" and their previews" if preview_files else "")
            self._progress(f"{self.url}: {what} and the card are already published; no commit")
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
                if source.sha256(path) not in present and not source.was_uploaded(path, self.repo_url):
                    result.bytes_written += source.size(path)
            result.bytes_written += sum(len(data) for data in batch.blobs.values())
            with source.local([local[name] for name in batch.adds]) as copies:  # this batch's files only
                here = {name: copies[local[name]] for name in batch.adds}
                done = self._commit_batch(batch, here, title, parent, pr_revision)
            parent = done.oid
            if done.url is not None:
                result.commit_urls.append(done.url)
            if self.options.create_pr and pr_revision is None:
                pr_revision, result.pr_url = done.pr_revision, done.pr_url
                self.load_revision = pr_revision
            result.files_written += (
                batch.adds + list(batch.blobs) + ([README] if batch.card is not None else [])
            )
            result.files_removed += batch.deletes
            present |= {source.sha256(local[name]) for name in batch.adds}
            self._progress(
                f"{self.url}: commit {k}/{len(batches)} done ({len(batch.adds)} file(s)"
                + (f", {len(batch.deletes)} removed" if batch.deletes else "")
                + "".join(f", {name}" for name in batch.blobs)
                + (", card" if batch.card is not None else "")
                + ")"
            )
        self.published_head = parent
        return result

    def _operations(self, batch: Batch, local: Mapping[str, Path]) -> list:
        ops: list = [_shard_addition(name, local[name]) for name in batch.adds]
        ops += [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in batch.blobs.items()
        ]
        if batch.card is not None:
            ops.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=batch.card))
        if batch.manifest is not None:
            ops.append(CommitOperationAdd(path_in_repo=MANIFEST_NAME, path_or_fileobj=batch.manifest))
        ops += [CommitOperationDelete(path_in_repo=p) for p in batch.deletes]
        return ops

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
        self, batch: Batch, local: Mapping[str, Path], title: str, parent: str, pr_revision: str | None
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
                        f"commit to {self.repo_id} failed {self.backoff.attempts} times: {short_error(exc)}. "
                        "Run again: files already committed are skipped."
                    ) from None
                # the commit may have been applied although its answer was lost: look before retrying
                if opens_pr and (found := self._found_pull_request(prs_before, title)) is not None:
                    self._progress(f"commit to {self.repo_id}: already applied as {found.pr_revision}")
                    return found
                head = self.head(revision)
                if head != parent:
                    remote = self.remote_files(head)
                    rest = still_needed(batch, local, remote)
                    if rest.empty:
                        self._progress(f"commit to {self.repo_id}: already applied as {head[:8]}")
                        return _Committed(head, None)
                    batch, parent, ops = rest, head, self._operations(rest, local)
                    if kind == "conflict":
                        self._progress(
                            f"commit to {self.repo_id}: the branch moved ({short_error(exc)}); re-planned"
                        )
                        continue  # a new head to commit on: no reason to wait
                wait = self.backoff.delay(attempt, retry_after)
                self._progress(f"commit to {self.repo_id}: {short_error(exc)}; retrying in {wait:.1f} s")
                self._sleep(wait)
        raise AssertionError("unreachable")

    def verify(self, index_table: pa.Table) -> VerifyReport:
        """Load the published revision back from the Hub (fresh cache) and compare every byte."""
        return verify_published(self.load_id, index_table, revision=self.load_revision, token=self.api.token)

    def verify_after_publish(self, result: PublishResult, index_table: pa.Table) -> VerifyReport:
        """:meth:`verify_quick` (nothing downloaded), or the full read-back with ``hub.verify_download``.

        The full read-back checks the preview config's rows; the published preview files and
        preview.png are then also compared with what was published, by sha256, as the quick
        check does.
        """
        if self.options.verify_download:
            report = self.verify(index_table)
            if result.preview_files or result.preview_png is not None:
                remote = self.remote_files(self.published_head or self.head(self.load_revision))
                previews = VerifyReport(rows_expected=0, unit="published files")
                self._compare_previews(
                    remote,
                    len(result.shard_files),
                    result.preview_files,
                    result.preview_png,
                    previews,
                    result.source or LOCAL_FILES,
                )
                report.problems += previews.problems
            return report
        return self.verify_quick(
            result.shard_files,
            result.card,
            index_table,
            preview_files=result.preview_files,
            preview_png=result.preview_png,
            source=result.source or LOCAL_FILES,
        )

    def _compare_file(
        self,
        name: str,
        path: Path,
        there: RemoteFile | None,
        report: VerifyReport,
        source: FileSource = LOCAL_FILES,
    ) -> bool:
        """Whether the remote ``name`` is a copy of ``path`` (sha256, the LFS oid, and size).

        ``source`` gives the sha256 and size of ``path``: a local file's recorded digest, or the
        digest record of a remote store's file (nothing fetched).
        """
        if there is None:
            report.problems.append(
                f"{name} is missing from {self.url} (expected a copy of {source.shown(path)})"
            )
            return False
        if (there.sha256, there.size) != (digest := source.sha256(path), size := source.size(path)):
            found = "not an LFS file" if there.sha256 is None else f"found {short_digest(there.sha256)}"
            report.problems.append(
                f"{name} differs from {source.shown(path)}: sha256 expected {short_digest(digest)}, {found}; "
                f"size expected {size}, found {there.size}"
            )
            return False
        report.files_checked += 1
        report.bytes_checked += there.size
        return True

    def _compare_previews(
        self,
        remote: Mapping[str, RemoteFile],
        num_shards: int,
        preview_files: Sequence[Path],
        preview_png: bytes | None,
        report: VerifyReport,
        source: FileSource = LOCAL_FILES,
    ) -> None:
        """The remote preview files and preview.png against what was published; none left over."""
        names = published_names(num_shards, len(preview_files), preview_png is not None)
        for name, path in zip(names["preview"], preview_files, strict=True):
            self._compare_file(name, Path(path), remote.get(name), report, source)
        wanted = set(names["preview"])
        extra = sorted(p for p in remote if p.startswith("preview/") and p not in wanted)
        report.problems += [f"{shown(p)} is not a preview file of this publication" for p in extra]
        there = remote.get(PREVIEW_PNG)
        if preview_png is None:
            if there is not None:
                report.problems.append(f"{PREVIEW_PNG} of {self.url} is not part of this publication")
        elif not remote_matches(there, preview_png):
            found = (
                "missing" if there is None else f"found {there.blob_id[:DIGEST_CHARS]}… ({there.size} bytes)"
            )
            report.problems.append(
                f"{PREVIEW_PNG} of {self.url} is not the preview picture of this publication "
                f"({len(preview_png)} bytes expected, {found})"
            )
        else:
            report.files_checked += 1
            report.bytes_checked += there.size

    def verify_quick(
        self,
        shard_files: Sequence[Path],
        card: DatasetCard,
        index_table: pa.Table,
        *,
        preview_files: Sequence[Path] = (),
        preview_png: bytes | None = None,
        source: FileSource = LOCAL_FILES,
    ) -> VerifyReport:
        """Compare each published file with its local source by sha256 (LFS oid) and size, without downloading.

        Reads the commit the last publish left (``published_head``), so a later writer
        cannot make it pass or fail. The shard and preview files were checked against their
        sources when they were built; a full read-back is :meth:`verify`. With previews, the
        preview config must load (the card and the preview files' footers are read).
        From a remote store (``source``), the sha256, sizes and row counts are its digest
        records and footers: nothing is fetched again.
        """
        shard_files = [Path(p) for p in shard_files]
        n = len(shard_files)
        report = VerifyReport(rows_expected=index_table.num_rows, unit="published files")
        head = self.published_head or self.head(self.load_revision)
        remote = self.remote_files(head)
        for i, path in enumerate(shard_files):
            name = data_file_name(i, n)
            if self._compare_file(name, path, remote.get(name), report, source):
                report.rows_found += source.num_rows(path)
        published = {data_file_name(i, n) for i in range(n)}  # once, not per remote file
        extra = sorted(p for p in remote if p.startswith("data/") and p not in published)
        report.problems += [f"{shown(p)} is not a shard of this publication" for p in extra]
        self._compare_previews(remote, n, preview_files, preview_png, report, source)
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
            if preview_files:  # the card names the configs: the preview one must load, with every row
                report.problems += verify_preview_config(
                    self.load_id, index_table.num_rows, revision=head, token=self.api.token
                )
        return report

    def metadata(self, result: PublishResult | None = None) -> dict[str, object]:
        """The URL; with a publish result, its commits and pull request."""
        meta: dict[str, object] = {"destination": Link(self.url)}
        if result is not None:
            commits = "\n".join(f"- {url}" for url in result.commit_urls) or "no commit: nothing had changed"
            meta |= {"commits": Markdown(commits), "num_commits": len(result.commit_urls)}
            if result.pr_url:
                meta["pull_request"] = Link(result.pr_url)
        return meta

    # -- pre-uploading a shard ---------------------------------------------------------

    supports_preupload = True

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
