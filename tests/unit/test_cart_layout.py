"""Bundle layouts (carts): exact sizes, any byte range, and real readers of the tar and zip.

Readers: Python's tarfile and zipfile, GNU tar, Info-ZIP ``unzip -t`` and ``zip -T``.
The tests named ``test_big_*`` build bundles over 4 GiB (ZIP64), over 8 GiB (a PAX size)
and with more than 65,535 entries; they stay fast
because the zero-filled sources are never written: the bundle goes to a *sparse* file whose
holes stand for them, and the layout's own bytes are then checked against that file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import random
import struct
import subprocess
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from conveyor.carts.layout import (
    MANIFEST_NAME,
    BundleEntry,
    BundleLayout,
    EntrySourceError,
    SourceSpan,
    TarLayout,
    ZipLayout,
    make_layout,
    manifest_json,
)
from tests.support.services import require_command

Format = Literal["tar", "zip"]
FORMATS: tuple[Format, ...] = ("tar", "zip")
MTIME = 1_700_000_000.75
ReadLog = list[tuple[str, int, int]]

MiB = 1 << 20
ZEROS = bytes(MiB)


def memory_entry(
    path: str,
    data: bytes,
    *,
    mtime: float = MTIME,
    log: ReadLog | None = None,
    piece: int = 4093,
) -> BundleEntry:
    """An entry over bytes in memory; its reads are logged and come in odd-sized pieces."""

    def read(start: int, end: int) -> Iterator[bytes]:
        if log is not None:
            log.append((path, start, end))
        for position in range(start, end, piece):
            yield data[position : min(end, position + piece)]

    return BundleEntry(
        path, len(data), mtime, hashlib.sha256(data).hexdigest(), zlib.crc32(data), read
    )


def file_entry(path: str, source: Path, *, log: ReadLog | None = None) -> BundleEntry:
    """An entry over a file on disk, read in 64 KiB pieces from the offset asked for."""
    data = source.read_bytes()

    def read(start: int, end: int) -> Iterator[bytes]:
        if log is not None:
            log.append((path, start, end))
        with source.open("rb") as handle:
            handle.seek(start)
            left = end - start
            while left:
                piece = handle.read(min(left, 65536))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    return BundleEntry(
        path,
        len(data),
        source.stat().st_mtime,
        hashlib.sha256(data).hexdigest(),
        zlib.crc32(data),
        read,
    )


@functools.cache
def zeros_crc32(size: int) -> int:
    """CRC-32 of ``size`` zero bytes (computed once per size: ~1 s for 4 GiB)."""
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(ZEROS, crc)
    return zlib.crc32(ZEROS[: size % MiB], crc)


def zeros_entry(
    path: str, size: int, *, log: ReadLog | None = None, crc: bool = True
) -> BundleEntry:
    """A large entry of zeros generated lazily; its sha256 is a stand-in (never verified).

    A tar holds no CRC: ``crc=False`` spares computing it.
    """

    def read(start: int, end: int) -> Iterator[bytes]:
        if log is not None:
            log.append((path, start, end))
        left = end - start
        while left:
            piece = min(left, MiB)
            yield ZEROS if piece == MiB else ZEROS[:piece]
            left -= piece

    stand_in = hashlib.sha256(f"zeros:{size}".encode()).hexdigest()
    return BundleEntry(path, size, MTIME, stand_in, zeros_crc32(size) if crc else 0, read)


LONG_NAME = "long/" + "x" * 120 + "/name.txt"
UNICODE_NAME = "données/ünïcødé ✓ 名前.txt"


@pytest.fixture
def reads() -> ReadLog:
    return []


@pytest.fixture
def entries(tmp_path: Path, reads: ReadLog) -> list[BundleEntry]:
    """Empty files, exactly one block, unicode and long names, nested folders, a disk file."""
    rng = random.Random(7)
    disk = tmp_path / "source.bin"
    disk.write_bytes(rng.randbytes(200_001))
    os.utime(disk, (1_600_000_000, 1_600_000_000))
    return [
        memory_entry("hello.txt", b"hello, world\n", log=reads),
        memory_entry("empty.dat", b"", log=reads),
        memory_entry("exact-512.bin", rng.randbytes(512), log=reads),
        memory_entry("a/b/c/deep/nested.txt", b"nested\n" * 300, log=reads),
        memory_entry("one.byte", b"z", log=reads),
        memory_entry(UNICODE_NAME, "données\n".encode() * 50, log=reads),
        file_entry("disk/source.bin", disk, log=reads),
        memory_entry(LONG_NAME, b"long name\n", log=reads),
        memory_entry("block-1023.bin", rng.randbytes(1023), log=reads),
        memory_entry("old/before-1980.txt", b"old\n", mtime=1000.0, log=reads),
        memory_entry("a/b/also-empty", b"", log=reads),
    ]


def contents(entries: list[BundleEntry]) -> dict[str, bytes]:
    return {entry.path: b"".join(entry.read(0, entry.size)) for entry in entries}


def whole(layout: BundleLayout) -> bytes:
    return b"".join(layout.chunks())


def edges(layout: BundleLayout) -> list[int]:
    """Every offset where a header, a source slice or padding starts or ends."""
    found = {0, layout.size}
    position = 0
    for part in layout.segments():
        position += part.end - part.start if isinstance(part, SourceSpan) else len(part)
        found.add(position)
    assert position == layout.size
    return sorted(found)


def data_offsets(layout: BundleLayout) -> dict[str, int]:
    """Where each entry's bytes start in the bundle."""
    found: dict[str, int] = {}
    position = 0
    for part in layout.segments():
        if isinstance(part, SourceSpan):
            assert part.start == 0
            found[part.entry.path] = position
            position += part.end - part.start
        else:
            position += len(part)
    return found


