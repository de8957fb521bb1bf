"""Blob stores: one narrow interface over fsspec, a registry by URL scheme.

A store only knows keys and bytes; :class:`conveyor.storage.archive.Archive` adds content
addressing, hashing and verification on top, identically for every backend.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import fsspec

from conveyor.storage.errors import ArchiveError

# Large enough for S3 multipart parts (minimum 5 MiB), small enough to bound memory per writer.
WRITE_BLOCK_SIZE = 8 * 1024 * 1024
READ_BLOCK_SIZE = 4 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# Writes go here first and are published (renamed or copied) only once complete.
TEMP_PREFIX = "tmp"


def temp_key() -> str:
    """A fresh key for an object being written; the sweeper purges old ones."""
    return f"{TEMP_PREFIX}/{uuid.uuid4().hex}"


class BlobStore:
    """Keys and bytes in one fsspec filesystem under a root path."""

    schemes: ClassVar[tuple[str, ...]] = ()
    # Whether keys are files of this machine (a call is a system call, not a request).
    is_local: ClassVar[bool] = False

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")

    def path(self, key: str) -> str:
        """The filesystem path of ``key``."""
        return f"{self.root}/{key}"

    def open_write(self, key: str) -> IO[bytes]:
        """A new object at ``key``, written sequentially."""
        self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(self.path(key), "wb", block_size=WRITE_BLOCK_SIZE)  # type: ignore[no-any-return]

    def open_read(self, key: str) -> IO[bytes]:
        """The object at ``key``, seekable."""
        return self.fs.open(self.path(key), "rb", block_size=READ_BLOCK_SIZE)  # type: ignore[no-any-return]

    def read_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the object, in chunks of at most ``chunk_size``."""
        with self.open_read(key) as handle:
            if start:
                handle.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = handle.read(want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def read_bytes(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object at once (meant for small slices)."""
        return b"".join(self.read_range(key, start, end))

    def size(self, key: str) -> int | None:
        """The object's size, or ``None`` when there is none."""
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            return None

    def publish(self, temp_key: str, final_key: str) -> None:
        """Move a finished temporary object to its final key in one step."""
        final = self.path(final_key)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(self.path(temp_key), final)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        try:
            self.fs.rm(self.path(key))
        except FileNotFoundError:
            return

    def discard(self, key: str) -> None:
        """Remove an unfinished write, best effort: a store failing already may keep it
        (the sweeper purges old temporary keys)."""
        try:
            self.delete(key)
        except Exception:
            return

    def check_written(self, temp: str, size: int) -> None:
        """Raise :class:`ArchiveError` (dropping ``temp``) unless it holds ``size`` bytes."""
        written = self.size(temp)
        if written != size:
            self.discard(temp)
            raise ArchiveError(f"the store {self.url} holds {written} of {size} bytes written")

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, without listing everything into memory at once."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return
        for directory, _dirs, files in self.fs.walk(base):
            rel = directory[len(self.root) :].strip("/") if directory.startswith(self.root) else ""
            for name in files:
                yield f"{rel}/{name}" if rel else name

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the object, when the store is a local folder."""
        return None

    def modified(self, key: str) -> float | None:
        """When the object was last written (epoch seconds), or ``None`` when it is gone."""
        try:
            return float(self.fs.modified(self.path(key)).timestamp())
        except FileNotFoundError:
            return None

    def purge(self, prefix: str, older_than_seconds: float) -> int:
        """Delete the objects under ``prefix`` older than the limit; how many went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for key in list(self.keys(prefix)):  # few: only writes in progress live there
            written = self.modified(key)
            if written is not None and written < cutoff:
                self.delete(key)
                removed += 1
        return removed

    def sync(self) -> None:
        """Make everything written so far durable (a no-op where writes are durable on close)."""

    def ping(self) -> None:
        """Raise :class:`ArchiveError` when the store cannot be reached."""
        try:
            self.fs.ls(self.root.split("/", 1)[0] if self.root else "/", detail=False)
        except Exception as exc:
            raise ArchiveError(f"archive {self.url} is not reachable: {exc}") from exc


class LocalStore(BlobStore):
    """A folder on this machine; publishing is an atomic rename on the same filesystem.

    Plain ``os`` calls replace fsspec here: ingest writes thousands of small blobs, and each
    saved syscall and object shows in files per second.
    """

    schemes = ("file", "")
    is_local = True

    def __init__(self, url: str, fs: Any, root: str) -> None:
        super().__init__(url, fs, root)
        Path(root).mkdir(parents=True, exist_ok=True)
        self._made: set[str] = set()

    def _ensure_parent(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0]
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)

    def open_write(self, key: str) -> IO[bytes]:
        """A plain file, created exclusively."""
        path = self.path(key)
        self._ensure_parent(path)
        return open(path, "xb")

    def open_read(self, key: str) -> IO[bytes]:
        """A plain file, opened for reading."""
        return open(self.path(key), "rb")

    def read_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        """``pread`` on a raw descriptor: a cart of thousands of small files opens each one,
        and a buffered file object per open costs more than reading 4 KiB."""
        fd = os.open(self.path(key), os.O_RDONLY)
        try:
            position = start
            while end is None or position < end:
                want = chunk_size if end is None else min(chunk_size, end - position)
                chunk = os.pread(fd, want, position)
                if not chunk:
                    break
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def read_bytes(self, key: str, start: int, end: int) -> bytes:
        """One ``pread`` on a raw descriptor."""
        fd = os.open(self.path(key), os.O_RDONLY)
        try:
            return os.pread(fd, end - start, start)
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        """``os.stat`` of the file."""
        try:
            return os.stat(self.path(key)).st_size
        except FileNotFoundError:
            return None

    def publish(self, temp_key: str, final_key: str) -> None:
        """Rename, which on one filesystem is atomic and never exposes a partial file."""
        final = self.path(final_key)
        self._ensure_parent(final)
        os.replace(self.path(temp_key), final)

    def delete(self, key: str) -> None:
        """Unlink; a missing file is not an error."""
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return

    def local_path(self, key: str) -> Path | None:
        """The file itself."""
        return Path(self.path(key))

    def modified(self, key: str) -> float | None:
        """The file's mtime."""
        try:
            return os.stat(self.path(key)).st_mtime
        except FileNotFoundError:
            return None

    def sync(self) -> None:
        """One filesystem-wide flush instead of an fsync per blob: ingest writes thousands."""
        os.sync()

    def ping(self) -> None:
        """Write and remove a probe file: permissions alone do not tell (root ignores them)."""
        probe = self.path(f"tmp/.ready-{os.getpid()}-{threading.get_ident()}")
        try:
            self._ensure_parent(probe)
            with open(probe, "wb") as handle:
                handle.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            raise ArchiveError(f"archive folder {self.root} cannot be written: {exc}") from exc


class MemoryStore(BlobStore):
    """fsspec's in-memory filesystem: for tests and throwaway servers."""

    schemes = ("memory",)

    def ping(self) -> None:
        """Always reachable."""


class S3Store(BlobStore):
    """An S3 bucket (or prefix); publishing is a server-side copy, which is atomic."""

    schemes = ("s3", "s3a")


class GCSStore(BlobStore):
    """A Google Cloud Storage bucket (or prefix); publishing is a server-side rewrite."""

    schemes = ("gs", "gcs")

    def publish(self, temp_key: str, final_key: str) -> None:
        """Rewrite the temporary object to its final name, then drop the temporary one.

        Not ``fs.mv``: gcsfs tries the ``moveTo`` API first, and where an endpoint does not
        implement it (501) retries with backoff for about 30 s before copying anyway.
        """
        self.fs.copy(self.path(temp_key), self.path(final_key))
        self.fs.rm(self.path(temp_key))


STORE_TYPES: dict[str, type[BlobStore]] = {}
StoreFactory = Callable[[str], BlobStore]


def register_store(store_type: type[BlobStore]) -> None:
    """Make ``store_type`` answer for its URL schemes."""
    for scheme in store_type.schemes:
        STORE_TYPES[scheme] = store_type


for _store_type in (LocalStore, MemoryStore, S3Store, GCSStore):
    register_store(_store_type)


def fsspec_options(scheme: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """fsspec storage options from ``key=value`` pairs (``endpoint_url``, ``region``, …)."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if scheme in ("s3", "s3a") and key in ("endpoint_url", "region"):
            client_key = "region_name" if key == "region" else key
            options.setdefault("client_kwargs", {})[client_key] = value
        else:
            options[key] = value
    return options


def open_store(url: str) -> BlobStore:
    """The store for ``url``, chosen by its scheme."""
    parts = urlsplit(url)
    store_type = STORE_TYPES.get(parts.scheme)
    if store_type is None:
        known = ", ".join(sorted(s for s in STORE_TYPES if s))
        raise ArchiveError(f"archive URL {url!r} has an unknown scheme; use one of {known}")
    if store_type is LocalStore:
        root = str(Path(parts.path if parts.scheme else url).absolute())
        return LocalStore(url, fsspec.filesystem("file"), root)
    options = fsspec_options(parts.scheme, parse_qsl(parts.query, keep_blank_values=False))
    # Not urlunsplit: it drops the empty authority of memory:///x, which fsspec then reads
    # as a local path.
    bare = url.split("?", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(bare, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise ArchiveError(f"archive URL {bare!r} cannot be opened: {exc}") from exc
    return store_type(url, fs, str(root))
