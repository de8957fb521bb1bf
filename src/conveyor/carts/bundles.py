"""Built bundles in the bundle store: written once under a temporary key, then published.

A reader never sees a partial bundle: bytes go to ``tmp/<random>``, the written size is
checked against what was sent, and only then is the object moved to its final key.
"""

from __future__ import annotations

import errno
import hashlib
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from conveyor.carts.layout import MANIFEST_NAME, BundleEntry
from conveyor.storage.errors import ArchiveError
from conveyor.storage.stores import BlobStore

NO_SPACE = "No Space Available"
TEMP_PREFIX = "tmp"


class NoSpace(Exception):
    """The bundle store ran out of space while a bundle was written."""


@dataclass(frozen=True)
class WrittenBundle:
    """A published bundle: its key, size and the sha256 of its bytes."""

    key: str
    size: int
    sha256: str


def bundle_key(request_hash: str, extension: str) -> str:
    """Where the bundle of a request is kept."""
    return f"bundles/{request_hash[:2]}/{request_hash}.{extension}"


class _CountingSink:
    """A write-only file object that hashes, counts and forwards what it is given."""

    def __init__(self, target: IO[bytes], on_progress: Callable[[int], None]) -> None:
        self._target = target
        self._on_progress = on_progress
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        self._on_progress(self.size)
        return len(data)

    def flush(self) -> None:
        self._target.flush()

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        """Nothing: the store's handle is closed by whoever opened it."""


def write_bundle(
    store: BlobStore,
    key: str,
    produce: Callable[[_CountingSink], None],
    on_progress: Callable[[int], None],
) -> WrittenBundle:
    """Run ``produce`` against a sink in the store, then publish what it wrote at ``key``."""
    temp = f"{TEMP_PREFIX}/{uuid.uuid4().hex}"
    try:
        with store.open_write(temp) as handle:
            sink = _CountingSink(handle, on_progress)
            produce(sink)
        written = store.size(temp)
        if written != sink.size:
            raise ArchiveError(f"the bundle store holds {written} of {sink.size} bytes written")
        store.publish(temp, key)
    except OSError as exc:
        _discard(store, temp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{NO_SPACE}: the bundle store {store.url} is full") from exc
        raise ArchiveError(f"cannot write to the bundle store: {exc}") from exc
    except BaseException:
        _discard(store, temp)
        raise
    return WrittenBundle(key, sink.size, sink.sha256.hexdigest())


def _discard(store: BlobStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:  # the store is failing already; a leftover temp key is purged later
        return


def copy_chunks(chunks: Iterable[bytes]) -> Callable[[_CountingSink], None]:
    """A producer that writes pre-made chunks (a stored tar or zip layout)."""

    def produce(sink: _CountingSink) -> None:
        for chunk in chunks:
            sink.write(chunk)

    return produce


def deflated_zip(
    entries: list[BundleEntry], manifest: bytes | None
) -> Callable[[_CountingSink], None]:
    """A producer that compresses ``entries`` into a ZIP64-capable deflated zip.

    ``zipfile`` writes data descriptors when its target cannot seek, so this streams
    straight into any store; ZIP64 records appear where sizes or counts need them.
    """

    def produce(sink: _CountingSink) -> None:
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            if manifest is not None:
                newest = max((entry.mtime for entry in entries), default=0.0)
                _add(archive, MANIFEST_NAME, newest, iter([manifest]), len(manifest))
            for entry in entries:
                _add(archive, entry.path, entry.mtime, entry.read(0, entry.size), entry.size)

    return produce


def _add(
    archive: zipfile.ZipFile,
    path: str,
    mtime: float,
    chunks: Iterator[bytes],
    size: int = 0,
) -> None:
    info = zipfile.ZipInfo(path, _date_time(mtime))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16
    info.file_size = size
    with archive.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as member:
        for chunk in chunks:
            member.write(chunk)


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    seconds = max(mtime, 315532800.0)  # zip dates start in 1980
    return time.gmtime(seconds)[:6]
