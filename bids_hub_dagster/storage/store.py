"""Where the tool keeps its intermediate files: a local folder, or any fsspec URL.

A store holds files under *keys*, POSIX paths relative to its root
(``ds004884/hub_shards/shard-00042.parquet``).

**Local root** (a folder path): the files live in the folder exactly as they always have,
each with its ``<file>.sha256.json`` digest sidecar (:mod:`..publish.digests`); reading one
hands out the stored file itself, nothing is copied.

**Remote root** (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``memory://name``: any
fsspec URL): a file is written to local scratch first (atomically, its sha256 computed
once, as the local store does), then uploaded under its final key with ``put_file``. s3fs
sends a file of two chunks or more (50 MiB chunks unless ``chunksize`` says otherwise) as a
multipart upload, and S3 creates the object only when ``CompleteMultipartUpload``
succeeds: a failed upload is aborted by s3fs, a killed one leaves parts that belong to no
object (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims them), never
an object under the key. gcsfs uploads are likewise finalised only at the end. The digest
goes beside the object as the sidecar object ``<key>.sha256`` (JSON: sha256, size, and the
object's ETag or generation when the store reports one), deleted before an upload and
written after it: an object without its sidecar was never completely written by the tool
and counts as not stored, and an object whose size or ETag no longer matches its sidecar
was changed behind the tool's back. Nothing is keyed on inodes or mtimes.

Reading a remote file back (:meth:`Store.fetch`) copies it to scratch, hashing it as it
copies, and refuses a copy whose sha256 differs from the recorded one;
:meth:`Store.fetched` removes its copies afterwards, also after a failure or Ctrl-C.
A Hub publication copies nothing to plan: it reads each file's digest record and parquet
footer (:meth:`Store.footer`, a few KB) and fetches one commit batch at a time
(:mod:`..publish.sources`); a local-folder destination copies them all (it links them in).

Credentials and the endpoint come from the standard environment of the file system's
client: for S3, botocore's chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles) and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for
MinIO, R2 or a local test server, passed to s3fs explicitly so that any botocore version
honours it. ``BIDS_HUB_STORAGE_OPTIONS`` (JSON) adds options of the fsspec file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from ..dataset.parquet import atomic_path
from ..errors import UserError
from ..publish.digests import _stamp, _write, check_recorded, sha256_file, sidecar_path

#: bytes read and hashed at a time when copying a stored file
CHUNK = 8 * 2**20
#: bytes fetched at a time when reading a parquet footer of a remote file
FOOTER_BLOCK = 2**16
#: the suffix of a remote object's digest sidecar
DIGEST_SUFFIX = ".sha256"
SCRATCH_ENV = "BIDS_HUB_SCRATCH"
OPTIONS_ENV = "BIDS_HUB_STORAGE_OPTIONS"
#: where temporary folders of this tool are made inside the scratch root
SCRATCH_PREFIX = "bids-hub-scratch-"


class StoreError(UserError):
    """The store cannot be used, or a stored file is not what was written."""


def is_remote(root: str | os.PathLike) -> bool:
    """Whether a storage root is a URL of an fsspec file system other than the local one."""
    text = str(root)
    return "://" in text and not text.startswith("file://")


def scratch_root() -> Path:
    """``$BIDS_HUB_SCRATCH``, else the system's temporary folder."""
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A fresh folder under :func:`scratch_root`, removed with everything in it afterwards."""
    root = scratch_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
    except OSError as exc:
        raise StoreError(
            f"cannot make a scratch folder in {root} ({exc.strerror}); set {SCRATCH_ENV} to a writable "
            "local folder with room for a few shards."
        ) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record_known_digest(path: Path, sha256: str) -> None:
    """The digest sidecar of a file whose sha256 was computed as it was written (no second read)."""
    _write(path, {"stamp": _stamp(path), "sha256": sha256, "uploaded_to": []})


@dataclass(frozen=True)
class Recorded:
    """What was recorded when a file was stored: its sha256, size, and the object's version tag."""

    sha256: str
    size: int
    etag: str | None = None


