"""Faults of Hub calls: which are worth a retry, how long to wait, and what to tell the user.

``huggingface_hub`` retries uploads itself, but not commits or repo reads. Here every
call is retried on HTTP 429 (after its Retry-After), 5xx, dropped connections and timeouts, with
exponential backoff (:class:`Backoff`, :func:`call_with_retries`). 401, 403 and 404 are
permanent: they become :class:`HubAccessError` saying what to do (:func:`refusal`). No
message of this module holds the token, nor the query string of a presigned URL.
"""

from __future__ import annotations

import email.utils
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import TypeVar

import httpx2
from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

from ..destinations import DestinationError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: tries of a call whose connection cannot even be opened: an offline machine or a wrong
#: HF_ENDPOINT is said after a few seconds, not after the minutes of backoff an overloaded Hub gets
CONNECT_ATTEMPTS = 3


class HubAccessError(DestinationError):
    """A permanent refusal (401, 403, 404): retrying will not help; the message says what will."""


class HubTransientError(RuntimeError):
    """The Hub kept failing with transient faults after every retry; running again may succeed."""


class HubUnreachableError(HubTransientError):
    """No connection could be made to the Hub's host (DNS failure, refused, connect timeout)."""


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


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the response an error carries, if any."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def retry_after_seconds(exc: BaseException) -> float | None:
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


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the chain of its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_storage_upload(exc: BaseException) -> bool:
    """Whether the error came from sending bytes to the storage (LFS PUT or Xet), not from the Hub API."""
    return any(
        isinstance(c, RuntimeError) and str(c).startswith("Error while uploading") for c in causes(exc)
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
            for c in causes(exc)
            if isinstance(
                c, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError, socket.gaierror)
            )
        ),
        None,
    )


def no_answer(exc: BaseException) -> httpx2.TimeoutException | None:
    """The cause that says the Hub took a request but did not answer (or take its bytes) in time, if any.

    A read or write timeout (:mod:`.http` bounds every wait): retried like a refused connection, a
    few times only, since a Hub that is not answering is unlikely to start within seconds.
    """
    return next(
        (c for c in causes(exc) if isinstance(c, (httpx2.ReadTimeout, httpx2.WriteTimeout))),
        None,
    )


def _timeout_of(exc: httpx2.TimeoutException) -> float | None:
    """The read (or write) timeout the request that timed out had, in seconds."""
    try:
        limits = exc.request.extensions.get("timeout") or {}
    except RuntimeError:  # an error raised without its request
        return None
    kind = "write" if isinstance(exc, httpx2.WriteTimeout) else "read"
    return limits.get(kind)


def classify(exc: BaseException) -> tuple[str, float | None]:
    """``("transient" | "conflict" | "permanent", retry_after)`` of an error from a Hub call.

    The chain of causes is searched, because ``huggingface_hub`` wraps upload errors in
    a ``RuntimeError`` naming the file. Permanent: the Hub API refused (4xx other than
    408/409/412/429), or a bug (``TypeError``…). Everything else is retried: 429, 5xx,
    dropped connections, timeouts (read, write: see :func:`no_answer`), a storage PUT refused (its presigned URL may have expired: the
    retry asks for fresh ones), and unknown runtime errors (Xet reports network faults
    as a bare ``RuntimeError``). ``HF_HUB_OFFLINE=1`` is permanent: it stays set.
    """
    if any(isinstance(c, OfflineModeIsEnabled) for c in causes(exc)):
        return "permanent", None
    storage = _is_storage_upload(exc)
    for cause in causes(exc):
        status = http_status(cause)
        if status is not None:
            if status in (408, 429) or status >= 500:
                return "transient", retry_after_seconds(cause)
            if status in (409, 412):
                return "conflict", None
            return ("transient" if storage else "permanent"), None
        if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return "transient", None
    if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, NotImplementedError):
        return "transient", None
    return "permanent", None


_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def short_error(exc: BaseException) -> str:
    """The first line of an error, without URL query strings (presigned upload URLs carry signatures)."""
    text = str(exc).strip().splitlines()
    first = _QUERY.sub(r"\1?…", next((line for line in text if line.strip()), type(exc).__name__))
    status = http_status(exc)
    return first if status is None or str(status) in first else f"HTTP {status}: {first}"


