"""Content-addressed archive of blobs over any fsspec-reachable store."""

from conveyor.storage.archive import Archive, BlobWriter, StoredBlob, open_archive
from conveyor.storage.errors import ArchiveError, BlobNotFound

__all__ = [
    "Archive",
    "ArchiveError",
    "BlobNotFound",
    "BlobWriter",
    "StoredBlob",
    "open_archive",
]
