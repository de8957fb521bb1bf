"""A blocking file-like view of an ASGI request body, for code that reads streams in a thread.

tarfile wants ``read(n)``; Starlette gives an async iterator. Each hop from the worker thread
to the event loop costs tens of microseconds, so a hop gathers up to :data:`GATHER` bytes and
small reads (tar headers, small members) are served from that buffer. Large reads get whole
gathered blocks, without a further copy.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

from anyio import from_thread
from starlette.requests import ClientDisconnect

GATHER = 1024 * 1024


class UploadStopped(ConnectionError):
    """The client went away before the body ended."""


class BlockingBody(io.RawIOBase):
    """Reads an async byte iterator from a worker thread started by ``anyio.to_thread``."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._carry = b""
        self._ended = False
        self._buffer = b""
        self._offset = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        """Always: this is a read stream."""
        return True

    async def _gather(self, want: int) -> bytes:
        parts = [self._carry] if self._carry else []
        have = len(self._carry)
        self._carry = b""
        while have < want and not self._ended:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            except ClientDisconnect:
                raise UploadStopped(
                    f"the client disconnected after {self.bytes_read} bytes"
                ) from None
            parts.append(chunk)
            have += len(chunk)
        if have > want:
            last = parts[-1]
            keep = len(last) - (have - want)
            parts[-1], self._carry = last[:keep], last[keep:]
        return b"".join(parts)

    def _fetch(self, want: int) -> bytes:
        return from_thread.run(self._gather, want)

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes, fewer only at the end (all that is left when ``size`` is negative)."""
        if size is None or size < 0:
            parts = [self._take(len(self._buffer) - self._offset)]
            while chunk := self._fetch(GATHER):
                parts.append(chunk)
            return self._count(b"".join(parts))
        available = len(self._buffer) - self._offset
        if available == 0 and size >= GATHER:
            return self._count(self._fetch(size))
        if available < size:
            self._buffer = self._buffer[self._offset :] + self._fetch(max(GATHER, size - available))
            self._offset = 0
        return self._count(self._take(size))

    def _take(self, size: int) -> bytes:
        end = min(len(self._buffer), self._offset + size)
        if self._offset == 0 and end == len(self._buffer):
            data = self._buffer
        else:
            data = self._buffer[self._offset : end]
        self._offset = end
        if self._offset == len(self._buffer):
            self._buffer, self._offset = b"", 0
        return data

    def _count(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the body."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def drain(self) -> None:
        """Consume what the client still sends, so it gets our answer instead of a reset."""
        self._buffer, self._offset, self._carry = b"", 0, b""
        if self._ended:
            return
        try:
            async for _ in self._chunks:
                pass
        except ClientDisconnect:
            return
