"""Part files: every byte lands in order, small files through the cache, large ones direct."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor.mirror.sources import parts
from conveyor.mirror.sources.parts import PartWriter

DIRECT_FROM = 100_000
SPAN = 4 * parts.ALIGN
DATA = os.urandom(DIRECT_FROM + 7 * SPAN + 1234)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT is Linux's")


@pytest.fixture(autouse=True)
def _small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct I/O from 100 kB on, in spans of 16 KiB: many spans from a small file; the
    receive buffer written out every 32 KiB or so before that."""
    monkeypatch.setattr(parts, "DIRECT_FROM", DIRECT_FROM)
    monkeypatch.setattr(parts, "DIRECT_SPAN", SPAN)
    monkeypatch.setattr(parts, "RECEIVE_BUFFER", parts.WRITE_BUFFER + 32 * 1024)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def write(part: Path, offset: int, data: bytes, size: int) -> None:
    with PartWriter(part, offset) as out:
        for chunk in chunks(data, size):
            out.write(chunk)


def feeding(data: bytes, size: int) -> Callable[[memoryview], int]:
    """A ``fill`` for :meth:`PartWriter.receive` placing up to ``size`` bytes of ``data``
    a call, as ``recv_into`` does."""
    position = 0

    def fill(free: memoryview) -> int:
        nonlocal position
        piece = data[position : position + min(size, len(free))]
        free[: len(piece)] = piece
        position += len(piece)
        return len(piece)

    return fill


def receive(part: Path, offset: int, data: bytes, size: int) -> bytes:
    """``data`` appended through ``receive``; what the views said, each read as it came."""
    fill = feeding(data, size)
    seen = []
    with PartWriter(part, offset) as out:
        while piece := out.receive(fill):
            seen.append(bytes(piece))
    return b"".join(seen)


def descriptor_flags(part: Path) -> int:
    """The open flags of this process's descriptor on ``part``, as the kernel reports them."""
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if entry.readlink() == part:
                fields = dict(
                    line.split(":\t", 1)
                    for line in Path(f"/proc/self/fdinfo/{entry.name}").read_text().splitlines()
                )
                return int(fields["flags"], 8)
        except FileNotFoundError:
            continue
    raise AssertionError(f"{part} is not open")


@pytest.mark.parametrize("size", [1, 7_777, 65_536, 300_001])
@pytest.mark.parametrize("offset", [0, 1, 4_095, 4_096, DIRECT_FROM - 1, DIRECT_FROM + 4_097])
def test_every_byte_lands_in_order_from_any_offset(tmp_path: Path, offset: int, size: int) -> None:
    part = tmp_path / "deep" / "file.part"
    if offset:
        part.parent.mkdir()
        part.write_bytes(DATA[:offset])
    data = DATA[offset:] if size > 1 else DATA[offset : offset + 3 * SPAN]
    write(part, offset, data, size)
    assert part.read_bytes() == DATA[: offset + len(data)]


@pytest.mark.parametrize("size", [1_000, 7_777, 65_536, 300_001])
@pytest.mark.parametrize("offset", [0, 4_095, DIRECT_FROM - 1, DIRECT_FROM + 4_097])
def test_received_bytes_land_in_order_and_each_view_holds_them(
    tmp_path: Path, offset: int, size: int
) -> None:
    part = tmp_path / "deep" / "file.part"
    if offset:
        part.parent.mkdir()
        part.write_bytes(DATA[:offset])
    assert receive(part, offset, DATA[offset:], size) == DATA[offset:]
    assert part.read_bytes() == DATA


def test_written_and_received_pieces_keep_their_order(tmp_path: Path) -> None:
    part = tmp_path / "file.part"
    pieces = list(chunks(DATA, 9_000))
    with PartWriter(part, 0) as out:
        for number, piece in enumerate(pieces):
            if number % 3:
                out.write(piece)
                continue
            fill, seen = feeding(piece, len(piece)), b""
            while view := out.receive(fill):
                seen += view
            assert seen == piece
    assert part.read_bytes() == DATA


