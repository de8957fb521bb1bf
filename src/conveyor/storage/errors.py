"""Errors raised by the archive, with messages fit for a job's error field."""


class ArchiveError(Exception):
    """The archive could not store or read a blob."""


class BlobNotFound(ArchiveError):
    """No blob is stored under the asked sha256."""
