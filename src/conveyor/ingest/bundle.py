"""Reading a Pacifica bundle (plain tar) as a stream, straight into the archive.

Members are checked before a byte of them is stored: only regular files and folders,
only under ``data/`` (plus a top-level ``metadata.txt``), no absolute paths, no ``..``,
no duplicates, within the configured limits. Each file is hashed while it is written.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, cast

from conveyor.ingest.forward import ForwardReader
from conveyor.ingest.metadata import BundleMetadata, MetadataError, parse_metadata
from conveyor.ingest.paths import UnsafePath, member_key
from conveyor.storage.archive import Archive
from conveyor.storage.errors import ArchiveError

METADATA_NAME = "metadata.txt"
UPLOAD_TASK = "UPLOADING"
READ_SIZE = 1024 * 1024
# The Pacifica uploader declares sha1; computing it while streaming spares a second read
# when metadata.txt comes last and its hash types are not known yet.
DEFAULT_EXTRA_HASHES = ("sha1",)


class BundleError(Exception):
    """The bundle cannot be ingested; ``task`` is the Pacifica step that detects it."""

    def __init__(self, task: str, message: str) -> None:
        super().__init__(message)
        self.task = task
        self.message = message


@dataclass(frozen=True)
class BundleLimits:
    """Bounds a bundle must stay within."""

    max_members: int
    max_metadata_bytes: int
    max_name_bytes: int


@dataclass(frozen=True)
class StagedMember:
    """A data member now in the archive."""

    key: str
    sha256: str
    size: int
    hashes: dict[str, str]
    mtime: float


@dataclass
class BundleSummary:
    """What reading the bundle produced."""

    metadata: BundleMetadata | None = None
    metadata_sha256: str | None = None
    metadata_created: bool = False
    members: int = 0
    files: int = 0
    bytes: int = 0
    keys: set[str] = field(default_factory=set)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return "special member"


class BundleReader:
    """Streams one bundle into the archive, calling ``on_member`` for each stored file."""

    def __init__(
        self,
        archive: Archive,
        limits: BundleLimits,
        on_member: Callable[[StagedMember], None],
    ) -> None:
        self.archive = archive
        self.limits = limits
        self.on_member = on_member
        self.summary = BundleSummary()
        self._declared: dict[str, str] = {}
        self._source = ForwardReader(io.BytesIO())

    def read(self, stream: IO[bytes]) -> BundleSummary:
        """Read the whole bundle; raise :class:`BundleError` at the first problem."""
        self._source = ForwardReader(stream)
        try:
            archive_file = tarfile.TarFile(fileobj=cast(IO[bytes], self._source), mode="r")
        except ConnectionError as exc:
            raise BundleError(UPLOAD_TASK, f"the upload stopped: {exc}") from None
        except (tarfile.TarError, EOFError, OSError):
            raise BundleError("open tar", "Failed to open tarfile.") from None
        last = "the start"
        with archive_file:
            try:
                for member in archive_file:
                    self._take(archive_file, member)
                    last = repr(member.name)
                    # tarfile keeps every member it has read; a million-member bundle would
                    # hold them all. Only the current one matters here.
                    archive_file.members.clear()  # type: ignore[attr-defined]
            except (tarfile.TarError, EOFError) as exc:
                raise BundleError(
                    "open tar", f"the bundle is truncated or corrupt after {last}: {exc}"
                ) from None
            except ConnectionError as exc:
                raise BundleError(UPLOAD_TASK, f"the upload stopped after {last}: {exc}") from None
        if self.summary.metadata is None:
            raise BundleError("load metadata", f"the bundle has no {METADATA_NAME}")
        return self.summary

    def _take(self, archive_file: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        summary = self.summary
        summary.members += 1
        if summary.members > self.limits.max_members:
            raise BundleError(
                "open tar", f"the bundle has more than {self.limits.max_members} members"
            )
        name = member.name
        if len(name.encode("utf-8", "surrogateescape")) > self.limits.max_name_bytes:
            raise BundleError("open tar", f"member name {name[:80]!r}… is too long")
        if name.strip("/").removeprefix("./") == METADATA_NAME and member.isreg():
            self._take_metadata(archive_file, member)
            return
        if not (member.isreg() or member.isdir()):
            raise BundleError(
                "open tar", f"member {name!r} is a {_kind(member)}; only files and folders"
            )
        try:
            key = member_key(name)
        except UnsafePath as exc:
            raise BundleError("open tar", f"member {exc}") from None
        if member.isdir():
            return
        if not key:
            raise BundleError("open tar", f"member {name!r} is not a file under data/")
        if key in summary.keys:
            raise BundleError("open tar", f"member {name!r} appears twice in the bundle")
        summary.keys.add(key)
        self._store(archive_file, member, key)

    def _member_data(
        self, archive_file: tarfile.TarFile, member: tarfile.TarInfo
    ) -> Iterator[bytes]:
        """The member's bytes in large chunks, read straight from the stream."""
        if member.sparse is not None:  # GNU sparse files: let tarfile fill the holes
            handle = archive_file.extractfile(member)
            assert handle is not None
            while chunk := handle.read(READ_SIZE):
                yield chunk
            return
        self._source.seek(member.offset_data)
        remaining = member.size
        while remaining:
            chunk = self._source.read(min(READ_SIZE, remaining))
            if not chunk:
                raise tarfile.ReadError(f"unexpected end of data in {member.name!r}")
            remaining -= len(chunk)
            yield chunk

    def _take_metadata(self, archive_file: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if self.summary.metadata is not None:
            raise BundleError("open tar", f"member {member.name!r} appears twice in the bundle")
        if member.size > self.limits.max_metadata_bytes:
            raise BundleError(
                "load metadata",
                f"{METADATA_NAME} is {member.size} bytes; the limit is "
                f"{self.limits.max_metadata_bytes}",
            )
        handle = archive_file.extractfile(member)
        assert handle is not None
        document = handle.read()
        try:
            metadata = parse_metadata(document)
        except MetadataError as exc:
            raise BundleError("load metadata", str(exc)) from None
        try:
            stored = self.archive.put_bytes(document)
        except ArchiveError as exc:
            raise BundleError("ingest files", f"{METADATA_NAME}: {exc}") from None
        self.summary.metadata = metadata
        self.summary.metadata_sha256 = stored.sha256
        self.summary.metadata_created = stored.created
        self._declared = {e.key: e.hashtype for e in metadata.files if e.hashtype}

    def _store(self, archive_file: tarfile.TarFile, member: tarfile.TarInfo, key: str) -> None:
        if self.summary.metadata is None:
            extra: tuple[str, ...] = DEFAULT_EXTRA_HASHES
        else:
            declared = self._declared.get(key)
            extra = (declared,) if declared else ()
        try:
            with self.archive.writer(extra) as writer:
                for chunk in self._member_data(archive_file, member):
                    writer.write(chunk)
        except ArchiveError as exc:
            raise BundleError("ingest files", f"{key}: {exc}") from None
        stored = writer.result
        assert stored is not None
        if stored.size != member.size:
            raise BundleError(
                "open tar", f"member {member.name!r} holds {stored.size} of {member.size} bytes"
            )
        self.summary.files += 1
        self.summary.bytes += stored.size
        self.on_member(StagedMember(key, stored.sha256, stored.size, stored.hashes, member.mtime))