@dataclass(frozen=True)
class StoredState:
    """One look at a stored key: whether it is there, its digest record, and what changed since."""

    exists: bool
    recorded: Recorded | None = None
    changed: str | None = None  # the object no longer matches its record: what differs
    etag: str | None = None  # the object's version tag now


class Store:
    """The interface of both stores; keys are POSIX paths relative to the root."""

    root: str
    remote: bool

    def url(self, key: str) -> str:
        """Where ``key`` is stored, as shown to users."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def record(self, key: str) -> Recorded | None:
        """The digest recorded when ``key`` was stored, if any."""
        raise NotImplementedError

    def changed(self, key: str) -> str | None:
        """What differs when a stored file no longer holds the bytes recorded (None: intact or absent)."""
        raise NotImplementedError

    def etag(self, key: str) -> str | None:
        """The stored object's version tag now (ETag, generation), where the store has one."""
        return None

    def state(self, key: str) -> StoredState:
        """Whether ``key`` is there, its record, and what changed since (one look at the store)."""
        if not self.exists(key):
            return StoredState(False)
        return StoredState(True, self.record(key), self.changed(key), self.etag(key))

    def stored(self, key: str) -> bool:
        """Whether ``key`` is there with a valid digest record and unchanged since."""
        state = self.state(key)
        return state.exists and state.recorded is not None and state.changed is None

    def put(self, local: Path, key: str, sha256: str, callback: Any = None) -> None:
        """Store the local file ``local`` (whose sha256 is ``sha256``) under ``key``."""
        raise NotImplementedError

    def upload(self, local: Path, key: str) -> str:
        """Store a small local file under ``key`` (hashed here); returns where it is stored."""
        self.put(local, key, sha256_file(local))
        return self.url(key)

    def fetch(self, key: str, scratch: Path) -> Path:
        """A local path holding the bytes of ``key`` (see the subclasses)."""
        raise NotImplementedError

    def open(self, key: str) -> IO[bytes]:
        """The stored file, opened for reading (a parquet footer is read without the rest)."""
        raise NotImplementedError

    def footer(self, key: str) -> pq.FileMetaData:
        """The parquet footer of a stored file (row counts, sizes, the schema and its metadata),
        read without the rest of the file: a few KB from a remote store, no copy.

        Raises:
            OSError, pyarrow.ArrowException: the file is missing or not a readable parquet file.
        """
        with self.open(key) as file:
            return pq.ParquetFile(file).metadata

    def delete(self, key: str) -> None:
        """Remove ``key`` and its digest record, if there."""
        raise NotImplementedError

    def list(self, folder: str, suffix: str = ".parquet") -> list[str]:
        """The keys directly in ``folder`` that end with ``suffix``, sorted."""
        raise NotImplementedError

    @contextlib.contextmanager
    def fetched(self, keys: Iterable[str], missing_ok: bool = False) -> Iterator[dict[str, Path]]:
        """Local copies of ``keys`` (the stored files themselves for a local root), removed afterwards.

        With ``missing_ok``, keys not stored are left out of the result instead of failing.
        """
        with scratch_folder() if self.remote else contextlib.nullcontext(Path()) as scratch:
            copies = {}
            for key in keys:
                if missing_ok and not self.exists(key):
                    continue
                copies[key] = self.fetch(key, scratch)
            yield copies


