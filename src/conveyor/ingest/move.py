"""Registering files already on the server: copied into the archive, never taken away."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conveyor.ingest.bundle import StagedMember
from conveyor.ingest.metadata import FileEntry
from conveyor.storage.archive import Archive, StoredBlob

READ_SIZE = 1024 * 1024


class MoveRefused(Exception):
    """A file cannot be moved; the message says why."""


def resolve_source(source: str | None, roots: list[Path]) -> Path:
    """The real path of ``source`` if it is a regular file under an allowed root."""
    if not roots:
        raise MoveRefused("move is disabled: no CONVEYOR_MOVE_ROOTS are configured")
    if not source:
        raise MoveRefused("the entry has no 'source' path")
    path = Path(source)
    if not path.is_absolute():
        raise MoveRefused(f"source {source!r} is not an absolute path")
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        raise MoveRefused(f"source {source!r} cannot be read: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # a symlink loop
        raise MoveRefused(f"source {source!r} cannot be resolved: {exc}") from None
    if not any(real.is_relative_to(root) for root in roots):
        raise MoveRefused(f"source {source!r} is outside the allowed move roots")
    return real


def copy_into_archive(archive: Archive, entry: FileEntry, real: Path) -> StoredBlob:
    """Stream the file into the archive, hashing it once."""
    extra = (entry.hashtype,) if entry.hashtype else ()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise MoveRefused(f"source {str(real)!r} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise MoveRefused(f"source {str(real)!r} is not a regular file")
        with archive.writer(extra) as writer:
            while chunk := handle.read(READ_SIZE):
                writer.write(chunk)
    assert writer.result is not None
    return writer.result


def staged_from(entry: FileEntry, stored: StoredBlob, real: Path) -> StagedMember:
    """The staging record of a moved file."""
    return StagedMember(entry.key, stored.sha256, stored.size, stored.hashes, real.stat().st_mtime)
