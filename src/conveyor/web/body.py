"""A blocking file-like view of an ASGI request body, for code that reads streams in a thread.

tarfile wants ``read(n)``; Starlette gives an async iterator. Each blocking ``read`` hops to
the event loop once and gathers up to :data:`GATHER` bytes there, so the hop costs little.
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
        self._buffer = bytearray()
        self._ended = False
        self.bytes_read = 0

    def readable(self) -> bool:
        """Always: this is a read stream."""
        return True

    async def _gather(self, want: int) -> bytes:
        while len(self._buffer) < want and not self._ended:
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
            except ClientDisconnect:
                raise UploadStopped(
                    f"the client disconnected after {self.bytes_read} bytes"
                ) from None
        taken = bytes(self._buffer[:want])
        del self._buffer[:want]
        return taken

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when ``size`` is negative)."""
        want = GATHER if size is None or size < 0 else size
        if size is None or size < 0:
            parts = []
            while chunk := from_thread.run(self._gather, want):
                parts.append(chunk)
            data = b"".join(parts)
        else:
            data = from_thread.run(self._gather, want)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the body."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def drain(self) -> None:
        """Consume what the client still sends, so it gets our answer instead of a reset."""
        self._buffer.clear()
        if self._ended:
            return
        try:
            async for _ in self._chunks:
                pass
        except ClientDisconnect:
            return
