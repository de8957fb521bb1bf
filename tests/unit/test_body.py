"""The blocking view of a request body that bundle reading runs on."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio import to_thread
from starlette.requests import ClientDisconnect

from conveyor.web.body import GATHER, BlockingBody, UploadStopped

PAYLOAD = random.Random(7).randbytes(5 * GATHER + 12_345)


async def chunks(data: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    rng = random.Random(3)
    position = 0
    while position < len(data):
        if fail_after is not None and position >= fail_after:
            raise ClientDisconnect
        size = rng.choice([1, 511, 4096, 65536, 200_000])
        yield data[position : position + size]
        position += size


def read_pattern(body: BlockingBody, sizes: list[int]) -> bytes:
    parts = []
    index = 0
    while chunk := body.read(sizes[index % len(sizes)]):
        expected = sizes[index % len(sizes)]
        parts.append(chunk)
        index += 1
        assert len(chunk) <= expected
    return b"".join(parts)


@pytest.mark.parametrize("sizes", [[512], [512, 4096], [GATHER], [3 * GATHER, 512, 7]])
def test_reads_of_any_size_return_the_body_in_order(sizes: list[int]) -> None:
    async def main() -> bytes:
        body = BlockingBody(chunks(PAYLOAD).__aiter__())
        return await to_thread.run_sync(read_pattern, body, sizes)

    assert anyio.run(main) == PAYLOAD


def test_small_reads_are_full_until_the_end() -> None:
    async def main() -> list[int]:
        body = BlockingBody(chunks(PAYLOAD).__aiter__())
        return await to_thread.run_sync(lambda: [len(body.read(512)) for _ in range(50)])

    assert set(anyio.run(main)) == {512}


def test_read_all_and_disconnects() -> None:
    async def everything() -> bytes:
        body = BlockingBody(chunks(PAYLOAD).__aiter__())
        first = await to_thread.run_sync(body.read, 100)
        return first + await to_thread.run_sync(body.read, -1)

    assert anyio.run(everything) == PAYLOAD

    async def cut() -> None:
        body = BlockingBody(chunks(PAYLOAD, fail_after=GATHER).__aiter__())
        await to_thread.run_sync(read_pattern, body, [GATHER])

    with pytest.raises(UploadStopped, match="disconnected after"):
        anyio.run(cut)
