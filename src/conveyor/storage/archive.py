"""The archive: blobs named by their sha256, written atomically and verified.

A writer streams bytes to a temporary key while hashing them, checks the size it wrote
against what the store holds, then publishes the blob under ``blobs/aa/<sha256>``. A blob
that is already there is not written twice. Nothing a reader can see is ever partial.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from isal.isal_zlib import crc32

from conveyor.storage.errors import ArchiveError, BlobNotFound, write_error
from conveyor.storage.stores import BlobStore, open_store, temp_key

CHUNK_SIZE = 1024 * 1024
BLOBS = "blobs"  # the folder (key prefix) of the blobs, one level of 256 folders below
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredBlob:
    """What the archive holds after a write: the blob's name, size and the hashes asked for."""

    sha256: str
    size: int
    hashes: dict[str, str] = field(default_factory=dict)
    created: bool = True


def blob_key(sha256: str) -> str:
    """The store key of a blob: one level of 256 folders, so new blobs rarely need a mkdir."""
    if not SHA256_PATTERN.fullmatch(sha256):
        raise ArchiveError(f"{sha256!r} is not a sha256 hex digest")
    return f"{BLOBS}/{sha256[:2]}/{sha256}"


def _lay_out(store: BlobStore) -> None:
    """Give a new folder archive its 256 blob folders at once.

    Made on demand instead, each of the first blobs would pay a failed rename and a mkdir:
    adopting 1,000 files into a new archive took 30-37 ms instead of 15 ms. An archive that
    has its ``blobs`` folder is left as it is (a missing folder is still made on demand), and
    so is one that cannot be written now: only its first write needs to say why.
    """
    blobs = store.local_path(BLOBS)
    if blobs is None or blobs.exists():
        return
    with contextlib.suppress(OSError):
        for prefix in range(256):
            (blobs / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)


class Crc32:
    """CRC-32 with hashlib's update/hexdigest interface, so it rides along with the hashes.

    ISA-L's CRC-32 (``crc32``, the same values as zlib's) runs at about 50 GB/s on this
    project's machines against zlib's 6: a GiB mirrored or ingested spends 0.02 s of CPU on
    its zip CRC instead of 0.17 s.
    """

    def __init__(self) -> None:
        self.value = 0

    def update(self, chunk: bytes) -> None:
        """Fold ``chunk`` in."""
        self.value = crc32(chunk, self.value)

    def hexdigest(self) -> str:
        """Eight hex digits."""
        return f"{self.value:08x}"


def new_hasher(name: str) -> Crc32 | Any:
    """A hasher for a hashlib name, or for ``crc32``."""
    return Crc32() if name == "crc32" else hashlib.new(name)


