"""Bundle layouts: a tar or zip of archived files, its exact size, and any byte range, lazily.

Python's ``tarfile`` and ``zipfile`` write an archive front to back: neither says how long
it will be before writing it, nor yields bytes N..M without producing 0..N first. A bundle
streamed straight from the archive needs both: an exact Content-Length before the first
byte, and correct 206 answers so that an interrupted download resumes with identical bytes.
Without compression both formats are simple: each member is a header, the file's bytes and
(tar) padding, and every header depends only on its entry and, in a zip's central
directory, on the offset of that entry's local header. So a layout is a list of *units*
(one per member; in a zip also one per central directory record; then the trailer) whose
start offsets sit in one ``array('Q')``. A range is served by a binary search for its first
unit, then regenerating only the headers and reading only the slices of sources that
overlap it: a resume at offset N reads nothing before N. Memory: the entries, 8 bytes of
offset per unit, and one unit's headers at a time.

Tar members are PAX (POSIX.1-2001) with headers from ``tarfile.TarInfo.tobuf``: fixed
mode 0644, uid/gid 0, empty user and group names, mtime in whole seconds, regular files
only (extractors create the folders), then two zero blocks and zero padding to a whole
20-block record, as GNU tar and ``tarfile`` end theirs.

Zip members are stored (method 0) with their CRC-32 known up front, so no data
descriptors; names are UTF-8 (flag bit 11); DOS date and time are the mtime in UTC, and an
extended-timestamp field ("UT", 0x5455) carries the exact UTC second for unzip and bsdtar.
ZIP64 extra fields and end records appear exactly when a value does not fit its 32-bit
(or, for the entry count, 16-bit) field, or always with ``force_zip64``. Records are packed
with ``zipfile``'s own struct formats and signatures (APPNOTE.TXT 6.3.x, sections 4.3 and
4.5); ``zipfile`` has no API that writes a record without writing the data after it.
Compressed (deflate) zips cannot know their size before compressing: they are not a layout
but a bundle built once, with ``zipfile``.

The manifest, when given, is the first member, named ``conveyor-manifest.json`` (a name
a caller can override), so a streaming reader learns what is in the bundle and what is
missing before the data. Its mtime is the newest entry's, so it is deterministic too.

The ETag is a digest of every byte the layout generates (headers, padding, directory,
trailer) and of each source's identity (sha256 and size) in place of its bytes: equal
ETags mean equal bundles, and any change to a path, size, mtime second, checksum, the
manifest, the format or the options changes it.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import hashlib
import json
import math
import struct
import tarfile
import time
import zipfile
import zlib
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple, TypeAlias

LAYOUT_VERSION = 1
MANIFEST_NAME = "conveyor-manifest.json"
MANIFEST_FORMAT = "conveyor-cart-manifest"
MANIFEST_VERSION = 1
# Pieces smaller than this (headers, padding, small files) are joined before they are
# yielded, so a bundle of many small files does not cost one write (and, behind a
# streaming response, one thread hop) per header or file.
COALESCE_BYTES = 512 * 1024
# Slices up to this size are read in one call when the entry offers ``read_bytes``.
SMALL_READ = 256 * 1024
MANIFEST_CHUNK = 1024 * 1024
MAX_NAME_BYTES = 0xFFFF

TAR_MODE = 0o644

# Zip (APPNOTE.TXT): the largest values the classic fields hold; these values themselves
# mean "see the ZIP64 extra field / end record", so ZIP64 is needed from them upwards.
ZIP32_LIMIT = 0xFFFFFFFF
ZIP16_LIMIT = 0xFFFF
ZIP_UTF8_FLAG = 0x0800
ZIP_MADE_BY_UNIX = 3
ZIP_EXTERNAL_ATTR = (0o100000 | TAR_MODE) << 16
ZIP64_EXTRA_ID = 0x0001
ZIP_UT_EXTRA_ID = 0x5455
ZIP64_END_RECORD_TAIL = 44  # size of the ZIP64 end record after its first 12 bytes
DOS_EPOCH = calendar.timegm((1980, 1, 1, 0, 0, 0))
DOS_END = calendar.timegm((2108, 1, 1, 0, 0, 0))
# zipfile's module-level record formats are not in typeshed; they are stable since 2.x.
ZIP_LOCAL_STRUCT: str = zipfile.structFileHeader  # type: ignore[attr-defined]
ZIP_LOCAL_SIGNATURE: bytes = zipfile.stringFileHeader  # type: ignore[attr-defined]
ZIP_CENTRAL_STRUCT: str = zipfile.structCentralDir  # type: ignore[attr-defined]
ZIP_CENTRAL_SIGNATURE: bytes = zipfile.stringCentralDir  # type: ignore[attr-defined]
ZIP_END_STRUCT: bytes = zipfile.structEndArchive  # type: ignore[attr-defined]
ZIP_END_SIGNATURE: bytes = zipfile.stringEndArchive  # type: ignore[attr-defined]
ZIP64_END_STRUCT: str = zipfile.structEndArchive64  # type: ignore[attr-defined]
ZIP64_END_SIGNATURE: bytes = zipfile.stringEndArchive64  # type: ignore[attr-defined]
ZIP64_LOCATOR_STRUCT: str = zipfile.structEndArchive64Locator  # type: ignore[attr-defined]
ZIP64_LOCATOR_SIGNATURE: bytes = zipfile.stringEndArchive64Locator  # type: ignore[attr-defined]


class EntrySourceError(Exception):
    """A source yielded more or fewer bytes than its entry's size: the bundle would be wrong."""


