"""A folder on this machine (BioMAJ's ``local`` protocol)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.sources.base import READ_CHUNK, Source, join_remote, register


@register
class LocalSource(Source):
    """Files under ``server`` + ``remote_dir`` (either may hold the folder)."""

    protocols = ("local",)

    @property
    def root(self) -> str:
        """The folder mirrored."""
        return join_remote(self.spec.server, self.spec.remote_dir)

    def local_path(self, path: str) -> Path:
        """Where ``path`` is on this machine."""
        return Path(join_remote(self.root, path))

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """``os.scandir``, one entry at a time."""
        where = self.local_path(folder)
        try:
            scanner = os.scandir(where)
        except FileNotFoundError:
            raise SourceError(f"folder {where} does not exist", permanent=True) from None
        except OSError as error:
            raise SourceError(f"cannot list {where}: {error.strerror}", permanent=True) from None
        with scanner:
            for item in scanner:
                yield _entry(item.name, item.stat(), item.is_symlink())

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """The file from ``offset``, in chunks."""
        target = self.local_path(path)
        try:
            handle = target.open("rb")
        except FileNotFoundError:
            raise SourceError(f"{target} does not exist", permanent=True) from None
        except OSError as error:
            raise SourceError(f"cannot read {target}: {error.strerror}", permanent=True) from None
        with handle:
            try:
                handle.seek(offset)
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
            except OSError as error:  # a read error of the source's disk (NFS, say) may pass
                raise SourceError(f"cannot read {target}: {error.strerror}") from None

    def stat(self, path: str) -> RemoteEntry:
        """``os.stat`` of the file."""
        target = self.local_path(path)
        try:
            info = target.stat()
        except FileNotFoundError:
            raise SourceError(f"{target} does not exist", permanent=True) from None
        return _entry(target.name, info, target.is_symlink())


def _entry(name: str, info: os.stat_result, is_link: bool) -> RemoteEntry:
    is_dir = stat.S_ISDIR(info.st_mode)
    mtime = datetime.fromtimestamp(info.st_mtime, UTC)
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir else info.st_size,
        mtime=mtime,
        fingerprint=f"{info.st_size}-{info.st_mtime_ns}",
        is_link=is_link,
    )
