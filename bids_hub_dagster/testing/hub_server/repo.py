"""Storage of the test Hub: content-addressed blobs on disk, repositories with commits and refs.

Everything lives under one root directory::

    root/blobs/git/<sha1>      content of regular files, by git blob id
    root/blobs/lfs/<sha256>    content of LFS files, by sha256
    root/repos/<type>s/<namespace>/<name>.json   refs, commits (with their full file list), LFS objects
    root/tmp/                  uploads in flight

Commit, tree and blob ids are real git object ids (sha1 of the git object), so they look and behave like
the Hub's. A :class:`HubStore` reloads the repositories it finds under its root.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MB
_PR_REF = re.compile(r"refs/pr/(\d+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The .gitattributes of the Hub's initial commit (LFS patterns of a new repository).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.lz4 *.mds *.mlmodel *.model"
        " *.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors"
        " saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.pcm *.sam"
        " *.raw *.aac *.flac *.mp3 *.ogg *.wav *.bmp *.gif *.png *.tiff *.jpg *.jpeg *.webp *.mp4 *.webm"
    ).split()
)


class HubError(Exception):
    """An error answered to the client: HTTP ``status``, message, and optional Hub ``X-Error-Code``."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit  # sent as X-Repo-Commit (the Hub does so on a missing file)
        self.extra = extra  # more fields of the JSON body


def git_blob_id(content: bytes) -> str:
    """Git object id of a blob with ``content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git LFS pointer file that stands in the git tree for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    """Current UTC time in the Hub's format, e.g. ``2024-05-01T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def matches_pattern(pattern: str, path: str) -> bool:
    """Gitattributes / gitignore style match: patterns without ``/`` apply to the file name."""
    pattern = pattern.lstrip("/")
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns tracked by LFS (``filter=lfs``) in a .gitattributes file."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def ignore_patterns(gitignore: str) -> list[str]:
    """Patterns of a .gitignore file (negations are not supported and skipped)."""
    lines = (line.strip() for line in gitignore.splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith(("#", "!"))]