def expected_reads(
    layout: BundleLayout, entries: list[BundleEntry], start: int, end: int
) -> ReadLog:
    """The source slices a range [start, end) overlaps, in bundle order."""
    offsets = data_offsets(layout)
    found: ReadLog = []
    for entry in sorted(entries, key=lambda item: offsets.get(item.path, -1)):
        if entry.path not in offsets:
            continue
        low = max(start, offsets[entry.path])
        high = min(end, offsets[entry.path] + entry.size)
        if low < high:
            found.append((entry.path, low - offsets[entry.path], high - offsets[entry.path]))
    return found


def zip_extras(info: zipfile.ZipInfo) -> dict[int, bytes]:
    """The extra fields of a central directory record, by header id."""
    found: dict[int, bytes] = {}
    extra = info.extra
    while extra:
        kind, length = struct.unpack("<HH", extra[:4])
        found[kind] = extra[4 : 4 + length]
        extra = extra[4 + length :]
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)


# --- sizes, tar and zip read back -------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_manifest", [False, True])
def test_size_is_exact(fmt: Format, with_manifest: bool, entries: list[BundleEntry]) -> None:
    manifest = manifest_json(entries, []) if with_manifest else None
    layout = make_layout(fmt, entries, manifest)
    assert len(whole(layout)) == layout.size
    assert layout.media_type == {"tar": "application/x-tar", "zip": "application/zip"}[fmt]
    assert layout.extension == f".{fmt}"
    assert layout.entries == tuple(entries)
    assert layout.manifest_name == (MANIFEST_NAME if with_manifest else None)


def test_tar_is_read_back_by_tarfile(entries: list[BundleEntry]) -> None:
    manifest = manifest_json(entries, [])
    bundle = whole(TarLayout(entries, manifest))
    expected = contents(entries)
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        members = tar.getmembers()
        assert [member.name for member in members] == [MANIFEST_NAME, *expected]
        for member in members:
            assert member.isreg()
            assert (member.mode, member.uid, member.gid) == (0o644, 0, 0)
            assert (member.uname, member.gname) == ("", "")
            handle = tar.extractfile(member)
            assert handle is not None
            data = handle.read()
            if member.name == MANIFEST_NAME:
                assert data == manifest
            else:
                assert data == expected[member.name]
        mtimes = {member.name: member.mtime for member in members}
    assert mtimes["hello.txt"] == math.floor(MTIME)
    assert mtimes["old/before-1980.txt"] == 1000
    assert mtimes["disk/source.bin"] == 1_600_000_000
    assert mtimes[MANIFEST_NAME] == math.floor(MTIME)  # the newest entry's


