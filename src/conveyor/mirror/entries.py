"""What a remote listing says about one file or folder, whatever the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One item of a remote listing.

    ``name`` is relative to the folder that was listed, ``/``-separated, without a leading
    ``/``. ``mtime`` is timezone-aware (UTC) when the remote says when, with the precision it
    gives (a day for some HTTP indexes). ``size`` is exact when known: a listing that shows
    a rounded size ("1.2M") leaves it ``None`` and says so in ``approximate_size``.
    ``fingerprint`` changes whenever the remote's description of the file changes (an ETag,
    the raw listing line); ``checksum`` is a content digest the remote offers, as
    ``(algorithm, hex)``.
    """

    name: str
    is_dir: bool = False
    size: int | None = None
    mtime: datetime | None = None
    approximate_size: int | None = None
    fingerprint: str | None = None
    checksum: tuple[str, str] | None = None
    is_link: bool = False

    def joined(self, folder: str) -> RemoteEntry:
        """The same entry named from one folder higher up (``folder/name``)."""
        prefix = folder.strip("/")
        name = f"{prefix}/{self.name}" if prefix else self.name
        return RemoteEntry(
            name,
            self.is_dir,
            self.size,
            self.mtime,
            self.approximate_size,
            self.fingerprint,
            self.checksum,
            self.is_link,
        )