def validate_path(path: str) -> str:
    """Reject paths the Hub would refuse (absolute, empty segments, ``..``, inside ``.git``)."""
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments) or segments[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


@dataclass(frozen=True)
class FileEntry:
    """A file of a commit's tree. LFS files carry their sha256; ``oid`` is then the pointer's blob id."""

    oid: str
    size: int
    sha256: str | None = None
    pointer_size: int | None = None

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag, and as ``oid`` in preupload answers: sha256 for LFS, else blob id."""
        return self.sha256 or self.oid


@dataclass(frozen=True)
class Commit:
    """A commit: its git ids, metadata, full file list, and the paths it added/changed and deleted."""

    oid: str
    tree: str
    parents: tuple[str, ...]
    title: str
    message: str
    author: str
    date: str
    files: Mapping[str, FileEntry]
    trees: Mapping[str, str]  # directory path ("" for the root) -> git tree id
    added: tuple[str, ...]
    deleted: tuple[str, ...]

    def object_id(self, path: str) -> str | None:
        """Git id of the file or directory at ``path`` in this commit, None if absent."""
        entry = self.files.get(path)
        return entry.oid if entry is not None else self.trees.get(path)


@dataclass(frozen=True)
class FileOp:
    """One operation of a commit: ``kind`` is the NDJSON key (file, lfsFile, deletedFile, deletedFolder)."""

    kind: str
    path: str
    content: bytes = b""
    sha256: str = ""
    size: int | None = None


@dataclass
class Repo:
    """A repository: refs (branches and ``refs/pr/N``) pointing into its commits, and its LFS objects."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch, ``refs/heads/<branch>``, ``refs/pr/N`` or (abbreviated) commit id names."""
        revision = revision.removeprefix("refs/heads/")
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [commit for oid, commit in self.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from ``revision`` by first parents, newest first."""
        commit = self.resolve(revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.commits[commit.parents[0]] if commit.parents else None
        return out

    def last_commit(self, head: Commit, path: str) -> Commit:
        """Newest commit, from ``head`` back, that changed the file or directory at ``path``."""
        commit = head
        while commit.parents:
            parent = self.commits[commit.parents[0]]
            if parent.object_id(path) != commit.object_id(path):
                return commit
            commit = parent
        return commit

    @property
    def pull_request_refs(self) -> dict[str, str]:
        return {name: oid for name, oid in self.refs.items() if _PR_REF.fullmatch(name)}

    @property
    def branches(self) -> dict[str, str]:
        return {name: oid for name, oid in self.refs.items() if not _PR_REF.fullmatch(name)}


def _tree_ids(files: Mapping[str, FileEntry]) -> dict[str, str]:
    """Git tree ids of every directory of a flat file list (``""`` is the root)."""
    entries: dict[str, list[tuple[str, str, str]]] = {"": []}
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), [])
    for path, entry in files.items():
        parent, _, name = path.rpartition("/")
        entries[parent].append((name, "100644", entry.oid))
    ids: dict[str, str] = {}
    for directory in sorted(entries, key=lambda d: d.count("/") if d else -1, reverse=True):
        children = sorted(entries[directory], key=lambda e: e[0] + ("/" if e[1] == "40000" else ""))
        body = b"".join(
            f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for name, mode, oid in children
        )
        ids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        if directory:
            parent, _, name = directory.rpartition("/")
            entries[parent].append((name, "40000", ids[directory]))
    return ids


class HubStore:
    """Thread-safe storage of all repositories and blobs under ``root``; ``lock`` guards every change."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("blobs/git", "blobs/lfs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        for path in sorted((self.root / "repos").glob("*/*/*.json")):
            repo = self._load(path)
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # blobs

    def blob_path(self, entry: FileEntry) -> Path:
        """Where the content of ``entry`` is stored."""
        if entry.sha256 is not None:
            return self.root / "blobs" / "lfs" / entry.sha256
        return self.root / "blobs" / "git" / entry.oid

    def read(self, entry: FileEntry) -> bytes:
        return self.blob_path(entry).read_bytes()

    def temp_file(self) -> tuple[int, Path]:
        """A new temporary file (descriptor, path) for an upload in flight."""
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        return fd, Path(name)

    def add_lfs_object(self, repo: Repo, temp: Path, sha256: str) -> None:
        """Move an uploaded (and verified) file into the LFS store and make it part of ``repo``."""
        os.replace(temp, self.root / "blobs" / "lfs" / sha256)
        with self.lock:
            if sha256 not in repo.lfs_oids:
                repo.lfs_oids.add(sha256)
                # appended, not saved with the commits: a save per object grows with the repo
                lfs_list = self._repo_file(repo.repo_type, repo.repo_id).with_suffix(".lfs")
                lfs_list.parent.mkdir(parents=True, exist_ok=True)
                with open(lfs_list, "a", encoding="ascii") as out:
                    out.write(sha256 + "\n")

    def lfs_size(self, sha256: str) -> int | None:
        path = self.root / "blobs" / "lfs" / sha256
        return path.stat().st_size if path.is_file() else None

    def _put_regular(self, content: bytes) -> FileEntry:
        oid = git_blob_id(content)
        path = self.root / "blobs" / "git" / oid
        if not path.exists():
            fd, temp = self.temp_file()
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(temp, path)
        return FileEntry(oid=oid, size=len(content))

    # repositories

    def get(self, repo_type: str, repo_id: str) -> Repo | None:
        return self._repos.get((repo_type, repo_id))

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str, url: str) -> Repo:
        """Create a repository whose ``main`` branch holds an initial commit adding ``.gitattributes``.

        ``url`` is the repository's web URL, returned in the HTTP 409 answer if it already exists.
        """
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        names = repo_id.split("/")
        if len(names) != 2 or not all(_NAME.fullmatch(n) and "--" not in n and ".." not in n for n in names):
            raise HubError(400, f"Invalid repo id: {repo_id!r}")
        with self.lock:
            if self.get(repo_type, repo_id) is not None:
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now_iso())
            self._repos[(repo_type, repo_id)] = repo
            ops = [FileOp("file", ".gitattributes", content=DEFAULT_GITATTRIBUTES.encode())]
            commit = self._new_commit(repo, None, ops, title="initial commit", description="", author=author)
            repo.refs[DEFAULT_BRANCH] = commit.oid
            self._save(repo)
            return repo

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
            raise HubError(400, f"Invalid branch name: {branch!r}")
        with self.lock:
            start = repo.resolve(starting_point or DEFAULT_BRANCH)
            if start is None:
                raise HubError(404, f"Invalid rev id: {starting_point}", code="RevisionNotFound")
            if branch in repo.refs:
                raise HubError(409, "Reference already exists")
            repo.refs[branch] = start.oid
            self._save(repo)

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self.lock:
            if branch == DEFAULT_BRANCH:
                raise HubError(403, "Cannot delete the default branch")
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            del repo.refs[branch]
            self._save(repo)

    def commit(
        self,
        repo: Repo,
        revision: str,
        ops: Iterable[FileOp],
        *,
        title: str,
        description: str,
        author: str,
        parent_commit: str | None,
        create_pr: bool,
    ) -> tuple[Commit, str | None]:
        """Apply ``ops`` atomically on top of branch ``revision``; returns the commit and the PR ref if any.

        With ``create_pr`` the commit goes to a new ``refs/pr/N`` branched from ``revision``.
        ``parent_commit`` (if set) must be the current head of ``revision``, else HTTP 412.
        """
        branch = revision.removeprefix("refs/heads/")
        with self.lock:
            if branch not in repo.refs:
                if repo.resolve(branch) is not None:
                    raise HubError(400, f"Cannot commit to {revision}: it is not a branch")
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            head = repo.commits[repo.refs[branch]]
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            commit = self._new_commit(repo, head, ops, title=title, description=description, author=author)
            pr_ref = None
            if create_pr:
                numbers = [int(name.removeprefix("refs/pr/")) for name in repo.pull_request_refs]
                pr_ref = f"refs/pr/{max(numbers, default=0) + 1}"
                branch = pr_ref
            repo.refs[branch] = commit.oid
            self._save(repo)
            return commit, pr_ref

    def _new_commit(
        self,
        repo: Repo,
        parent: Commit | None,
        ops: Iterable[FileOp],
        *,
        title: str,
        description: str,
        author: str,
    ) -> Commit:
        files = dict(parent.files) if parent is not None else {}
        for op in ops:
            path = validate_path(op.path.strip("/") if op.kind == "deletedFolder" else op.path)
            if op.kind == "file":
                files[path] = self._put_regular(op.content)
            elif op.kind == "lfsFile":
                size = self.lfs_size(op.sha256) if op.sha256 in repo.lfs_oids else None
                if size is None:
                    raise HubError(
                        400,
                        "Your push was rejected because an LFS pointer pointed to a file that does not exist. "
                        f"Offending file: {path}",
                    )
                if op.size is not None and op.size != size:
                    raise HubError(400, f"LFS object {op.sha256} of {path} has size {size}, not {op.size}")
                pointer = lfs_pointer(op.sha256, size)
                files[path] = FileEntry(git_blob_id(pointer), size, op.sha256, len(pointer))
            elif op.kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            elif op.kind == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(
                        404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound"
                    )
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation: {op.kind!r}")
        for path in files:
            parts = path.split("/")
            if any("/".join(parts[:depth]) in files for depth in range(1, len(parts))):
                raise HubError(400, f"Invalid path in repo: a parent of {path!r} is a file")
        trees = _tree_ids(files)
        before = parent.files if parent is not None else {}
        parents = (parent.oid,) if parent is not None else ()
        message = title + (f"\n\n{description}" if description else "")
        stamp = f"{author} <{author}@users.noreply.huggingface.co> {int(time.time())} +0000"
        body = "".join(
            [
                f"tree {trees['']}\n",
                *(f"parent {p}\n" for p in parents),
                f"author {stamp}\ncommitter {stamp}\n",
            ]
        )
        raw = f"{body}\n{message}\n".encode()
        commit = Commit(
            oid=hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest(),
            tree=trees[""],
            parents=parents,
            title=title,
            message=description,
            author=author,
            date=now_iso(),
            files=files,
            trees=trees,
            added=tuple(sorted(p for p, e in files.items() if before.get(p) != e)),
            deleted=tuple(sorted(p for p in before if p not in files)),
        )
        repo.commits[commit.oid] = commit
        return commit

    # persistence

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = repo_id.split("/")
        return self.root / "repos" / f"{repo_type}s" / namespace / f"{name}.json"

    def _save(self, repo: Repo) -> None:
        path = self._repo_file(repo.repo_type, repo.repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "repo_type": repo.repo_type,
            "repo_id": repo.repo_id,
            "private": repo.private,
            "created_at": repo.created_at,
            "refs": repo.refs,
            "commits": [
                {
                    **{
                        k: getattr(c, k)
                        for k in ("oid", "tree", "parents", "title", "message", "author", "date")
                    },
                    **{k: getattr(c, k) for k in ("added", "deleted")},
                    "files": {p: [e.oid, e.size, e.sha256, e.pointer_size] for p, e in c.files.items()},
                }
                for c in repo.commits.values()
            ],
        }
        fd, temp = self.temp_file()
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(temp, path)

    @staticmethod
    def _load(path: Path) -> Repo:
        data = json.loads(path.read_text())
        repo = Repo(data["repo_type"], data["repo_id"], data["private"], data["created_at"], data["refs"])
        lfs_list = path.with_suffix(".lfs")
        repo.lfs_oids = set(lfs_list.read_text(encoding="ascii").split()) if lfs_list.is_file() else set()
        for c in data["commits"]:
            files = {p: FileEntry(*e) for p, e in c.pop("files").items()}
            for key in ("parents", "added", "deleted"):
                c[key] = tuple(c[key])
            repo.commits[c["oid"]] = Commit(**c, files=files, trees=_tree_ids(files))
        return repo