def test_tar_is_listed_and_extracted_by_gnu_tar(tmp_path: Path, entries: list[BundleEntry]) -> None:
    tar = require_command("tar")
    layout = TarLayout(entries, manifest_json(entries, []))
    archive = tmp_path / "bundle.tar"
    archive.write_bytes(whole(layout))
    expected = contents(entries)

    listing = run(tar, "-tvf", str(archive))
    assert listing.returncode == 0, listing.stderr
    assert listing.stderr == ""
    lines = listing.stdout.splitlines()
    assert [line.split(maxsplit=5)[5] for line in lines] == [MANIFEST_NAME, *expected]
    assert all(line.startswith("-rw-r--r-- 0/0") for line in lines)

    out = tmp_path / "out"
    out.mkdir()
    extracted = run(tar, "-xf", str(archive), "-C", str(out))
    assert extracted.returncode == 0, extracted.stderr
    assert extracted.stderr == ""
    for path, data in expected.items():
        assert (out / path).read_bytes() == data
    assert (out / "hello.txt").stat().st_mtime == math.floor(MTIME)

    # Streamed through a pipe, chunk by chunk, as a client would receive it.
    piped = tmp_path / "piped"
    piped.mkdir()
    process = subprocess.Popen(
        [tar, "-xf", "-", "-C", str(piped)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    for chunk in layout.chunks():
        process.stdin.write(chunk)
    _, errors = process.communicate()
    assert process.returncode == 0, errors
    for path, data in expected.items():
        assert (piped / path).read_bytes() == data


def test_zip_is_read_back_by_zipfile(entries: list[BundleEntry]) -> None:
    manifest = manifest_json(entries, [])
    bundle = whole(ZipLayout(entries, manifest))
    expected = contents(entries)
    crcs = {entry.path: entry.crc32 for entry in entries}
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == [MANIFEST_NAME, *expected]
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x800  # UTF-8 names
            assert not info.flag_bits & 0x8  # no data descriptor
            assert info.extract_version == 20  # nothing needed ZIP64
            assert info.external_attr >> 16 == 0o100644
            assert 1 not in zip_extras(info)
            if info.filename == MANIFEST_NAME:
                assert archive.read(info) == manifest
                assert zlib.crc32(manifest) == info.CRC
                continue
            assert crcs[info.filename] == info.CRC
            assert archive.read(info) == expected[info.filename]
            assert info.file_size == info.compress_size == len(expected[info.filename])
        dates = {info.filename: info.date_time for info in infos}
    assert dates["hello.txt"] == (*time.gmtime(MTIME)[:5], time.gmtime(MTIME).tm_sec // 2 * 2)
    assert dates["old/before-1980.txt"] == (1980, 1, 1, 0, 0, 0)
    assert b"PK\x06\x06" not in bundle[-22 - 20 - 56 :]  # no ZIP64 end record


def test_zip_passes_unzip_test_and_extracts(tmp_path: Path, entries: list[BundleEntry]) -> None:
    unzip = require_command("unzip")
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(whole(ZipLayout(entries, manifest_json(entries, []))))
    tested = run(unzip, "-t", str(archive))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout

    out = tmp_path / "out"
    extracted = run(unzip, "-q", str(archive), "-d", str(out))
    assert extracted.returncode == 0, extracted.stdout + extracted.stderr
    for path, data in contents(entries).items():
        assert (out / path).read_bytes() == data
    # The extended timestamp carries the exact UTC second.
    assert (out / "hello.txt").stat().st_mtime == math.floor(MTIME)
    assert (out / "disk/source.bin").stat().st_mtime == 1_600_000_000


def test_zip_passes_zip_test(tmp_path: Path, entries: list[BundleEntry]) -> None:
    zip_command = require_command("zip")
    require_command("unzip")  # zip -T runs unzip
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(whole(ZipLayout(entries, manifest_json(entries, []))))
    tested = run(zip_command, "-T", str(archive))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "OK" in tested.stdout


def test_forced_zip64_is_read_by_unzip_and_zipfile(
    tmp_path: Path, entries: list[BundleEntry]
) -> None:
    layout = ZipLayout(entries, manifest_json(entries, []), force_zip64=True)
    bundle = whole(layout)
    assert len(bundle) == layout.size
    assert layout.etag != ZipLayout(entries, manifest_json(entries, [])).etag
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert archive.testzip() is None
        for info in archive.infolist():
            assert info.extract_version == 45
            assert len(zip_extras(info)[1]) == 24  # both sizes and the offset
        assert {i.filename: archive.read(i) for i in archive.infolist()[1:]} == contents(entries)
    # End of central directory: every field deferred to the ZIP64 end record before it.
    end = struct.unpack("<4s4H2LH", bundle[-22:])
    assert end[3:7] == (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert bundle[-22 - 20 : -22].startswith(b"PK\x06\x07")
    assert bundle[-22 - 20 - 56 : -22 - 20].startswith(b"PK\x06\x06")

    unzip = require_command("unzip")
    archive_path = tmp_path / "forced.zip"
    archive_path.write_bytes(bundle)
    tested = run(unzip, "-t", str(archive_path))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_bundle(fmt: Format) -> None:
    layout = make_layout(fmt, [], None)
    bundle = whole(layout)
    assert len(bundle) == layout.size
    if fmt == "tar":
        assert layout.size == tarfile.RECORDSIZE
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            assert tar.getmembers() == []
    else:
        assert layout.size == 22
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            assert archive.infolist() == []


def test_tar_end_is_padded_to_a_record(entries: list[BundleEntry]) -> None:
    layout = TarLayout(entries)
    assert layout.size % tarfile.RECORDSIZE == 0
    assert whole(layout).endswith(bytes(2 * tarfile.BLOCKSIZE))


# --- byte ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_range_equals_the_slice_and_reads_only_what_it_overlaps(
    fmt: Format, entries: list[BundleEntry], reads: ReadLog
) -> None:
    layout = make_layout(fmt, entries, manifest_json(entries, []))
    bundle = whole(layout)
    size = layout.size
    points = {0, 1, size - 1, size}
    for edge in edges(layout):
        points.update(p for p in (edge - 1, edge, edge + 1) if 0 <= p <= size)
    rng = random.Random(42)
    ranges = {(0, size), (0, 0), (size, size), (size - 1, size), (0, 1)}
    ordered = sorted(points)
    for point in ordered:
        ranges.add((point, size))
        ranges.add((0, point))
        ranges.add((point, min(size, point + 1)))
        ranges.add((point, min(size, point + rng.randrange(1, 3000))))
    for _ in range(300):
        start, end = sorted((rng.randrange(size + 1), rng.randrange(size + 1)))
        ranges.add((start, end))
        ranges.add((rng.choice(ordered), max(start, rng.choice(ordered))))
    for start, end in sorted(ranges):
        if end < start:
            continue
        reads.clear()
        got = b"".join(layout.chunks(start, end))
        assert got == bundle[start:end], (start, end)
        assert reads == expected_reads(layout, entries, start, end), (start, end)


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_does_not_read_earlier_files(
    fmt: Format, entries: list[BundleEntry], reads: ReadLog
) -> None:
    layout = make_layout(fmt, entries, manifest_json(entries, []))
    offsets = data_offsets(layout)
    resume = offsets["disk/source.bin"] + 150_000
    reads.clear()
    tail = b"".join(layout.chunks(resume))
    assert tail == whole(layout)[resume:]
    reads.clear()
    list(layout.chunks(resume))
    assert reads[0] == ("disk/source.bin", 150_000, 200_001)
    read_paths = [path for path, _, _ in reads]
    later = [e.path for e in entries if offsets.get(e.path, -1) > offsets["disk/source.bin"]]
    assert read_paths == ["disk/source.bin", *later]

    # A range inside one file reads that slice of that file only.
    bundle = whole(layout)
    reads.clear()
    start = offsets["exact-512.bin"] + 100
    assert b"".join(layout.chunks(start, start + 200)) == bundle[start : start + 200]
    assert reads == [("exact-512.bin", 100, 300)]


def test_zip_central_directory_range_reads_no_source(
    entries: list[BundleEntry], reads: ReadLog
) -> None:
    layout = ZipLayout(entries, manifest_json(entries, []))
    reads.clear()
    tail = b"".join(layout.chunks(layout.size - 500))
    assert tail == whole(layout)[-500:]
    reads.clear()
    list(layout.chunks(layout.size - 500))
    assert reads == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_ranges_out_of_bounds_are_refused_at_once(fmt: Format, entries: list[BundleEntry]) -> None:
    layout = make_layout(fmt, entries, None)
    for start, end in [(-1, 10), (5, 4), (0, layout.size + 1), (layout.size + 1, None)]:
        with pytest.raises(ValueError, match="outside a bundle"):
            layout.chunks(start, end)  # no iteration needed
        with pytest.raises(ValueError, match="outside a bundle"):
            layout.segments(start, end)
    assert list(layout.chunks(7, 7)) == []


def test_chunks_are_coalesced_not_one_per_header() -> None:
    many = [memory_entry(f"f{index:04d}.txt", b"x" * 10) for index in range(1000)]
    layout = TarLayout(many)
    chunks = list(layout.chunks())
    assert len(chunks) < 20
    assert b"".join(chunks) == whole(layout)


# --- ETag ----------------------------------------------------------------------------------


def sample(**changes: object) -> list[BundleEntry]:
    base: dict[str, object] = {"path": "dir/a.txt", "data": b"alpha", "mtime": MTIME}
    base.update(changes)
    data = base["data"]
    assert isinstance(data, bytes)
    first = memory_entry(str(base["path"]), data, mtime=float(str(base["mtime"])))
    return [first, memory_entry("b.txt", b"beta")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_etag_is_stable_for_identical_input(fmt: Format) -> None:
    one = make_layout(fmt, sample(), manifest_json(sample(), []))
    two = make_layout(fmt, sample(), manifest_json(sample(), []))
    assert one.etag == two.etag
    assert one.etag.startswith(f"{fmt}-")
    assert '"' not in one.etag  # the web layer quotes it
    # Sub-second mtime changes do not change a byte, so they keep the ETag.
    assert (
        make_layout(fmt, sample(mtime=MTIME + 0.1), None).etag
        == make_layout(fmt, sample(), None).etag
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_etag_changes_when_anything_changes(fmt: Format) -> None:
    base = make_layout(fmt, sample(), None).etag
    variants: dict[str, list[BundleEntry]] = {
        "path": sample(path="dir/c.txt"),
        "content": sample(data=b"alphx"),
        "size": sample(data=b"alpha!"),
        "mtime": sample(mtime=MTIME + 1),
        "order": list(reversed(sample())),
        "fewer": sample()[:1],
    }
    tags = {name: make_layout(fmt, entries, None).etag for name, entries in variants.items()}
    assert base not in tags.values()
    assert len(set(tags.values())) == len(tags)
    # Same size, mtime and crc but another sha256: the ETag names other content.
    first, second = sample()
    other = BundleEntry(first.path, first.size, first.mtime, "0" * 64, first.crc32, first.read)
    assert make_layout(fmt, [other, second], None).etag != base
    assert make_layout(fmt, sample(), b"{}").etag != base
    assert make_layout(fmt, sample(), b"{}").etag != make_layout(fmt, sample(), b"[]").etag
    other_format: Format = "zip" if fmt == "tar" else "tar"
    assert make_layout(other_format, sample(), None).etag != base


def test_zip_etag_follows_the_crc32_it_writes() -> None:
    first, second = sample()
    other = BundleEntry(first.path, first.size, first.mtime, first.sha256, 1234, first.read)
    assert ZipLayout([other, second]).etag != ZipLayout(sample()).etag
    # A tar does not hold CRCs: the same bytes, the same ETag.
    assert TarLayout([other, second]).etag == TarLayout(sample()).etag


# --- manifest and validation -----------------------------------------------------------------


def test_manifest_lists_files_and_missing_items(entries: list[BundleEntry]) -> None:
    missing = [
        {"path": "gone/file.txt", "reason": "the file was deleted", "file_id": 12},
        {"reason": "no such file", "file_id": 99},
    ]
    first = manifest_json(entries, missing)
    assert first == manifest_json(entries, [dict(reversed(item.items())) for item in missing])
    document = json.loads(first)
    assert document["version"] == 1
    assert document["format"] == "conveyor-cart-manifest"
    assert document["file_count"] == len(entries)
    assert document["missing_count"] == 2
    assert document["total_size"] == sum(entry.size for entry in entries)
    assert document["files"] == [
        {"path": e.path, "size": e.size, "sha256": e.sha256} for e in entries
    ]
    assert document["missing"] == missing
    assert UNICODE_NAME.encode() in first  # not \u-escaped
    assert first.count(b"\n") == 2 + len(entries) + 2 + len(missing) + 1
    empty = json.loads(manifest_json([], []))
    assert (empty["files"], empty["missing"], empty["total_size"]) == ([], [], 0)


def test_manifest_needs_a_reason_for_each_missing_item() -> None:
    with pytest.raises(ValueError, match="no reason"):
        manifest_json([], [{"path": "x"}])
    with pytest.raises(ValueError, match="no reason"):
        manifest_json([], [{"path": "x", "reason": ""}])


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_name_can_be_chosen_and_must_not_clash(fmt: Format) -> None:
    entries = sample()
    layout = make_layout(fmt, entries, b"{}", manifest_name="cart-7/manifest.json")
    assert layout.manifest_name == "cart-7/manifest.json"
    first = next(part for part in layout.segments() if isinstance(part, SourceSpan))
    assert first.entry.path == "cart-7/manifest.json"
    clash = [*entries, memory_entry(MANIFEST_NAME, b"mine")]
    with pytest.raises(ValueError, match="manifest"):
        make_layout(fmt, clash, b"{}")
    assert make_layout(fmt, clash, None).size > 0  # no manifest, no clash


@pytest.mark.parametrize(
    ("path", "size", "crc", "mtime", "message"),
    [
        ("", 1, 0, 0.0, "not a relative file path"),
        ("/etc/passwd", 1, 0, 0.0, "not a relative file path"),
        ("dir/", 1, 0, 0.0, "not a relative file path"),
        ("a\x00b", 1, 0, 0.0, "not a relative file path"),
        ("bad\udcff", 1, 0, 0.0, "not valid UTF-8"),
        ("x" * 70_000, 1, 0, 0.0, "longer than"),
        ("neg", -1, 0, 0.0, "negative size"),
        ("crc", 1, 1 << 32, 0.0, "CRC-32"),
        ("nan", 1, 0, float("nan"), "finite mtime"),
    ],
)
def test_bad_entries_are_refused(
    path: str, size: int, crc: int, mtime: float, message: str
) -> None:
    entry = BundleEntry(path, size, mtime, "0" * 64, crc, lambda start, end: iter(()))
    for fmt in FORMATS:
        with pytest.raises(ValueError, match=message):
            make_layout(fmt, [entry], None)


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        TarLayout([memory_entry("a", b"1"), memory_entry("a", b"2")])


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown bundle format"):
        make_layout("rar", [], None)  # type: ignore[arg-type]


def lying_entry(path: str, size: int, actual: bytes) -> BundleEntry:
    def read(start: int, end: int) -> Iterator[bytes]:
        yield actual[start:]

    return BundleEntry(path, size, MTIME, "0" * 64, zlib.crc32(actual), read)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("actual", [b"short", b"much too long"])
def test_a_source_of_the_wrong_length_stops_the_stream(fmt: Format, actual: bytes) -> None:
    layout = make_layout(fmt, [lying_entry("liar.txt", 8, actual)], None)
    with pytest.raises(EntrySourceError, match=r"liar\.txt"):
        b"".join(layout.chunks())


def test_an_abandoned_stream_closes_its_source() -> None:
    closed: list[str] = []

    def read(start: int, end: int) -> Iterator[bytes]:
        try:
            for position in range(start, end, 1000):
                yield b"y" * min(1000, end - position)
        finally:
            closed.append("closed")

    entry = BundleEntry("big.bin", 1_000_000, MTIME, "0" * 64, 0, read)
    stream = TarLayout([entry]).chunks()
    next(stream)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert closed == ["closed"]


# --- ZIP64 thresholds, without reading any data ------------------------------------------------


def local_header(layout: ZipLayout) -> tuple[tuple[int, ...], bytes]:
    first = next(iter(layout.segments()))
    assert isinstance(first, bytes)
    fields = struct.unpack("<4s2B4HL2L2H", first[:30])
    name_length, extra_length = fields[-2:]
    return fields, first[30 + name_length : 30 + name_length + extra_length]


def test_zip64_starts_exactly_at_the_32_bit_sentinel() -> None:
    below = ZipLayout([zeros_entry_header_only("a.bin", 0xFFFFFFFE)])
    fields, extra = local_header(below)
    assert fields[1] == 20 and fields[8] == fields[9] == 0xFFFFFFFE
    assert not extra.startswith(b"\x01\x00")

    at = ZipLayout([zeros_entry_header_only("a.bin", 0xFFFFFFFF)])
    fields, extra = local_header(at)
    assert fields[1] == 45 and fields[8] == fields[9] == 0xFFFFFFFF
    assert extra[:20] == struct.pack("<HHQQ", 1, 16, 0xFFFFFFFF, 0xFFFFFFFF)
    tail = b"".join(at.chunks(at.size - 22 - 20 - 56))
    assert tail.startswith(b"PK\x06\x06")  # the directory starts past 4 GiB


def zeros_entry_header_only(path: str, size: int) -> BundleEntry:
    """An entry whose data must never be read (only headers are looked at)."""

    def read(start: int, end: int) -> Iterator[bytes]:
        raise AssertionError(f"{path} was read [{start}, {end})")

    return BundleEntry(path, size, MTIME, "0" * 64, 0, read)


def empty_entries(count: int) -> list[BundleEntry]:
    """Many empty entries, cheaply: no hashing, one shared reader."""
    empty_sha256 = hashlib.sha256(b"").hexdigest()

    def read(start: int, end: int) -> Iterator[bytes]:
        raise AssertionError("an empty entry was read")

    return [BundleEntry(f"{index:05x}", 0, MTIME, empty_sha256, 0, read) for index in range(count)]


@pytest.mark.parametrize(("count", "zip64"), [(0xFFFE, False), (0xFFFF, True)])
def test_zip64_end_record_starts_at_65535_entries(count: int, zip64: bool) -> None:
    layout = ZipLayout(empty_entries(count))
    tail = b"".join(layout.chunks(layout.size - 22 - 20 - 56))
    end = struct.unpack("<4s4H2LH", tail[-22:])
    assert end[4] == min(count, 0xFFFF)
    assert tail.startswith(b"PK\x06\x06") is zip64


# --- big bundles (sparse files; each a few seconds) ----------------------------------------


def write_sparse(layout: BundleLayout, target: Path, holes: set[str]) -> None:
    """The bundle on disk, with the sources named in ``holes`` (all zeros) left as holes."""
    with target.open("wb") as out:
        for part in layout.segments():
            if isinstance(part, SourceSpan) and part.entry.path in holes:
                out.seek(part.end - part.start, os.SEEK_CUR)
            elif isinstance(part, SourceSpan):
                for piece in part.entry.read(part.start, part.end):
                    out.write(piece)
            else:
                out.write(part)
        out.truncate(layout.size)
    assert target.stat().st_size == layout.size
    assert target.stat().st_blocks * 512 < 64 * MiB, "the file system did not keep holes"


def check_ranges_against_file(layout: BundleLayout, target: Path, reads: ReadLog) -> None:
    """Every edge of the layout, read through chunks(), equals the file around it."""
    with target.open("rb") as handle:
        for edge in edges(layout):
            start, end = max(0, edge - 700), min(layout.size, edge + 700)
            handle.seek(start)
            assert b"".join(layout.chunks(start, end)) == handle.read(end - start), edge
    assert all(end - start <= 1400 for _, start, end in reads)


def test_big_zip64_over_4_gib(tmp_path: Path, reads: ReadLog) -> None:
    """> 4 GiB: ZIP64 sizes for the big entry, a ZIP64 offset after it, ZIP64 end records.

    Both readers check the members stored past 4 GiB, through the ZIP64 directory. Reading
    all 4 GiB back to check the big member's CRC takes ~30 s (zipfile ~10 s, unzip ~18 s),
    so it runs only with TEST_FULL_ZIP64=1.
    """
    big = 0xFFFFFFFF + 4097
    entries = [
        memory_entry("before.txt", b"before\n", log=reads),
        zeros_entry("zeros.bin", big, log=reads),
        memory_entry("after/é.txt", b"after\n", log=reads),
    ]
    layout = ZipLayout(entries, manifest_json(entries, []))
    assert layout.size > big
    target = tmp_path / "big.zip"
    write_sparse(layout, target, {"zeros.bin"})
    check_ranges_against_file(layout, target, reads)
    full = os.environ.get("TEST_FULL_ZIP64") == "1"

    with zipfile.ZipFile(target) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert list(infos) == [MANIFEST_NAME, "before.txt", "zeros.bin", "after/é.txt"]
        assert 1 not in zip_extras(infos["before.txt"])
        assert len(zip_extras(infos["zeros.bin"])[1]) == 16  # both sizes
        assert len(zip_extras(infos["after/é.txt"])[1]) == 8  # the offset only
        assert infos["after/é.txt"].header_offset > 0xFFFFFFFF
        assert infos["zeros.bin"].file_size == big
        assert archive.read("after/é.txt") == b"after\n"
        assert archive.read("before.txt") == b"before\n"
        with archive.open("zeros.bin") as member:
            assert member.read(MiB) == ZEROS
        if full:
            assert archive.testzip() is None
    with target.open("rb") as handle:
        handle.seek(infos["zeros.bin"].header_offset)
        local = handle.read(30 + len("zeros.bin") + 20)
    assert local[18:26] == b"\xff" * 8
    assert local[30 + len("zeros.bin") :] == struct.pack("<HHQQ", 1, 16, big, big)

    unzip = require_command("unzip")
    members = [] if full else [MANIFEST_NAME, "before.txt", "after/é.txt"]
    tested = run(unzip, "-tqq", str(target), *members)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_big_zip_with_more_than_65535_entries(tmp_path: Path) -> None:
    count = 65_536
    tiny = [
        memory_entry(f"d{index % 16:x}/{index:05d}.txt", b"%d" % index) for index in range(count)
    ]
    layout = ZipLayout(tiny, manifest_json(tiny, []))
    target = tmp_path / "many.zip"
    with target.open("wb") as out:
        for chunk in layout.chunks():
            out.write(chunk)
    assert target.stat().st_size == layout.size
    with zipfile.ZipFile(target) as archive:
        infos = archive.infolist()
        assert len(infos) == count + 1
        assert archive.testzip() is None
        assert archive.read("d3/65523.txt") == b"65523"
        assert json.loads(archive.read(MANIFEST_NAME))["file_count"] == count
    unzip = require_command("unzip")
    tested = run(unzip, "-tqq", str(target))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_big_tar_member_over_8_gib(tmp_path: Path, reads: ReadLog) -> None:
    """A size past the ustar octal field (8 GiB) goes in a PAX header; tar readers agree."""
    big = (8 << 30) + 513
    entries = [
        zeros_entry("zeros.bin", big, log=reads, crc=False),
        memory_entry("after.txt", b"after\n", log=reads),
    ]
    layout = TarLayout(entries)
    target = tmp_path / "big.tar"
    write_sparse(layout, target, {"zeros.bin"})
    check_ranges_against_file(layout, target, reads)
    with tarfile.open(target) as tar:
        members = tar.getmembers()
        assert [(m.name, m.size) for m in members] == [("zeros.bin", big), ("after.txt", 6)]
        assert members[0].pax_headers["size"] == str(big)
        handle = tar.extractfile(members[1])
        assert handle is not None
        assert handle.read() == b"after\n"
    tar_command = require_command("tar")
    listing = run(tar_command, "-tvf", str(target))
    assert listing.returncode == 0, listing.stderr
    assert str(big) in listing.stdout
    out = tmp_path / "out"
    out.mkdir()
    extracted = run(tar_command, "-xf", str(target), "-C", str(out), "after.txt")
    assert extracted.returncode == 0, extracted.stderr
    assert (out / "after.txt").read_bytes() == b"after\n"


def test_layouts_are_usable_through_the_abstract_type() -> None:
    makers: list[Callable[[list[BundleEntry]], BundleLayout]] = [TarLayout, ZipLayout]
    for maker in makers:
        layout = maker(sample())
        assert isinstance(layout, BundleLayout)
        assert layout.format in FORMATS
