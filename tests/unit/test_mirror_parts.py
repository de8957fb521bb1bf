"""Part files: every byte lands in order, small files through the cache, large ones direct."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
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
    """Direct I/O from 100 kB on, in spans of 16 KiB: many spans from a small file."""
    monkeypatch.setattr(parts, "DIRECT_FROM", DIRECT_FROM)
    monkeypatch.setattr(parts, "DIRECT_SPAN", SPAN)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def write(part: Path, offset: int, data: bytes, size: int) -> None:
    with PartWriter(part, offset) as out:
        for chunk in chunks(data, size):
            out.write(chunk)


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