@dataclass(frozen=True)
class BundleEntry:
    """One file in a bundle: where it stands, what it is, and how to read any slice of it."""

    path: str
    size: int
    mtime: float
    sha256: str
    crc32: int
    # Yields bytes [start, end) of the source, in pieces of any size.
    read: Callable[[int, int], Iterator[bytes]] = field(compare=False, repr=False)
    # Optionally, bytes [start, end) at once: a small slice costs one call, not a generator.
    read_bytes: Callable[[int, int], bytes] | None = field(default=None, compare=False, repr=False)


class SourceSpan(NamedTuple):
    """Bytes [start, end) of an entry's source, standing at this point of the bundle."""

    # A named tuple, not a frozen dataclass: one is made per member streamed, and a frozen
    # dataclass's __init__ showed as 7 % of generating a tar of 10,000 small files.
    entry: BundleEntry
    start: int
    end: int


Part: TypeAlias = bytes | SourceSpan


class BundleLayout(ABC):
    """A bundle whose size and ETag are known up front and whose bytes come on demand."""

    format: ClassVar[Literal["tar", "zip"]]
    media_type: ClassVar[str]
    extension: ClassVar[str]

    size: int
    """The exact length of the bundle in bytes."""
    etag: str
    """A strong entity tag (unquoted) that changes whenever any byte would."""

    def __init__(
        self, entries: Iterable[BundleEntry], manifest: bytes | None, manifest_name: str
    ) -> None:
        given = tuple(entries)
        _check_entries(given, manifest_name if manifest is not None else None)
        self.entries = given
        self.manifest_name = manifest_name if manifest is not None else None
        members = given
        if manifest is not None:
            members = (_manifest_entry(manifest, manifest_name, given), *given)
        self._members = members
        self._starts = array("Q")
        hasher = hashlib.sha256(f"conveyor-bundle/{LAYOUT_VERSION}/{self.format}\n".encode())
        position = 0
        for unit in range(self._unit_count()):
            # A unit may read its own start (a zip's end records do), so append it first.
            self._starts.append(position)
            for part in self._unit(unit):
                if isinstance(part, SourceSpan):
                    entry = part.entry
                    hasher.update(
                        f"S {entry.sha256} {entry.size} {part.start} {part.end}\n".encode()
                    )
                    position += part.end - part.start
                else:
                    hasher.update(f"B {len(part)}\n".encode())
                    hasher.update(part)
                    position += len(part)
        self._starts.append(position)
        self.size = position
        self.etag = f"{self.format}-{hasher.hexdigest()[:40]}"

    @abstractmethod
    def _unit_count(self) -> int:
        """How many units the bundle has."""

    @abstractmethod
    def _unit(self, unit: int) -> Sequence[Part]:
        """The parts of one unit, in order; never empty, never zero bytes long."""

    def segments(self, start: int = 0, end: int | None = None) -> Iterator[Part]:
        """Bytes [start, end) of the bundle as generated bytes and slices of sources.

        Sources are not read: a server can send a :class:`SourceSpan` its own way (for
        instance with ``sendfile``). Raises ValueError at once for a range out of bounds.
        """
        stop = self.size if end is None else end
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"range [{start}, {stop}) is outside a bundle of {self.size} bytes")
        return self._segments(start, stop)

    def _segments(self, start: int, stop: int) -> Iterator[Part]:
        if start == stop:
            return
        starts = self._starts
        last = len(starts) - 1
        unit = bisect.bisect_right(starts, start) - 1
        while unit < last and starts[unit] < stop:
            position = starts[unit]
            if start <= position and starts[unit + 1] <= stop:
                # The whole unit is wanted, as for most units of a long range: no slicing.
                yield from self._unit(unit)
                unit += 1
                continue
            for part in self._unit(unit):
                spanned = part.end - part.start if isinstance(part, SourceSpan) else len(part)
                low = max(start, position) - position
                high = min(stop, position + spanned) - position
                if low < high:
                    if isinstance(part, SourceSpan):
                        yield SourceSpan(part.entry, part.start + low, part.start + high)
                    elif low == 0 and high == spanned:
                        yield part
                    else:
                        yield part[low:high]
                position += spanned
                if position >= stop:
                    return
            unit += 1

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Exactly bytes [start, end) of the bundle, reading only the sources they overlap.

        Raises ValueError at once for a range out of bounds, and
        :class:`EntrySourceError` while streaming if a source is shorter or longer than
        its entry says.
        """
        return self._chunks(self.segments(start, end))

    @staticmethod
    def _chunks(parts: Iterator[Part]) -> Iterator[bytes]:
        # Small pieces are gathered in a list and joined once: appending to a bytearray
        # cost 14 % of generating a tar of 10,000 small files in its reallocations.
        pending: list[bytes] = []
        pending_size = 0
        for part in parts:
            pieces: Iterable[bytes]
            if not isinstance(part, SourceSpan):
                pieces = (part,)
            elif part.end - part.start <= SMALL_READ and part.entry.read_bytes is not None:
                pieces = (_read_small(part, part.entry.read_bytes),)
            else:
                pieces = _read_span(part)
            for piece in pieces:
                if len(piece) >= COALESCE_BYTES:
                    if pending:
                        yield b"".join(pending)
                        pending, pending_size = [], 0
                    yield piece
                else:
                    pending.append(piece)
                    pending_size += len(piece)
                    if pending_size >= COALESCE_BYTES:
                        yield b"".join(pending)
                        pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)


class TarLayout(BundleLayout):
    """A PAX tar of the entries in the given order, the manifest (if any) first."""

    format = "tar"
    media_type = "application/x-tar"
    extension = ".tar"

    def __init__(
        self,
        entries: Iterable[BundleEntry],
        manifest: bytes | None = None,
        *,
        manifest_name: str = MANIFEST_NAME,
    ) -> None:
        super().__init__(entries, manifest, manifest_name)

    def _unit_count(self) -> int:
        return len(self._members) + 1

    def _unit(self, unit: int) -> Sequence[Part]:
        if unit == len(self._members):
            # Two zero blocks end the archive; padding to a whole record, as tar does.
            position = self._starts[unit]
            end = position + 2 * tarfile.BLOCKSIZE
            end += -end % tarfile.RECORDSIZE
            return [bytes(end - position)]
        entry = self._members[unit]
        parts: list[Part] = [_tar_header(entry)]
        if entry.size:
            parts.append(SourceSpan(entry, 0, entry.size))
            padding = -entry.size % tarfile.BLOCKSIZE
            if padding:
                parts.append(bytes(padding))
        return parts


class ZipLayout(BundleLayout):
    """A stored (uncompressed) zip of the entries in the given order, the manifest first.

    ``force_zip64`` writes ZIP64 fields and end records even when nothing needs them
    (for tests of readers, and for clients that want one code path).
    """

    format = "zip"
    media_type = "application/zip"
    extension = ".zip"

    def __init__(
        self,
        entries: Iterable[BundleEntry],
        manifest: bytes | None = None,
        *,
        manifest_name: str = MANIFEST_NAME,
        force_zip64: bool = False,
    ) -> None:
        self.force_zip64 = force_zip64
        super().__init__(entries, manifest, manifest_name)

    def _unit_count(self) -> int:
        return 2 * len(self._members) + 1

    def _unit(self, unit: int) -> Sequence[Part]:
        count = len(self._members)
        if unit < count:
            entry = self._members[unit]
            header = self._local_header(entry)
            return [header, SourceSpan(entry, 0, entry.size)] if entry.size else [header]
        if unit < 2 * count:
            index = unit - count
            return [self._central_record(self._members[index], self._starts[index])]
        directory = self._starts[count]
        return [self._end_records(count, directory, self._starts[unit] - directory)]

    def _local_header(self, entry: BundleEntry) -> bytes:
        name = entry.path.encode("utf-8")
        seconds = _whole_seconds(entry.mtime)
        dos_time, dos_date = _dos_datetime(seconds)
        zip64 = self.force_zip64 or entry.size >= ZIP32_LIMIT
        # APPNOTE 4.5.3: a local header's ZIP64 field holds both sizes, always.
        extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, entry.size, entry.size) if zip64 else b""
        extra += _unix_time_extra(seconds)
        size = ZIP32_LIMIT if zip64 else entry.size
        header = struct.pack(
            ZIP_LOCAL_STRUCT,
            ZIP_LOCAL_SIGNATURE,
            zipfile.ZIP64_VERSION if zip64 else zipfile.DEFAULT_VERSION,
            0,
            ZIP_UTF8_FLAG,
            zipfile.ZIP_STORED,
            dos_time,
            dos_date,
            entry.crc32,
            size,
            size,
            len(name),
            len(extra),
        )
        return header + name + extra

    def _central_record(self, entry: BundleEntry, offset: int) -> bytes:
        name = entry.path.encode("utf-8")
        seconds = _whole_seconds(entry.mtime)
        dos_time, dos_date = _dos_datetime(seconds)
        big_size = self.force_zip64 or entry.size >= ZIP32_LIMIT
        big_offset = self.force_zip64 or offset >= ZIP32_LIMIT
        # APPNOTE 4.5.3: in the central directory, only the values that overflow, in order.
        values = ([entry.size, entry.size] if big_size else []) + ([offset] if big_offset else [])
        extra = b""
        if values:
            extra = struct.pack(f"<HH{len(values)}Q", ZIP64_EXTRA_ID, 8 * len(values), *values)
        extra += _unix_time_extra(seconds)
        size = ZIP32_LIMIT if big_size else entry.size
        record = struct.pack(
            ZIP_CENTRAL_STRUCT,
            ZIP_CENTRAL_SIGNATURE,
            zipfile.ZIP64_VERSION,
            ZIP_MADE_BY_UNIX,
            zipfile.ZIP64_VERSION if values else zipfile.DEFAULT_VERSION,
            0,
            ZIP_UTF8_FLAG,
            zipfile.ZIP_STORED,
            dos_time,
            dos_date,
            entry.crc32,
            size,
            size,
            len(name),
            len(extra),
            0,  # comment length
            0,  # disk number
            0,  # internal attributes
            ZIP_EXTERNAL_ATTR,
            ZIP32_LIMIT if big_offset else offset,
        )
        return record + name + extra

    def _end_records(self, count: int, directory: int, directory_size: int) -> bytes:
        zip64 = (
            self.force_zip64
            or count >= ZIP16_LIMIT
            or directory >= ZIP32_LIMIT
            or directory_size >= ZIP32_LIMIT
        )
        records = b""
        if zip64:
            records += struct.pack(
                ZIP64_END_STRUCT,
                ZIP64_END_SIGNATURE,
                ZIP64_END_RECORD_TAIL,
                zipfile.ZIP64_VERSION,
                zipfile.ZIP64_VERSION,
                0,
                0,
                count,
                count,
                directory_size,
                directory,
            )
            records += struct.pack(
                ZIP64_LOCATOR_STRUCT, ZIP64_LOCATOR_SIGNATURE, 0, directory + directory_size, 1
            )
        if self.force_zip64:
            count16, size32, offset32 = ZIP16_LIMIT, ZIP32_LIMIT, ZIP32_LIMIT
        else:
            count16 = min(count, ZIP16_LIMIT)
            size32 = min(directory_size, ZIP32_LIMIT)
            offset32 = min(directory, ZIP32_LIMIT)
        records += struct.pack(
            ZIP_END_STRUCT, ZIP_END_SIGNATURE, 0, 0, count16, count16, size32, offset32, 0
        )
        return records


def make_layout(
    format: Literal["tar", "zip"],
    entries: Iterable[BundleEntry],
    manifest: bytes | None = None,
    *,
    manifest_name: str = MANIFEST_NAME,
) -> BundleLayout:
    """The layout of a ``tar`` or (stored) ``zip`` bundle of ``entries``."""
    if format == "tar":
        return TarLayout(entries, manifest, manifest_name=manifest_name)
    if format == "zip":
        return ZipLayout(entries, manifest, manifest_name=manifest_name)
    raise ValueError(f"unknown bundle format {format!r}")


def manifest_json(entries: Iterable[BundleEntry], missing: Iterable[Mapping[str, object]]) -> bytes:
    """The manifest: every file's path, size and sha256, and every missing item with its reason.

    Deterministic UTF-8 JSON: sorted keys, files in bundle order, one file or missing item
    per line. Each missing item is a mapping with at least a non-empty ``reason``
    (usually also ``path`` or an id); its other keys are kept as given.
    """
    files: list[str] = []
    total = 0
    for entry in entries:
        files.append(_json({"path": entry.path, "sha256": entry.sha256, "size": entry.size}))
        total += entry.size
    gone: list[str] = []
    for item in missing:
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"missing item {dict(item)!r} has no reason")
        gone.append(_json(dict(item)))
    summary = _json(
        {
            "file_count": len(files),
            "format": MANIFEST_FORMAT,
            "missing_count": len(gone),
            "total_size": total,
            "version": MANIFEST_VERSION,
        }
    )
    text = (
        summary[:-1]
        + ',\n"files":['
        + ("\n" + ",\n".join(files) + "\n" if files else "")
        + '],\n"missing":['
        + ("\n" + ",\n".join(gone) + "\n" if gone else "")
        + "]}\n"
    )
    return text.encode("utf-8")


def _json(value: Mapping[str, object]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _check_entries(entries: Sequence[BundleEntry], reserved: str | None) -> None:
    """Refuse what would make a wrong or ambiguous archive (callers validate paths first)."""
    seen: set[str] = set()
    for entry in entries:
        path = entry.path
        if not path or "\x00" in path or path.startswith("/") or path.endswith("/"):
            raise ValueError(f"{path!r} is not a relative file path")
        try:
            encoded = path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path!r} is not valid UTF-8") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise ValueError(f"{path[:60]!r}… is longer than {MAX_NAME_BYTES} bytes")
        if entry.size < 0:
            raise ValueError(f"{path!r} has a negative size")
        if not 0 <= entry.crc32 <= ZIP32_LIMIT:
            raise ValueError(f"{path!r} has a CRC-32 out of range")
        if not math.isfinite(entry.mtime):
            raise ValueError(f"{path!r} has no finite mtime")
        if path == reserved:
            raise ValueError(f"{path!r} is the manifest's name")
        if path in seen:
            raise ValueError(f"{path!r} is in the bundle twice")
        seen.add(path)


def _manifest_entry(manifest: bytes, name: str, entries: Sequence[BundleEntry]) -> BundleEntry:
    def read(start: int, end: int) -> Iterator[bytes]:
        for position in range(start, end, MANIFEST_CHUNK):
            yield manifest[position : min(end, position + MANIFEST_CHUNK)]

    return BundleEntry(
        path=name,
        size=len(manifest),
        mtime=max((entry.mtime for entry in entries), default=0.0),
        sha256=hashlib.sha256(manifest).hexdigest(),
        crc32=zlib.crc32(manifest),
        read=read,
    )


def _read_small(span: SourceSpan, read_bytes: Callable[[int, int], bytes]) -> bytes:
    piece = read_bytes(span.start, span.end)
    if len(piece) != span.end - span.start:
        raise EntrySourceError(
            f"{span.entry.path}: {len(piece)} of {span.end - span.start} bytes "
            f"from [{span.start}, {span.end})"
        )
    return piece


def _read_span(span: SourceSpan) -> Iterator[bytes]:
    wanted = span.end - span.start
    got = 0
    source = span.entry.read(span.start, span.end)
    try:
        for piece in source:
            got += len(piece)
            if got > wanted:
                raise EntrySourceError(
                    f"{span.entry.path}: more than {wanted} bytes from [{span.start}, {span.end})"
                )
            if piece:
                yield piece
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if got < wanted:
        raise EntrySourceError(
            f"{span.entry.path}: {got} of {wanted} bytes from [{span.start}, {span.end})"
        )


def _whole_seconds(mtime: float) -> int:
    """The mtime both formats record: whole seconds, never before 1970."""
    return max(0, math.floor(mtime))


def _tar_header(entry: BundleEntry) -> bytes:
    return _tar_header_of(entry.path, entry.size, entry.mtime)


# Every header is built once for the size and ETag and again when streamed, and a resumed
# download builds them all anew; tarfile takes ~50 µs a header. ~16k recent headers (a few
# MB) are kept.
@functools.lru_cache(maxsize=16384)
def _tar_header_of(path: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(path)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mtime = _whole_seconds(mtime)
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX: long or non-ASCII names and sizes of 8 GiB and more get an extended header.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _dos_datetime(seconds: int) -> tuple[int, int]:
    """MS-DOS (time, date) of a UTC second, clamped to the years DOS can say (1980-2107)."""
    if seconds < DOS_EPOCH:
        return 0, (1 << 5) | 1
    if seconds >= DOS_END:
        return (23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31
    t = time.gmtime(seconds)
    return (
        (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday,
    )


def _unix_time_extra(seconds: int) -> bytes:
    """Info-ZIP's extended timestamp (mtime only), where a signed 32-bit field holds it."""
    if seconds >= 1 << 31:
        return b""
    return struct.pack("<HHBl", ZIP_UT_EXTRA_ID, 5, 1, seconds)