def test_a_fill_placing_nothing_keeps_what_came_before(tmp_path: Path) -> None:
    part = tmp_path / "file.part"
    with PartWriter(part, 0) as out:
        assert out.receive(feeding(DATA[:5_000], 5_000)) == DATA[:5_000]
        assert out.receive(feeding(b"", 5_000)) == b""
    assert part.read_bytes() == DATA[:5_000]


@linux_only
def test_received_bytes_past_the_threshold_are_written_directly(tmp_path: Path) -> None:
    part = tmp_path / "file.part"
    went_direct_at = None
    with PartWriter(part, 0) as out:
        fill = feeding(DATA, 7_777)
        while view := out.receive(fill):
            if went_direct_at is None and descriptor_flags(part) & os.O_DIRECT:
                went_direct_at = part.stat().st_size
            del view
    assert went_direct_at is not None and DIRECT_FROM <= went_direct_at < len(DATA)
    assert part.read_bytes() == DATA


@linux_only
def test_past_the_threshold_the_file_is_written_directly(tmp_path: Path) -> None:
    part = tmp_path / "file.part"
    with PartWriter(part, 0) as out:
        out.write(DATA[: DIRECT_FROM // 2])
        out.write(DATA[DIRECT_FROM // 2 : DIRECT_FROM])
        assert not descriptor_flags(part) & os.O_DIRECT
        out.write(DATA[DIRECT_FROM:])
        assert descriptor_flags(part) & os.O_DIRECT
    assert part.read_bytes() == DATA


def test_a_small_file_never_goes_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real_fcntl = fcntl.fcntl

    def recording(*args: Any) -> Any:
        calls.append(args)
        return real_fcntl(*args)

    monkeypatch.setattr(parts.fcntl, "fcntl", recording)
    part = tmp_path / "file.part"
    write(part, 0, DATA[: DIRECT_FROM - 1], 7_777)
    assert part.read_bytes() == DATA[: DIRECT_FROM - 1]
    assert calls == []


def test_where_direct_io_is_refused_large_files_go_to_disk_span_by_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parts, "WRITEBACK_SPAN", 50_000)
    real_fcntl = fcntl.fcntl

    def refusing(descriptor: int, command: int, arg: int = 0) -> Any:
        if command == fcntl.F_SETFL and arg & parts._DIRECT_FLAG:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(descriptor, command, arg)

    advised: list[tuple[int, int]] = []
    real_advise = os.posix_fadvise

    def recording_advise(descriptor: int, start: int, length: int, advice: int) -> None:
        advised.append((start, length))
        real_advise(descriptor, start, length, advice)

    monkeypatch.setattr(parts.fcntl, "fcntl", refusing)
    monkeypatch.setattr(os, "posix_fadvise", recording_advise)
    part = tmp_path / "file.part"
    write(part, 0, DATA, 7_777)
    assert part.read_bytes() == DATA
    assert sum(length for _, length in advised) >= len(DATA) - 50_000
    assert [start for start, _ in advised] == sorted({start for start, _ in advised})


@linux_only
def test_a_filesystem_refusing_direct_writes_gets_them_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev
    refused: list[int] = []

    def refusing_direct(descriptor: int, buffers: Sequence[Any]) -> int:
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(descriptor)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_writev(descriptor, buffers)

    monkeypatch.setattr(os, "writev", refusing_direct)
    part = tmp_path / "file.part"
    write(part, 0, DATA, 7_777)
    assert part.read_bytes() == DATA
    assert len(refused) == 1  # refused once, then never asked again


@linux_only
def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def full_disk(descriptor: int, buffers: Sequence[Any]) -> int:
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(descriptor, buffers)

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write(tmp_path / "file.part", 0, DATA, 7_777)
