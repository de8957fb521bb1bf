"""Reading a whole remote file the two ways the mirror does: a source in a thread, or the
protocol's event-loop reader."""

from __future__ import annotations

import asyncio

from conveyor.mirror.sources import open_async_reader, open_source
from conveyor.mirror.spec import SourceSpec


def read_whole(spec: SourceSpec, path: str, offset: int = 0, *, loop: bool = False) -> bytes:
    """The bytes of ``path`` from ``offset``, through a source or (``loop``) its AsyncReader."""
    if loop:
        return asyncio.run(_read_on_loop(spec, path, offset))
    with open_source(spec) as source:
        return b"".join(source.read(path, offset))


async def _read_on_loop(spec: SourceSpec, path: str, offset: int) -> bytes:
    reader = open_async_reader(spec, 2)
    assert reader is not None, f"{spec.protocol} has no event-loop reader"
    try:
        return b"".join([chunk async for chunk in reader.read(path, offset)])
    finally:
        await reader.close()
