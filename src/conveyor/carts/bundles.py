"""Built bundles in the bundle store: written once under a temporary key, then published.

A reader never sees a partial bundle: bytes go to a temporary key, the written size is
checked against what was sent, and only then is the object moved to its final key (the
store's own temporary-write checks, shared with the archive).
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from conveyor.carts.layout import MANIFEST_NAME, BundleEntry
from conveyor.storage.errors import StoreFull, write_error
from conveyor.storage.stores import BlobStore, temp_key

NO_SPACE = "No Space Available"


class NoSpace(Exception):
    """There is no room for what a cart needs; the message starts with :data:`NO_SPACE`."""


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
        try:
            self._target.write(data)
        except Exception as exc:  # OSError locally; botocore/gcsfs errors remotely
            raise write_error(exc, "cannot write to the bundle store") from exc
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
    """Run ``produce`` against a sink in the store, then publish what it wrote at ``key``.

    Raises :class:`NoSpace` when the store is full, :class:`ArchiveError` when it fails.
    """
    temp = temp_key()
    try:
        try:
            handle = store.open_write(temp)
        except Exception as exc:  # OSError locally; botocore/gcsfs errors remotely
            raise write_error(exc, "cannot write to the bundle store") from exc
        try:
            sink = _CountingSink(handle, on_progress)
            produce(sink)
        finally:
            _close(handle)
        store.check_written(temp, sink.size)
        store.publish(temp, key)
    except StoreFull as exc:
        store.discard(temp)
        raise NoSpace(f"{NO_SPACE}: the bundle store {store.url} is full") from exc
    except BaseException:
        store.discard(temp)
        raise
    return WrittenBundle(key, sink.size, sink.sha256.hexdigest())


def _close(handle: IO[bytes]) -> None:
    # A buffered local file or a remote store's last part may only fail here.
    try:
        handle.close()
    except Exception as exc:
        raise write_error(exc, "cannot write to the bundle store") from exc


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
