"""Errors raised by the archive, with messages fit for a job's error field."""

from __future__ import annotations

import errno


class ArchiveError(Exception):
    """The archive could not store or read a blob."""


class BlobNotFound(ArchiveError):
    """No blob is stored under the asked sha256."""


class StoreFull(ArchiveError):
    """The store (its disk or its quota) has no space left."""


def write_error(exc: Exception, what: str) -> ArchiveError:
    """A store's failure to write, as an :class:`ArchiveError` saying ``what`` failed;
    :class:`StoreFull` when the disk or quota is full, so callers can say so."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"{what}: no space left ({exc})")
    return ArchiveError(f"{what}: {exc}")