class LocalStore(Store):
    """A folder: files under their keys, digests in ``<file>.sha256.json`` sidecars (no copies)."""

    remote = False

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root)
        self.folder = Path(root)

    def path(self, key: str) -> Path:
        return self.folder.joinpath(*key.split("/"))

    def url(self, key: str) -> str:
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def record(self, key: str) -> Recorded | None:
        path = self.path(key)
        try:
            record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            return None
        return Recorded(record["sha256"], int((record.get("stamp") or {}).get("size", -1)))

    def changed(self, key: str) -> str | None:
        path = self.path(key)
        if not path.is_file():
            return None
        check = check_recorded(path)  # hashes again only when the file's stamp changed
        return None if check.ok else check.describe(path)

    def put(self, local: Path, key: str, sha256: str, callback: Any = None) -> None:
        target = self.path(key)
        if Path(local).resolve() == target.resolve():
            return  # written in place, its digest recorded as it was written
        with atomic_path(target) as tmp:
            shutil.copyfile(local, tmp)
        _record_known_digest(target, sha256)

    def fetch(self, key: str, scratch: Path) -> Path:
        """The stored file itself: a local root needs no copy."""
        return self.path(key)

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def delete(self, key: str) -> None:
        path = self.path(key)
        sidecar_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def list(self, folder: str, suffix: str = ".parquet") -> list[str]:
        where = self.path(folder)
        if not where.is_dir():
            return []
        return sorted(f"{folder}/{p.name}" for p in where.glob(f"*{suffix}"))


