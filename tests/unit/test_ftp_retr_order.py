"""The event-loop FTP reader sends ``RETR`` before it makes the data connection, and still
tells a refused file from a failed connection; against a small scripted FTP server on
loopback that records what it sees."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import uvloop

from conveyor.mirror.errors import SourceError
from conveyor.mirror.sources import ftp_async
from conveyor.mirror.sources.ftp_async import AsyncFtpReader
from conveyor.mirror.spec import SourceSpec

PAYLOAD = b"conveyor" * 4096
JOIN_SECONDS = 10.0
# How long the server waits for RETR after its PASV reply: a client sending it at once
# takes milliseconds; one waiting for its data connection waits for the SYN sent again.
RETR_WAIT = 5.0


@dataclass
class _Script:
    """How the server answers ``RETR`` and what it saw."""

    # "serve": a data port whose accept queue is full until RETR has arrived (Linux drops
    # the SYNs meanwhile), so a client waiting for its connection before RETR is seen as such.
    # "refuse": 550, with the passive port already closed.
    # "silent": the passive port already closed, and no answer to RETR.
    mode: str
    retr_before_connection: bool | None = None
    commands: list[str] = field(default_factory=list)
    filler: socket.socket | None = None  # the connection filling the data port's queue


@contextmanager
def _ftp_server(script: _Script) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, script, done), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()
        thread.join(JOIN_SECONDS)
        assert not thread.is_alive()


def _serve(listener: socket.socket, script: _Script, done: threading.Event) -> None:
    try:
        control, _ = listener.accept()
    except OSError:
        return
    with control, control.makefile("rb") as lines:
        control.sendall(b"220 ready\r\n")
        data_port: socket.socket | None = None
        while not done.is_set() and (line := lines.readline()):
            command = line.decode().strip()
            script.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            if verb == "PASV":
                data_port = _passive(control, script)
            elif verb == "RETR":
                _retrieve(control, script, data_port)
            elif verb == "QUIT":
                control.sendall(b"221 bye\r\n")
                return
            else:
                control.sendall({"USER": b"331 password\r\n"}.get(verb, b"200 ok\r\n"))


def _passive(control: socket.socket, script: _Script) -> socket.socket:
    data_port = socket.socket()
    data_port.bind(("127.0.0.1", 0))
    port = data_port.getsockname()[1]
    if script.mode == "serve":
        data_port.listen(0)
        # One queued connection fills a backlog of 0: the client's SYNs are dropped (and
        # sent again a second later) until this one is accepted.
        script.filler = socket.create_connection(("127.0.0.1", port))
    else:
        data_port.close()  # nothing listens: the client's connection is refused
    control.sendall(f"227 passive (127,0,0,1,{port >> 8},{port & 255})\r\n".encode())
    if script.mode == "serve":
        # A client that waits for its data connection before RETR says nothing meanwhile.
        ready, _, _ = select.select([control], [], [], RETR_WAIT)
        script.retr_before_connection = bool(ready)
        if not ready:
            _free(data_port, script)
    return data_port


def _free(data_port: socket.socket, script: _Script) -> None:
    """Accept and drop the filler: the client's next SYN gets through."""
    if script.filler is not None:
        queued, _ = _accept_soon(data_port)
        queued.close()
        script.filler.close()
        script.filler = None


def _retrieve(control: socket.socket, script: _Script, data_port: socket.socket | None) -> None:
    if script.mode == "refuse":
        control.sendall(b"550 no such file\r\n")
        return
    if script.mode == "silent" or data_port is None:
        return
    _free(data_port, script)
    control.sendall(b"150 opening\r\n")
    connection, _ = _accept_soon(data_port, seconds=JOIN_SECONDS)
    with connection:
        connection.sendall(PAYLOAD)
    data_port.close()
    control.sendall(b"226 done\r\n")


def _accept_soon(data_port: socket.socket, seconds: float = 1.0) -> tuple[socket.socket, object]:
    data_port.settimeout(seconds)
    return data_port.accept()


def _spec(port: int) -> SourceSpec:
    return SourceSpec(protocol="ftp", server=f"127.0.0.1:{port}", remote_dir="/")


async def _read(port: int) -> bytes:
    reader = AsyncFtpReader(_spec(port), 1)
    received = bytearray()
    try:
        async for chunk in reader.read("file.bin"):
            received += chunk
    finally:
        await reader.close()
    return bytes(received)


def test_retr_goes_out_before_the_data_connection_is_made() -> None:
    script = _Script("serve")
    with _ftp_server(script) as port:
        received = uvloop.run(_read(port))
    assert received == PAYLOAD
    # The server saw RETR while the client's connection could not yet be made.
    assert script.retr_before_connection is True
    # (whether QUIT was read before the server stopped does not matter)
    assert script.commands[script.commands.index("PASV") + 1] == "RETR file.bin"


def test_a_refused_file_is_told_as_refused_when_its_passive_port_is_gone() -> None:
    script = _Script("refuse")
    with _ftp_server(script) as port, pytest.raises(SourceError) as raised:
        uvloop.run(_read(port))
    assert "550 no such file" in str(raised.value)
    assert raised.value.permanent


def test_a_failed_data_connection_without_a_refusal_is_a_retried_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ftp_async, "REFUSAL_WAIT", 0.2)
    script = _Script("silent")
    with _ftp_server(script) as port, pytest.raises(SourceError) as raised:
        uvloop.run(_read(port))
    assert "refused" in str(raised.value).lower()
    assert not raised.value.permanent
