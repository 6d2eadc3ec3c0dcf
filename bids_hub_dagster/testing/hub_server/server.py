"""An offline Hugging Face Hub for tests: the HTTP protocol of ``huggingface_hub`` (LFS basic transfer).

:class:`HubServer` serves, on ``127.0.0.1``, the endpoints the unmodified ``huggingface_hub`` client and
``datasets`` call (with ``HF_HUB_DISABLE_XET=1``): repo creation and info, branches, refs, commits listing,
preupload, LFS batch / upload / verify, NDJSON commits, tree listing, paths-info and file download with
Range. It records every request and can inject faults (error statuses, dropped connections).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mimetypes
import os
import re
import secrets
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

from .repo import (
    DEFAULT_BRANCH,
    LFS_SIZE_THRESHOLD,
    Commit,
    FileOp,
    HubError,
    HubStore,
    Repo,
    ignore_patterns,
    lfs_patterns,
    matches_pattern,
)

DEFAULT_TOKEN = "hf_test_secret_token"
TREE_PAGE_SIZE = 1000  # entries per page of a tree listing, as on the Hub
EXPANDED_TREE_PAGE_SIZE = 50  # ... when expand=True
INVALID_TOKEN = "Invalid credentials in Authorization header"
AUTH_REQUIRED = "Authentication required: pass a token with write access (Authorization: Bearer <token>)"
_CHUNK = 1 << 20
_Endpoint = Callable[["_Request", dict[str, str]], "_Response"]
_URL_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass(eq=False)
class Fault:
    """A fault injected with :meth:`HubServer.inject`; ``fired`` counts how often it took effect."""

    method: str
    path_pattern: str
    status: int | None = None
    retry_after: float | None = None
    drop: bool = False
    drop_after_body: bool = False
    times: int = 1
    skip: int = 0
    body: str | None = None
    fired: int = 0
    seen: int = 0  # matching requests while the fault was not spent, including the skipped ones

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and re.search(self.path_pattern, path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """A request the server received; ``status`` is None when the connection was dropped unanswered."""

    method: str
    path: str  # URL path, percent-decoded, without the query
    query: str
    status: int | None
    bytes_in: int  # request body bytes read
    fault: Fault | None = None


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None  # streamed instead of ``body``: ``length`` bytes from ``offset``
    offset: int = 0
    length: int = 0


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(data).encode()
    return _Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)


def _error(
    status: int, message: str, code: str | None = None, commit: str | None = None, **extra: str
) -> _Response:
    """An error in the Hub's shape: ``{"error": ...}`` body, ``X-Error-Message`` and ``X-Error-Code``."""
    one_line = " ".join(message.split()).encode("latin-1", "replace").decode("latin-1")  # header-safe
    headers = {"X-Error-Message": one_line}
    if code is not None:
        headers["X-Error-Code"] = code
    if commit is not None:
        headers["X-Repo-Commit"] = commit
    return _json({"error": message, **extra}, status, headers)


