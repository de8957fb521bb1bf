"""The batched receiver of FTP data connections, over real loopback TCP connections."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from conveyor.mirror.sources.receiving import LOW_WATER, BatchedReceiver

TIMEOUT = 0.3


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A sending and a receiving end of one TCP connection; the receiver times out."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    receiver.settimeout(TIMEOUT)
    with sender, receiver:
        yield sender, receiver


def _receive(receiver: BatchedReceiver, size: int = 4 * LOW_WATER) -> bytes:
    buffer = bytearray(size)
    count = receiver.recv_into(memoryview(buffer))
    return bytes(buffer[:count])


def test_a_connection_that_ends_short_of_a_span_is_read_to_its_end(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiving = connection
    receiver = BatchedReceiver(receiving)
    sender.sendall(b"x" * 100)
    sender.close()
    assert _receive(receiver) == b"x" * 100
    assert _receive(receiver) == b""
    assert receiver.batched  # the end woke it, not the timeout


def test_a_trickle_is_received_not_taken_for_a_stall(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiving = connection
    receiver = BatchedReceiver(receiving)
    sender.sendall(b"slow")
    # Short of the low-water mark within the timeout: what came is read, byte by byte on.
    assert _receive(receiver) == b"slow"
    assert not receiver.batched
    sender.sendall(b"er")
    assert _receive(receiver) == b"er"


def test_nothing_arriving_within_the_timeout_is_a_stall(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    _, receiving = connection
    receiver = BatchedReceiver(receiving)
    with pytest.raises(TimeoutError):
        _receive(receiver)


def test_a_burst_arrives_whole(connection: tuple[socket.socket, socket.socket]) -> None:
    sender, receiving = connection
    receiving.settimeout(30)  # a slow moment of the sending thread is no trickle
    receiver = BatchedReceiver(receiving)
    payload = bytes(range(256)) * (3 * LOW_WATER // 256)

    def send() -> None:
        with sender:
            sender.sendall(payload)

    sending = threading.Thread(target=send)
    sending.start()
    received = b""
    while chunk := _receive(receiver):
        received += chunk
    sending.join()
    assert received == payload
    assert receiver.batched