def refusal(what: str, exc: BaseException, *, repo_url: str, repo_id: str, branch: str) -> HubAccessError:
    """A permanent error of a call on ``repo_url`` as a :class:`HubAccessError` that says what to do."""
    status = next((s for c in causes(exc) if (s := http_status(c)) is not None), None)
    if any(isinstance(c, OfflineModeIsEnabled) for c in causes(exc)):
        return HubAccessError(
            f"{what}: HF_HUB_OFFLINE is set, so {repo_url} cannot be reached; unset it (or set it to 0) "
            "to publish to the Hub."
        )
    if status == 401:
        return HubAccessError(
            f"{what}: the Hub rejected the credentials for {repo_url} (HTTP 401). Set HF_TOKEN to a "
            "valid access token with write permission (https://huggingface.co/settings/tokens)."
        )
    if status == 403:
        return HubAccessError(
            f"{what}: the token may not write to {repo_url} (HTTP 403). Use a token with write access "
            f"to the {repo_id.split('/')[0]!r} namespace, or ask its admins for the write role."
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubAccessError(f"{what}: {repo_url} has no branch {branch!r} (HTTP 404).")
    if status == 404 or isinstance(exc, RepositoryNotFoundError):
        return HubAccessError(
            f"{what}: {repo_url} was not found (HTTP 404). Check the name in the destination, and that "
            "the token belongs to a user who can see the repo."
        )
    if status is not None:
        return HubAccessError(f"{what} on {repo_url} failed (HTTP {status}): {short_error(exc)}")
    return HubAccessError(f"{what} on {repo_url} failed: {short_error(exc)}")


def call_with_retries(
    what: str,
    call: Callable[[], T],
    *,
    backoff: Backoff,
    explain: Callable[[str, BaseException], Exception],
    endpoint: str,
    target: str,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str], None] = log.info,
    attempts: int | None = None,
) -> T:
    """``call()``, retried on transient faults; permanent ones are raised as ``explain(what, exc)``.

    Args:
        what: the action, as messages name it ("list the remote files").
        call: the Hub call, without arguments.
        backoff: how many tries and how long to wait between them.
        explain: turns a permanent error into the error to raise (see :func:`refusal`).
        endpoint: the Hub's address, named when it cannot be reached at all.
        target: the repo id, named when the retries run out.
        sleep, progress: how to wait and where to say so (replaced in tests).
        attempts: fewer tries for calls that ``huggingface_hub`` already retries itself
            (uploads), so that retries do not multiply.

    Raises:
        HubUnreachableError: after :data:`CONNECT_ATTEMPTS` tries that reached no host, or that the
            Hub did not answer in time.
        HubTransientError: when every try failed with a transient fault.
    """
    tries = min(attempts or backoff.attempts, backoff.attempts)
    for attempt in range(tries):
        try:
            return call()
        except Exception as exc:
            kind, retry_after = classify(exc)
            if kind != "transient":
                raise explain(what, exc) from None
            if (cause := unreachable(exc)) is not None and attempt + 1 >= min(tries, CONNECT_ATTEMPTS):
                raise HubUnreachableError(
                    f"{what}: cannot reach the Hub at {endpoint} (network): {short_error(cause)}; "
                    f"check your connection and HF_ENDPOINT (tried {attempt + 1} times). Run again once "
                    "it is reachable: what is already uploaded is kept."
                ) from None
            if (late := no_answer(exc)) is not None and attempt + 1 >= min(tries, CONNECT_ATTEMPTS):
                seconds = _timeout_of(late)
                within = f"within {seconds:g} s" if seconds is not None else "in time"
                raise HubUnreachableError(
                    f"{what}: the Hub at {endpoint} did not answer {within} (tried {attempt + 1} times); "
                    "check HF_ENDPOINT and your connection, or allow a slow Hub more time with "
                    "BIDS_HUB_HTTP_TIMEOUT (seconds). Run again once it answers: what is already uploaded is kept."
                ) from None
            if attempt + 1 == tries:
                raise HubTransientError(
                    f"{what} on {target} failed {tries} times: {short_error(exc)}. "
                    "The Hub may be overloaded or rate-limiting this repo. Run again later: "
                    "what is already uploaded is kept."
                ) from None
            wait = backoff.delay(attempt, retry_after)
            progress(f"{what}: {short_error(exc)}; retrying in {wait:.1f} s")
            sleep(wait)
    raise AssertionError("unreachable")
