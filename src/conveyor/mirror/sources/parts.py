"""Part files: where a transfer's bytes land until the file is checked and archived.

A small file is gathered and written in a few calls through the page cache. A large one
goes to disk by direct I/O once past :data:`DIRECT_FROM`: its bytes must be on disk before
the release is published anyway, and through the page cache they cost a copy into it,
memory that other work on the host wants, and a flush at the end (on the development
machine, 1 GiB written by 4 threads and made durable: 0.04-0.14 s of CPU with direct I/O,
0.6-2.1 s through the cache). Where a filesystem refuses direct I/O, large files are sent
to disk span by span while they download instead.

A source reading from a socket of its own hands the writer its ``recv_into`` (see
:meth:`PartWriter.receive`): the bytes land in the buffer they are written from, with no
``bytes`` object made and copied for each read.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

WRITE_BUFFER = 64 * 1024
# What :meth:`PartWriter.receive` reads into before the file goes direct; it is written
# out once less than WRITE_BUFFER of it is free, so a file of 100 KiB costs one write.
RECEIVE_BUFFER = 256 * 1024
# writev takes at most IOV_MAX (1,024 on Linux) buffers; tiny chunks are written sooner.
MAX_GATHERED = 256
# Direct I/O wants the buffer's address, its length and the file offset on a multiple of
# the device's logical block size: 4 KiB covers 512-byte and 4 KiB devices.
ALIGN = 4096
DIRECT_FROM = 8 * 1024 * 1024
DIRECT_SPAN = 1024 * 1024
# Without direct I/O, a large file's bytes are sent to disk in spans of this size while
# it downloads, so the flush before a release is published has little left to write.
WRITEBACK_SPAN = 32 * 1024 * 1024
_DIRECT_FLAG = getattr(os, "O_DIRECT", 0)


def open_part(part: Path, offset: int, flags: int = 0) -> int:
    """A descriptor writing ``part``, which holds ``offset`` bytes, made (with its folder)
    when missing; at offset 0 whatever it held is dropped, so bytes left by an attempt
    nobody resumes never precede the new ones.

    Plain calls, not ``mkdir(exist_ok=True)`` first: the folder is made only when the open
    finds it missing, and a run of small files opens thousands of parts.
    """
    flags |= os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC)
    try:
        return os.open(part, flags, 0o644)
    except FileNotFoundError:
        part.parent.mkdir(parents=True, exist_ok=True)
        return os.open(part, flags, 0o644)


class PartWriter:
    """Appends to a part file that holds ``offset`` bytes, opened by :func:`open_part`.

    Chunks are gathered up to :data:`WRITE_BUFFER` and written by one ``writev``: no copy,
    and a small file costs an open, one write and a close. Past :data:`DIRECT_FROM` they
    are copied into an aligned span of :data:`DIRECT_SPAN` and written with ``O_DIRECT``
    (a thread writing full spans while the next one filled gained nothing: large files are
    bound by the CPU, sha256 first).
    """

    def __init__(self, part: Path, offset: int) -> None:
        self._descriptor = open_part(part, offset, os.O_APPEND)
        self._gathered: list[bytes | memoryview] = []
        self._gathered_size = 0
        self._received: bytearray | None = None  # the buffer receive() fills, made on demand
        self._received_size = 0
        self._received_gathered = 0  # how much of it is in _gathered
        self._written = self._flushed = offset
        self._span: mmap.mmap | None = None  # page-aligned, once the file goes direct
        self._spanned = 0
        self._direct = False  # whether O_DIRECT is set on the descriptor
        self._direct_refused = not _DIRECT_FLAG

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (written out once enough is gathered)."""
        if self._span is not None:
            self._fill_span(chunk)
            return
        self._gather_received()
        self._gather(chunk)
        if self._gathered_size >= WRITE_BUFFER or len(self._gathered) >= MAX_GATHERED:
            self._write_gathered()

    def receive(self, fill: Callable[[memoryview], int]) -> memoryview:
        """Append what ``fill`` places at the start of the free buffer it is given (as
        ``socket.recv_into`` does, returning the count); the appended bytes, as a view
        that stays valid until the next call. An empty view: ``fill`` placed nothing.

        Writing is deferred to the next call or :meth:`close`, so the caller may hash the
        view in between.
        """
        if self._span is None:
            return self._receive_buffered(fill)
        if self._spanned == DIRECT_SPAN:
            self._write_span(final=False)
        start = self._spanned
        free = memoryview(self._span)[start:]
        self._spanned += fill(free)
        return free[: self._spanned - start]

    def _receive_buffered(self, fill: Callable[[memoryview], int]) -> memoryview:
        if self._received is None:
            self._received = bytearray(RECEIVE_BUFFER)
        elif RECEIVE_BUFFER - self._received_size < WRITE_BUFFER:
            self._write_gathered()
            if self._span is not None:  # the file has just gone direct
                return self.receive(fill)
        free = memoryview(self._received)[self._received_size :]
        count = fill(free)
        self._received_size += count
        return free[:count]

    def close(self) -> None:
        """Write what is held and close the file."""
        try:
            if self._span is None:
                self._write_gathered()
            else:
                self._write_span(final=True)
        finally:
            # Not closed: a view handed out by receive() may still refer to it.
            self._span = self._received = None
            os.close(self._descriptor)

    def _gather(self, chunk: bytes | memoryview) -> None:
        self._gathered.append(chunk)
        self._gathered_size += len(chunk)

    def _gather_received(self) -> None:
        """Queue what was received since the last call, as one piece, behind what is queued."""
        if self._received is not None and self._received_gathered < self._received_size:
            region = memoryview(self._received)[self._received_gathered : self._received_size]
            self._gather(region)
            self._received_gathered = self._received_size

    def _write_gathered(self) -> None:
        self._gather_received()
        if not self._gathered:
            return
        self._write_all(self._gathered, self._gathered_size)
        self._gathered, self._gathered_size = [], 0
        self._received_size = self._received_gathered = 0  # all written: the buffer is free
        if not self._direct_refused and self._written >= DIRECT_FROM:
            self._span = mmap.mmap(-1, DIRECT_SPAN)
            self._received = None

    def _fill_span(self, chunk: bytes) -> None:
        span = self._span
        assert span is not None
        with memoryview(chunk) as rest:
            while rest:
                if self._spanned == DIRECT_SPAN:
                    self._write_span(final=False)
                piece = rest[: DIRECT_SPAN - self._spanned]
                span[self._spanned : self._spanned + len(piece)] = piece
                self._spanned += len(piece)
                rest = rest[len(piece) :]

    def _write_span(self, final: bool) -> None:
        """Write the span's aligned bytes directly; a head up to the first aligned offset,
        and the file's last bytes, go through the page cache."""
        span = self._span
        assert span is not None
        head = min((-self._written) % ALIGN, self._spanned)
        if head:
            self._buffered(span[:head])
            span.move(0, head, self._spanned - head)
            self._spanned -= head
        body = self._spanned - self._spanned % ALIGN
        if body:
            self._direct_write(span, body)
            span.move(0, body, self._spanned - body)
            self._spanned -= body
        if final and self._spanned:
            self._buffered(span[: self._spanned])
            self._spanned = 0

    def _direct_write(self, span: mmap.mmap, length: int) -> None:
        with memoryview(span) as view, view[:length] as aligned:
            if self._set_direct(True):
                try:
                    self._write_all([aligned], length)
                    self._flushed = self._written
                    return
                except OSError as error:
                    # Some filesystems take the flag and refuse the write; nothing was written.
                    if error.errno != errno.EINVAL:
                        raise
                    self._direct_refused = True
            self._buffered(aligned)

    def _buffered(self, data: bytes | memoryview) -> None:
        self._set_direct(False)
        self._write_all([data], len(data))

    def _set_direct(self, direct: bool) -> bool:
        """Switch ``O_DIRECT`` on or off; whether the descriptor now is as asked."""
        if direct and self._direct_refused:
            return False
        if direct != self._direct:
            flags = fcntl.fcntl(self._descriptor, fcntl.F_GETFL)
            flags = flags | _DIRECT_FLAG if direct else flags & ~_DIRECT_FLAG
            try:
                fcntl.fcntl(self._descriptor, fcntl.F_SETFL, flags)
            except OSError:
                self._direct_refused = True
                return False
            self._direct = direct
        return True

    def _write_all(self, buffers: Sequence[bytes | memoryview], size: int) -> None:
        written = os.writev(self._descriptor, buffers)
        if written < size:  # a short write: the rest one call at a time, through the cache
            self._set_direct(False)
            rest = memoryview(b"".join(buffers))[written:]
            while rest:
                rest = rest[os.write(self._descriptor, rest) :]
        self._written += size
        if not self._direct and self._written - self._flushed >= WRITEBACK_SPAN:
            _start_writeback(self._descriptor, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _start_writeback(descriptor: int, start: int, length: int) -> None:
    """Start writing a span of a file to disk without waiting for it.

    On Linux, ``POSIX_FADV_DONTNEED`` begins writeback of the span's dirty pages (and drops
    only pages already clean); Python has no ``sync_file_range``. Elsewhere it is advice.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        advise(descriptor, start, length, os.POSIX_FADV_DONTNEED)