def _storage_options(protocol: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        # listings cached across calls would hide objects other processes wrote or removed
        options["use_listings_cache"] = False
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    extra = os.environ.get(OPTIONS_ENV)
    if extra:
        try:
            parsed = json.loads(extra)
        except ValueError as exc:
            raise StoreError(
                f"{OPTIONS_ENV} is not valid JSON ({exc}); give a JSON object of fsspec options."
            ) from None
        if not isinstance(parsed, dict):
            raise StoreError(f"{OPTIONS_ENV} must be a JSON object of fsspec options, not {extra!r}.")
        options |= parsed
    return options


_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
#: file systems of keys, not folders: nothing to make before a put
_OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")


class FsspecStore(Store):
    """Files under a fsspec URL, uploaded from scratch and fetched back to scratch (see the module docstring)."""

    remote = True

    def __init__(self, root: str, chunksize: int | None = None) -> None:
        import fsspec

        self.root = root.rstrip("/")
        self.protocol = root.split("://", 1)[0]
        self.chunksize = chunksize
        try:
            self.fs, base = fsspec.core.url_to_fs(self.root, **_storage_options(self.protocol))
        except (ImportError, ValueError) as exc:
            extra = _EXTRAS.get(self.protocol)
            hint = f"install it with: pip install 'bids-hub-dagster[{extra}]'" if extra else str(exc)
            raise StoreError(f"storage {root}: no file system for {self.protocol}:// ({hint}).") from None
        self.base = base.rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.base}/{key}" if self.base else key

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _info(self, key: str) -> dict | None:
        try:
            info = self.fs.info(self._full(key))
        except FileNotFoundError:
            return None
        return info if info.get("type", "file") == "file" else None

    def exists(self, key: str) -> bool:
        return self._info(key) is not None

    def etag(self, key: str) -> str | None:
        """The object's ETag (or generation) now: it names the version of a changed object."""
        info = self._info(key)
        return self._etag(info) if info is not None else None

    @staticmethod
    def _etag(info: dict) -> str | None:
        for name in ("ETag", "etag", "generation"):
            if info.get(name):
                return str(info[name])
        return None

    def record(self, key: str) -> Recorded | None:
        try:
            data = json.loads(self.fs.cat_file(self._full(key) + DIGEST_SUFFIX))
            return Recorded(str(data["sha256"]), int(data["size"]), data.get("etag"))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # not a sidecar the tool wrote: no record
            return None

    def changed(self, key: str) -> str | None:
        return self._changed(key, self._info(key), self.record(key))

    def state(self, key: str) -> StoredState:
        """One HEAD of the object and one GET of its sidecar."""
        info = self._info(key)
        if info is None:
            return StoredState(False)
        record = self.record(key)
        return StoredState(True, record, self._changed(key, info, record), self._etag(info))

    def _changed(self, key: str, info: dict | None, record: Recorded | None) -> str | None:
        if info is None or record is None:
            return None
        if int(info.get("size", -1)) != record.size:
            return (
                f"{self.url(key)} changed since it was stored ({record.size} bytes recorded, "
                f"{info.get('size')} now)"
            )
        etag = self._etag(info)
        if record.etag and etag and etag != record.etag:
            return f"{self.url(key)} changed since it was stored (its ETag is {etag}, {record.etag} was recorded)"
        return None

    def put(self, local: Path, key: str, sha256: str, callback: Any = None) -> None:
        """Upload ``local`` under ``key``, then its digest sidecar.

        The old sidecar goes first: until the new one is written, the key counts as not stored.
        """
        target = self._full(key)
        size = Path(local).stat().st_size
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(target + DIGEST_SUFFIX)
        kwargs: dict[str, Any] = {}
        if self.chunksize and self.protocol in ("s3", "s3a"):
            kwargs["chunksize"] = self.chunksize
        if callback is not None:
            kwargs["callback"] = callback
        if self.protocol not in _OBJECT_STORES:  # folders first (never a bucket: s3fs would create it)
            with contextlib.suppress(OSError):
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.put_file(str(local), target, **kwargs)
        except FileNotFoundError as exc:  # no such bucket
            raise StoreError(
                f"cannot upload to {self.url(key)}: {exc}. Check that the bucket of {self.root} exists "
                "(BIDS_HUB_STORAGE) and that AWS_ENDPOINT_URL names the right server."
            ) from None
        except PermissionError as exc:
            raise StoreError(
                f"cannot upload to {self.url(key)}: access denied ({exc}). Check the credentials in the "
                "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)."
            ) from None
        info = self._info(key) or {}
        record = {"sha256": sha256, "size": size, "etag": self._etag(info)}
        self.fs.pipe_file(target + DIGEST_SUFFIX, json.dumps(record, sort_keys=True).encode("utf-8"))

    def fetch(self, key: str, scratch: Path) -> Path:
        """Copy ``key`` to ``scratch/<key>``, verifying its sha256 as it copies; returns the copy.

        The copy gets its local digest sidecar, so the publishers never hash it again.

        Raises:
            StoreError: the key has no digest record, or the bytes differ from the recorded ones.
        """
        record = self.record(key)
        if record is None:
            raise StoreError(
                f"{self.url(key)} has no digest record ({self.url(key)}{DIGEST_SUFFIX}): it was not "
                "completely written by the tool. Materialize it again."
            )
        dest = Path(scratch).joinpath(*key.split("/"))
        digest, size = hashlib.sha256(), 0
        with atomic_path(dest) as tmp:
            try:
                with self.fs.open(self._full(key), "rb", block_size=CHUNK) as src, open(tmp, "wb") as out:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            except FileNotFoundError:
                raise StoreError(f"{self.url(key)} is missing; materialize it again.") from None
            if (digest.hexdigest(), size) != (record.sha256, record.size):
                raise StoreError(
                    f"{self.url(key)} changed since it was stored (sha256 {record.sha256[:12]}… recorded, "
                    f"{digest.hexdigest()[:12]}… read; {size} bytes read, {record.size} recorded); "
                    "materialize it again."
                )
        _record_known_digest(dest, record.sha256)
        return dest

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self._full(key), "rb")

    def footer(self, key: str) -> pq.FileMetaData:
        # small blocks: a footer read fetches its own bytes, not the default 50 MiB readahead
        with self.fs.open(self._full(key), "rb", block_size=FOOTER_BLOCK) as file:
            return pq.ParquetFile(file).metadata

    def delete(self, key: str) -> None:
        for name in (self._full(key) + DIGEST_SUFFIX, self._full(key)):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(name)

    def list(self, folder: str, suffix: str = ".parquet") -> list[str]:
        try:
            found = self.fs.ls(self._full(folder), detail=False)
        except FileNotFoundError:
            return []
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in found]
        return sorted(f"{folder}/{name}" for name in names if name.endswith(suffix))


def open_store(root: str | os.PathLike, chunksize: int | None = None) -> Store:
    """The store of a storage root: a local folder, or a fsspec URL (``file://`` is a local folder)."""
    text = str(root)
    if text.startswith("file://"):
        return LocalStore(text[len("file://") :])
    if is_remote(text):
        return FsspecStore(text, chunksize=chunksize)
    return LocalStore(text)
