"""A forward-only, seekable view of a byte stream, for tarfile's plain (non-stream) reader.

tarfile's own stream mode copies its read-ahead buffer on every small read and joins many
small reads for every large one; on a 1 GiB bundle that costs as much as hashing it. tarfile
in plain mode only ever seeks forward while iterating, so skipping ahead by reading is enough,
and member data can then be read straight from here in large chunks.
"""

from __future__ import annotations

import io
from typing import IO

SKIP_CHUNK = 1024 * 1024


class ForwardReader(io.RawIOBase):
    """Reads ``source`` once, front to back; ``seek`` moves forward only."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._position = 0

    def readable(self) -> bool:
        """Always."""
        return True

    def seekable(self) -> bool:
        """Forward seeks only; tarfile asks before seeking."""
        return True

    def tell(self) -> int:
        """Bytes consumed so far."""
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the source blocks until it has them or ends)."""
        data = self._source.read(-1 if size is None else size)
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the source."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` by reading past what lies before it."""
        target = offset if whence == io.SEEK_SET else self._position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
            raise io.UnsupportedOperation(f"cannot seek back from {self._position} to {target}")
        while self._position < target:
            if not self.read(min(SKIP_CHUNK, target - self._position)):
                break
        return self._position
