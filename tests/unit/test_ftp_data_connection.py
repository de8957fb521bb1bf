"""The FTP reader's data connection, against a real loopback TCP server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from conveyor.mirror.sources.ftp_async import DATA_BUFFER, _DataConnection

PAYLOAD = os.urandom(4 * 1024 * 1024)
# A loop reads at most this much from a socket at once (asyncio's and uvloop's 256 KiB).
LARGEST_READ = 256 * 1024


async def _serve_once(payload: bytes) -> tuple[asyncio.Server, int]:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(send, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _connect(port: int) -> _DataConnection:
    loop = asyncio.get_running_loop()
    _, data = await loop.create_connection(_DataConnection, "127.0.0.1", port)
    return data


async def _held_while_nobody_reads() -> tuple[int, bytes]:
    server, port = await _serve_once(PAYLOAD)
    async with server:
        data = await _connect(port)
        await asyncio.sleep(0.3)  # the server could send it all by now
        first = await data.received()  # all that was held while nobody read
        held = sum(len(piece) for piece in first)
        received = bytearray(b"".join(first))
        while pieces := await data.received():
            for piece in pieces:
                received += piece
        data.close()
    return held, bytes(received)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_reader_that_falls_behind_pauses_the_connection(
    run: Callable[[Coroutine[Any, Any, tuple[int, bytes]]], tuple[int, bytes]],
) -> None:
    held, received = run(_held_while_nobody_reads())
    # Reading stops once more than DATA_BUFFER is held: memory stays bounded...
    assert 0 < held <= DATA_BUFFER + LARGEST_READ
    # ...and nothing is lost when it resumes.
    assert received == PAYLOAD


async def _pieces_then_the_error() -> tuple[list[bytes], BaseException]:
    data = _DataConnection()
    data.data_received(b"first")
    data.data_received(b"second")
    data.connection_lost(ConnectionResetError("reset by peer"))
    pieces = await data.received()
    with pytest.raises(ConnectionResetError) as raised:
        await data.received()
    return pieces, raised.value


def test_bytes_received_before_a_reset_are_handed_over_before_the_error() -> None:
    pieces, error = asyncio.run(_pieces_then_the_error())
    assert pieces == [b"first", b"second"]
    assert "reset by peer" in str(error)


async def _end_after_waiting() -> list[list[bytes]]:
    data = _DataConnection()
    waiting = asyncio.ensure_future(data.received())
    await asyncio.sleep(0)
    data.data_received(b"only")
    first = await waiting
    waiting = asyncio.ensure_future(data.received())
    await asyncio.sleep(0)
    data.eof_received()
    return [first, await waiting]


def test_a_waiting_reader_wakes_for_data_and_for_the_end() -> None:
    assert asyncio.run(_end_after_waiting()) == [[b"only"], []]