class _Body:
    """The request body, read on demand (Content-Length or chunked transfer encoding)."""

    def __init__(self, rfile: BinaryIO, headers: Message) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.length = None if self.chunked else int(headers.get("Content-Length") or 0)
        self._left = self.length or 0  # bytes left in the body (plain) or in the current chunk (chunked)
        self._done = not self.chunked and self._left == 0
        self.bytes_read = 0

    def read(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes (at most one chunk); ``b""`` at the end of the body."""
        if self._done:
            return b""
        if self.chunked and self._left == 0:
            line = self._rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection in the middle of the request body")
            self._left = int(line.split(b";")[0].strip() or b"0", 16)
            if self._left == 0:
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise ConnectionError("client closed the connection in the middle of the request body")
        self._left -= len(data)
        self.bytes_read += len(data)
        if self._left == 0:
            if self.chunked:
                self._rfile.readline(65537)
            else:
                self._done = True
        return data

    def read_all(self) -> bytes:
        return b"".join(iter(self.read, b""))

    def drain(self) -> None:
        for _ in iter(self.read, b""):
            pass

    def read_part(self) -> None:
        """Read about half of the body (at least one byte): the point where a drop fault cuts an upload."""
        if self.length is not None:
            self.read(max(1, self.length // 2))
        else:
            self.read(1)


@dataclass
class _Request:
    method: str
    raw_path: str
    query: dict[str, list[str]]
    raw_query: str
    headers: Message
    body: _Body
    authenticated: bool = False
    read_only: bool = False  # authenticated with the server's read token

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true")

    def json(self) -> Any:
        try:
            return json.loads(self.body.read_all() or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err


_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/" + _REPO
_GIT_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git"
_REV = r"(?P<rev>refs/pr/\d+|[^/]+)"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # not a client going away
            self.hub._internal_error(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr log: requests are recorded in :attr:`HubServer.requests`."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        body = _Body(self.rfile, self.headers)
        fault = hub._take_fault(self.command, path)
        status: int | None = None
        try:
            if fault is not None and fault.drop:
                body.read_part()
                self.close_connection = True
                return
            if fault is not None and fault.status is not None:
                body.drain()
                response = _error(fault.status, fault.body or f"Injected fault: HTTP {fault.status}")
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = f"{fault.retry_after:g}"
            else:
                query = parse_qs(url.query, keep_blank_values=True)
                request = _Request(self.command, url.path, query, url.query, self.headers, body)
                response = hub._handle(request)
                body.drain()
            if fault is not None and fault.drop_after_body:
                self.close_connection = True
                return
            trace_id = self.headers.get("X-Amzn-Trace-Id") or self.headers.get("X-Request-Id")
            if trace_id:
                response.headers["X-Request-Id"] = trace_id
            self._send(response)
            status = response.status
        finally:
            hub._record(RequestRecord(self.command, path, url.query, status, body.bytes_read, fault))

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        length = response.length if response.file is not None else len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        with open(response.file, "rb") as source:
            source.seek(response.offset)
            left = length
            while left > 0:
                chunk = source.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{response.file} is shorter than the Content-Length sent")
                self.wfile.write(chunk)
                left -= len(chunk)


class HubServer:
    """An offline Hugging Face Hub on ``127.0.0.1``, storing its repositories under ``root``.

    Usage::

        with HubServer(tmp_path / "hub") as server:
            api = HfApi(endpoint=server.endpoint, token=server.token)
            api.create_repo("user/ds", repo_type="dataset")
            ...
            assert server.files("user/ds")["README.md"] == b"..."

    Writes need ``Authorization: Bearer <token>``; reads of public repositories do not; a wrong token is
    answered 401 on every endpoint, like the Hub. Inspection methods take ``repo_type="dataset"`` by default.
    Faults (see :meth:`inject`) match the percent-decoded URL path, e.g. ``/api/datasets/user/ds/commit/main``,
    ``/datasets/user/ds.git/info/lfs/objects/batch``, ``/lfs-upload/datasets/user/ds/<sha256>`` (LFS PUT),
    ``/datasets/user/ds/resolve/main/data/x.parquet``.
    """

    def __init__(
        self,
        root: Path,
        token: str = DEFAULT_TOKEN,
        *,
        username: str = "test-user",
        read_token: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.token = token
        self.read_token = read_token  # a valid token with the "read" role: every write answers 403
        self.username = username
        self.store = HubStore(self.root)
        self._secret = secrets.token_bytes(16)  # signs the LFS upload URLs (they carry no Authorization)
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lfs_uploads: list[tuple[str, int]] = []
        self._errors: list[str] = []
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._route_table()

    # lifecycle

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``; the server must be started."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        """Listen on a free port of 127.0.0.1 and serve from a background thread."""
        if self._httpd is not None:
            raise RuntimeError("HubServer is already started")
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the open (keep-alive) connections."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # inspection

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of server bugs (answered HTTP 500); should stay empty."""
        with self._lock:
            return list(self._errors)

    def lfs_uploads(self) -> list[tuple[str, int]]:
        """(sha256, size) of every LFS upload (PUT) that completed, in order."""
        with self._lock:
            return list(self._lfs_uploads)

    def commits(
        self, repo_id: str, revision: str = DEFAULT_BRANCH, *, repo_type: str = "dataset"
    ) -> list[Commit]:
        """Commits reachable from ``revision`` by first parents, oldest first (the initial commit first)."""
        with self.store.lock:
            repo = self._existing(repo_type, repo_id)
            self._commit_at(repo, revision)
            return repo.history(revision)[::-1]

    def head(self, repo_id: str, revision: str = DEFAULT_BRANCH, *, repo_type: str = "dataset") -> str:
        """Commit id that ``revision`` (branch, ``refs/pr/N``, commit id) points to."""
        with self.store.lock:
            return self._commit_at(self._existing(repo_type, repo_id), revision).oid

    def files(
        self, repo_id: str, revision: str = DEFAULT_BRANCH, *, repo_type: str = "dataset"
    ) -> dict[str, bytes]:
        """Content of every file of the repository at ``revision``, by path."""
        with self.store.lock:
            commit = self._commit_at(self._existing(repo_type, repo_id), revision)
        return {path: self.store.read(entry) for path, entry in sorted(commit.files.items())}

    def refs(self, repo_id: str, *, repo_type: str = "dataset") -> dict[str, str]:
        """Branches and pull-request refs (``refs/pr/N``) of the repository, with their commit ids."""
        with self.store.lock:
            return dict(self._existing(repo_type, repo_id).refs)

    def _existing(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.store.get(repo_type, repo_id)
        if repo is None:
            raise KeyError(f"no {repo_type} repository {repo_id!r} on the test Hub")
        return repo

    # faults

    def inject(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        drop: bool = False,
        drop_after_body: bool = False,
        times: int = 1,
        skip: int = 0,
        body: str | None = None,
    ) -> Fault:
        """Make the next requests matching ``method`` (or ``"*"``) and ``path_pattern`` fail.

        ``path_pattern`` is searched (``re.search``) in the percent-decoded URL path. The first ``skip``
        matching requests go through, the next ``times`` ones get the fault, then it is spent. Exactly one of:

        - ``status``: answer this HTTP status instead of handling the request, with the Hub's error shape
          (``body`` as the message) and ``Retry-After`` if ``retry_after`` is given. The client honours
          only integer Retry-After values, and waits Retry-After + 1 s.
        - ``drop``: close the connection without answering, before handling; an upload is cut after about
          half of its body was read.
        - ``drop_after_body``: handle the request fully (e.g. apply a commit), then close the connection
          without answering.
        """
        if sum((status is not None, drop, drop_after_body)) != 1:
            raise ValueError("inject needs exactly one of status=, drop=True, drop_after_body=True")
        if retry_after is not None and status is None:
            raise ValueError("retry_after goes with status=")
        re.compile(path_pattern)
        fault = Fault(
            method.upper(), path_pattern, status, retry_after, drop, drop_after_body, times, skip, body
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault, spent or not."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.fired < fault.times and fault.matches(method, path):
                    fault.seen += 1
                    if fault.seen > fault.skip:
                        fault.fired += 1
                        return fault
        return None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _internal_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    # request handling

    def _handle(self, request: _Request) -> _Response:
        try:
            authorization = request.headers.get("Authorization")
            if authorization is not None:
                scheme, _, token = authorization.partition(" ")
                token = token.strip()
                read_only = self.read_token is not None and hmac.compare_digest(token, self.read_token)
                if scheme.lower() != "bearer" or not (read_only or hmac.compare_digest(token, self.token)):
                    raise HubError(401, INVALID_TOKEN)
                request.authenticated = True
                request.read_only = read_only
            for methods, pattern, handler in self._routes:
                match = pattern.fullmatch(request.raw_path)
                if match is not None and request.method in methods:
                    groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return handler(request, groups)
            raise HubError(404, f"Sorry, we can't find the page you are looking for: {request.raw_path}")
        except HubError as err:
            return _error(err.status, err.message, err.code, err.commit, **err.extra)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: nothing to answer
        except Exception:
            self._internal_error(traceback.format_exc())
            return _error(500, "Internal error of the test Hub server (see HubServer.internal_errors)")

    def _route_table(self) -> list[tuple[tuple[str, ...], re.Pattern[str], _Endpoint]]:
        """(methods, URL path regex on the raw path, handler) of every endpoint."""
        table: list[tuple[str, str, _Endpoint]] = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", _API_REPO + r"/tree/" + _REV + r"(?:/(?P<path>.*))?", self._tree),
            ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)", self._list_commits),
            ("GET", _API_REPO + r"/refs", self._refs),
            ("POST DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)", self._branch),
            ("POST", _GIT_REPO + r"/info/lfs/objects/batch", self._lfs_batch),
            ("POST", _GIT_REPO + r"/info/lfs/objects/verify", self._lfs_verify),
            (
                "PUT",
                r"/lfs-upload/(?P<type>models|datasets|spaces)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})",
                self._lfs_put,
            ),
            (
                "GET HEAD",
                r"/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"/resolve/" + _REV + r"/(?P<path>.+)",
                self._resolve,
            ),
        ]
        return [(tuple(methods.split()), re.compile(pattern), handler) for methods, pattern, handler in table]

    def _repo(self, request: _Request, groups: dict[str, str], *, write: bool = False) -> Repo:
        """The repository of the URL, if the request may read (or ``write``) it; else the Hub's 401/404."""
        if write and not request.authenticated:
            raise HubError(401, AUTH_REQUIRED)
        if write and request.read_only:
            raise HubError(
                403, "You don't have the rights to write to this repository (the token is read-only)"
            )
        repo = self.store.get(_URL_TYPES[groups.get("type")], f"{groups['ns']}/{groups['name']}")
        if repo is None or (repo.private and not request.authenticated):
            # Like the Hub: 401 to anonymous requests (private and missing repos look the same), else 404
            raise HubError(
                401 if not request.authenticated else 404, "Repository not found", code="RepoNotFound"
            )
        return repo

    @staticmethod
    def _commit_at(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _whoami(self, request: _Request, groups: dict[str, str]) -> _Response:
        if not request.authenticated:
            raise HubError(401, AUTH_REQUIRED)
        return _json(
            {
                "type": "user",
                "id": hashlib.sha1(self.username.encode()).hexdigest()[:24],
                "name": self.username,
                "fullname": self.username,
                "email": f"{self.username}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": "read" if request.read_only else "write"},
                },
            }
        )

    def _create_repo(self, request: _Request, groups: dict[str, str]) -> _Response:
        if not request.authenticated:
            raise HubError(401, AUTH_REQUIRED)
        if request.read_only:
            raise HubError(403, "You don't have the rights to create a repository (the token is read-only)")
        payload = request.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        private = payload.get("visibility") == "private" or payload.get("private") is True
        url = f"{self.endpoint}/{_URL_PREFIXES.get(repo_type, '')}{repo_id}"
        self.store.create_repo(repo_type, repo_id, private=private, author=self.username, url=url)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, request: _Request, groups: dict[str, str]) -> _Response:
        request.json()
        return _json({"errors": [], "warnings": []})

    def _repo_info(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        with self.store.lock:
            commit = self._commit_at(repo, groups.get("rev", DEFAULT_BRANCH))
        blobs = request.flag("blobs")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.sha256 is not None:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        expand = request.query.get("expand")
        if expand:
            info = {key: value for key, value in info.items() if key in (*expand, "_id", "id")}
        return _json(info)

    def _preupload(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups, write=True)
        payload = request.json()
        with self.store.lock:
            commit = self._commit_at(repo, groups["rev"])

        def text(path: str) -> str:
            entry = commit.files.get(path)
            return self.store.read(entry).decode(errors="replace") if entry is not None else ""

        lfs = lfs_patterns(text(".gitattributes"))
        gitignore = payload.get("gitIgnore")
        ignored = ignore_patterns(gitignore if gitignore is not None else text(".gitignore"))
        answers = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample") or "")
            is_lfs = (
                any(matches_pattern(p, path) for p in lfs) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample
            )
            answer = {
                "path": path,
                "uploadMode": "lfs" if is_lfs else "regular",
                "shouldIgnore": any(matches_pattern(p, path) for p in ignored),
            }
            if (existing := commit.files.get(path)) is not None:
                answer["oid"] = existing.etag
            answers.append(answer)
        return _json({"files": answers, "commitOid": commit.oid})

    def _commit(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups, write=True)
        header: dict[str, Any] = {}
        ops = []
        for line in request.body.read_all().splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError) as err:
                raise HubError(400, f"Invalid NDJSON line in commit payload: {line[:200]!r}") from err
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {value['path']}")
                ops.append(FileOp("file", value["path"], content=base64.b64decode(value["content"])))
            elif key == "lfsFile":
                ops.append(FileOp("lfsFile", value["path"], sha256=value["oid"], size=value.get("size")))
            else:
                ops.append(FileOp(key, value["path"]))
        if not header.get("summary"):
            raise HubError(400, "Missing commit summary (NDJSON header line)")
        commit, pr_ref = self.store.commit(
            repo,
            groups["rev"],
            ops,
            title=header["summary"],
            description=header.get("description") or "",
            author=self.username,
            parent_commit=header.get("parentCommit"),
            create_pr=request.flag("create_pr"),
        )
        return _json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "commitMessage": commit.title,
                "hookOutput": "",
                "pullRequestUrl": (
                    f"{self._repo_url(repo)}/discussions/{pr_ref.removeprefix('refs/pr/')}"
                    if pr_ref
                    else None
                ),
            }
        )

    @staticmethod
    def _path_info(repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        entry = commit.files.get(path)
        if entry is None:
            info: dict[str, Any] = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
        else:
            info = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.sha256 is not None:
                info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            last = repo.last_commit(commit, path)
            info["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return info

    def _tree(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        path = groups.get("path", "").strip("/")
        expand = request.flag("expand")
        with self.store.lock:
            commit = self._commit_at(repo, groups["rev"])
            if path not in commit.trees:
                raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", commit=commit.oid)
            prefix = f"{path}/" if path else ""
            paths = sorted(p for p in [*commit.trees, *commit.files] if p and p.startswith(prefix))
            if not request.flag("recursive"):
                paths = [p for p in paths if "/" not in p[len(prefix) :]]
            start = int(request.param("cursor") or 0)
            size = EXPANDED_TREE_PAGE_SIZE if expand else TREE_PAGE_SIZE
            page = [self._path_info(repo, commit, p, expand) for p in paths[start : start + size]]
        headers = {}
        if start + size < len(paths):
            params = [
                (k, v) for k, v in parse_qsl(request.raw_query, keep_blank_values=True) if k != "cursor"
            ]
            query = urlencode([*params, ("cursor", start + size)])
            headers["Link"] = f'<{self.endpoint}{request.raw_path}?{query}>; rel="next"'
        return _json(page, headers=headers)

    def _paths_info(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        form = parse_qs(request.body.read_all().decode(), keep_blank_values=True)
        expand = (form.get("expand") or [""])[-1].lower() in ("1", "true")
        with self.store.lock:
            commit = self._commit_at(repo, groups["rev"])
            paths = dict.fromkeys(p.strip("/") for p in form.get("paths", []))
            found = [p for p in paths if p in commit.files or (p and p in commit.trees)]
            return _json([self._path_info(repo, commit, p, expand) for p in found])

    def _list_commits(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        with self.store.lock:
            self._commit_at(repo, groups["rev"])
            history = repo.history(groups["rev"])
        return _json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author}],
                    "date": c.date,
                }
                for c in history
            ]
        )

    def _refs(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        with self.store.lock:
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()
            ]
            prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in repo.pull_request_refs.items()]
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _branch(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups, write=True)
        if request.method == "DELETE":
            self.store.delete_branch(repo, groups["branch"])
        else:
            self.store.create_branch(repo, groups["branch"], request.json().get("startingPoint"))
        return _json({})

    def _upload_signature(self, repo: Repo, oid: str, size: int) -> str:
        message = f"{repo.repo_type}/{repo.repo_id}/{oid}/{size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _lfs_batch(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups, write=True)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(422, "Only the LFS upload operation is supported by the test Hub")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item.get("oid"), item.get("size")
            answer: dict[str, Any] = {"oid": oid, "size": size}
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                answer["error"] = {
                    "code": 422,
                    "message": "Invalid object (oid must be a sha256, size an int)",
                }
            elif oid not in repo.lfs_oids:
                prefix = f"{self.endpoint}/{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}"
                upload = f"{self.endpoint}/lfs-upload/{repo.repo_type}s/{repo.repo_id}/{oid}"
                query = urlencode({"size": size, "sig": self._upload_signature(repo, oid, size)})
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{upload}?{query}", "expires_at": "2999-01-01T00:00:00Z"},
                    "verify": {"href": f"{prefix}.git/info/lfs/objects/verify"},
                }
            objects.append(answer)
        return _json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_verify(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups, write=True)
        payload = request.json()
        oid, size = payload.get("oid"), payload.get("size")
        if oid not in repo.lfs_oids or self.store.lfs_size(oid) != size:
            raise HubError(404, f"LFS object {oid} of size {size} was not uploaded")
        return _json({"success": True})

    def _lfs_put(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo_type, repo_id = _URL_TYPES[groups["type"]], f"{groups['ns']}/{groups['name']}"
        repo, oid, size = self.store.get(repo_type, repo_id), groups["oid"], int(request.param("size") or -1)
        signature = request.param("sig") or ""
        if repo is None or not hmac.compare_digest(signature, self._upload_signature(repo, oid, size)):
            raise HubError(403, "Invalid or expired signature of the upload URL")
        fd, temp = self.store.temp_file()
        sha256, md5 = hashlib.sha256(), hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(request.body.read, b""):
                    sha256.update(chunk)
                    md5.update(chunk)
                    out.write(chunk)
            received = request.body.bytes_read
            if received != size:
                raise HubError(400, f"Uploaded {received} bytes, the LFS batch announced {size}")
            if sha256.hexdigest() != oid:
                raise HubError(400, f"sha256 of the uploaded content is {sha256.hexdigest()}, not {oid}")
            self.store.add_lfs_object(repo, temp, oid)
        finally:
            temp.unlink(missing_ok=True)
        with self._lock:
            self._lfs_uploads.append((oid, size))
        return _Response(200, {"ETag": f'"{md5.hexdigest()}"'})

    def _resolve(self, request: _Request, groups: dict[str, str]) -> _Response:
        repo = self._repo(request, groups)
        path = groups["path"]
        with self.store.lock:
            commit = self._commit_at(repo, groups["rev"])
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", commit=commit.oid)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if entry.sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status, offset, length = 200, 0, entry.size
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", request.headers.get("Range") or "")
        if match is not None and any(match.groups()):
            first, last = match.groups()
            if first:
                offset, end = int(first), min(int(last), entry.size - 1) if last else entry.size - 1
            else:
                offset, end = max(entry.size - int(last), 0), entry.size - 1
            if offset >= entry.size or end < offset:
                return _Response(416, {**headers, "Content-Range": f"bytes */{entry.size}"})
            status, length = 206, end - offset + 1
            headers["Content-Range"] = f"bytes {offset}-{end}/{entry.size}"
        return _Response(status, headers, file=self.store.blob_path(entry), offset=offset, length=length)