class BlobWriter:
    """Streams one blob into the archive; use as a context manager, then read :attr:`result`."""

    def __init__(self, archive: Archive, extra_hashes: Iterable[str] = ()) -> None:
        self._archive = archive
        self._temp_key = temp_key()
        self._sha256 = hashlib.sha256()
        # crc32 always: zip bundles need it, and it costs little next to sha256.
        names = {"crc32", *extra_hashes} - {"sha256"}
        self._extra = {name: new_hasher(name) for name in names}
        self._size = 0
        self._file: IO[bytes] | None = None
        self.result: StoredBlob | None = None

    def __enter__(self) -> BlobWriter:
        try:
            self._file = self._archive.store.open_write(self._temp_key)
        except Exception as exc:  # OSError locally; botocore/gcsfs errors remotely
            raise write_error(exc, "cannot write to the archive") from exc
        return self

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` and hash it."""
        assert self._file is not None, "BlobWriter used outside its context"
        self._sha256.update(chunk)
        for hasher in self._extra.values():
            hasher.update(chunk)
        self._size += len(chunk)
        try:
            self._file.write(chunk)
        except Exception as exc:  # OSError locally; botocore/gcsfs errors remotely
            raise write_error(exc, "cannot write to the archive") from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        try:
            self._file.close()
        except Exception as close_error:  # a remote store uploads its last part on close
            self._archive.store.discard(self._temp_key)
            if exc is None:
                raise write_error(close_error, "cannot write to the archive") from close_error
        if exc is not None:
            self._archive.store.discard(self._temp_key)
            return
        try:
            self.result = self._publish()
        except ArchiveError:
            raise
        except Exception as publish_error:
            self._archive.store.discard(self._temp_key)
            raise ArchiveError(f"cannot publish a blob: {publish_error}") from publish_error

    def _publish(self) -> StoredBlob:
        hashes = {name: hasher.hexdigest() for name, hasher in self._extra.items()}
        hashes["sha256"] = self._sha256.hexdigest()
        return self._archive.publish_temp(self._temp_key, self._size, hashes)


class Archive:
    """Content-addressed blobs in one :class:`BlobStore`."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        _lay_out(store)

    @property
    def url(self) -> str:
        """Where the blobs live."""
        return self.store.url

    def writer(self, extra_hashes: Iterable[str] = ()) -> BlobWriter:
        """A writer for one new blob that also computes ``extra_hashes`` (hashlib names)."""
        return BlobWriter(self, extra_hashes)

    def put_chunks(self, chunks: Iterable[bytes], extra_hashes: Iterable[str] = ()) -> StoredBlob:
        """Store the concatenation of ``chunks``."""
        with self.writer(extra_hashes) as writer:
            for chunk in chunks:
                writer.write(chunk)
        assert writer.result is not None
        return writer.result

    def publish_temp(self, temp: str, size: int, hashes: dict[str, str]) -> StoredBlob:
        """Give a finished temporary object its name (``hashes["sha256"]``), unless the
        archive holds that blob already."""
        self.store.check_written(temp, size)
        digest = hashes["sha256"]
        final = blob_key(digest)
        held = self.store.size(final) == size
        # A local folder renews a blob it holds by a rename (see _rename_into); an object
        # store would copy all of it, so there the held blob stays as it is.
        if held and self.store.local_path(final) is None:
            self.store.delete(temp)
            return StoredBlob(digest, size, hashes, created=False)
        self.store.publish(temp, final)
        return StoredBlob(digest, size, hashes, created=not held)

    def adopt(self, path: Path, hashes: dict[str, str], size: int | None = None) -> StoredBlob:
        """Take in a finished local file whose ``sha256`` (and ``crc32``, and ``size`` when
        given) are known.

        A folder archive on the same filesystem gets it by one rename to the blob's name,
        without copying a byte; any other store streams it. The file is gone afterwards
        either way.
        """
        if size is None:
            size = path.stat().st_size
        final = self.store.local_path(blob_key(hashes["sha256"]))
        if final is not None:
            try:
                return _rename_into(path, final, size, hashes)
            except OSError:
                pass  # another filesystem: streamed below
        with path.open("rb") as handle:
            blob = self.put_chunks(iter(lambda: handle.read(CHUNK_SIZE), b""))
        path.unlink(missing_ok=True)
        if blob.sha256 != hashes["sha256"]:
            raise ArchiveError(f"{path.name} changed on disk before it was archived")
        return blob

    def put_bytes(self, data: bytes) -> StoredBlob:
        """Store a small blob held in memory."""
        return self.put_chunks([data])

    def size(self, sha256: str) -> int | None:
        """The blob's size, or ``None`` when the archive does not hold it."""
        return self.store.size(blob_key(sha256))

    def exists(self, sha256: str) -> bool:
        """True when the archive holds the blob."""
        return self.size(sha256) is not None

    def open(self, sha256: str) -> IO[bytes]:
        """The blob as a seekable binary file."""
        try:
            return self.store.open_read(blob_key(sha256))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} is not in the archive") from None

    def copy_to(self, sha256: str, target: Path) -> None:
        """Write the blob to the local file ``target`` (a copy: never a link to the blob)."""
        with self.open(sha256) as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, CHUNK_SIZE)

    def read_range(
        self, sha256: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the blob, in chunks."""
        try:
            yield from self.store.read_range(blob_key(sha256), start, end, chunk_size)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} is not in the archive") from None

    def slice_reader(self, sha256: str) -> Callable[[int, int], bytes]:
        """A reader of small slices ``[start, end)`` of one blob, returned at once.

        The key is checked and built once: a bundle of many small files reads each slice
        through here, and a regular-expression check per read shows in its throughput.
        """
        key = blob_key(sha256)
        read = self.store.read_bytes

        def read_slice(start: int, end: int) -> bytes:
            try:
                return read(key, start, end)
            except FileNotFoundError:
                raise BlobNotFound(f"blob {sha256} is not in the archive") from None

        return read_slice

    def delete(self, sha256: str) -> None:
        """Remove the blob; the caller has made sure nothing references it."""
        self.store.delete(blob_key(sha256))

    def blobs(self) -> Iterator[str]:
        """The sha256 of every blob, streamed."""
        for key in self.store.keys("blobs"):
            name = key.rsplit("/", 1)[-1]
            if SHA256_PATTERN.fullmatch(name):
                yield name

    def purge_temp(self, older_than_seconds: float) -> int:
        """Delete temporary objects older than the limit: writes whose writer died."""
        return self.store.purge("tmp", older_than_seconds)

    def sync(self) -> None:
        """Make every blob written so far durable before a transaction refers to it."""
        self.store.sync()

    def ping(self) -> None:
        """Raise :class:`ArchiveError` when the archive cannot be reached."""
        self.store.ping()

    def describe(self) -> dict[str, Any]:
        """What to show an operator about this archive."""
        return {"url": self.url, "backend": type(self.store).__name__}


def open_archive(url: str) -> Archive:
    """The archive at ``url`` (``file://``, ``memory://``, ``s3://``, ``gs://``)."""
    return Archive(open_store(url))


def _move(path: Path, target: Path) -> None:
    """Rename ``path`` to ``target``, making the target's folder only when it is missing."""
    try:
        path.replace(target)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)


def _rename_into(path: Path, final: Path, size: int, hashes: dict[str, str]) -> StoredBlob:
    """Give a complete, checked file its blob name by a rename (atomic on one filesystem):
    no temporary name is needed in between.

    A blob the archive holds already is replaced by the same bytes rather than kept: the
    new copy is young, so `archive gc` cannot take it for an abandoned one before the
    reference that reuses it is written.
    """
    try:
        held = final.stat().st_size
    except FileNotFoundError:
        held = None
    _move(path, final)
    return StoredBlob(hashes["sha256"], size, hashes, created=held != size)
