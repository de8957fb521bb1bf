"""FTP and explicit FTPS files read from an event loop: the transfers of a run share a pool
of logged-in control connections, each carrying one transfer at a time.

Written here, on asyncio streams (a protocol of its own for data connections), rather than
taken from a library: aioftp's client spent more CPU per small file than four ftplib
threads do (1,000 files of 100 KiB from the loopback server, each fetched and written:
1.3-1.9 s against 1.0-1.2 s), where a stream client saying no more than ftplib says spent
0.7-1.1 s (bench/README.md, Mirror). It sends what the threaded source sends (``CWD`` as
``ftp_method`` says, ``PASV``, ``REST``, ``RETR``) and judges replies as it does
(:mod:`conveyor.mirror.sources.ftp`), but sends ``RETR`` before it makes the data
connection rather than after: one round trip less a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import socket
import ssl
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar, cast

from conveyor.mirror.errors import SourceError, connection_cut, stalled
from conveyor.mirror.sources.base import READ_CHUNK, AsyncReader
from conveyor.mirror.sources.ftp_commands import (
    cwd_steps,
    refusal,
    server_name,
    split_target,
    tls_failure,
    without_line_breaks,
)
from conveyor.mirror.sources.tls import apply_keepalive, tls_context
from conveyor.mirror.sources.watchdog import Watchdog
from conveyor.mirror.spec import SourceSpec

T = TypeVar("T")
ENCODING = "utf-8"  # ftplib's
MAX_LINE = 8192  # ftplib's limit on a reply line
# A data connection pauses reading past this much unread.
DATA_BUFFER = READ_CHUNK
# Seconds to wait for a refusal of RETR once its data connection failed.
REFUSAL_WAIT = 2.0


class AsyncFtpReader(AsyncReader):
    """``RETR`` (after ``REST`` when resuming) over at most ``connections`` connections."""

    def __init__(self, spec: SourceSpec, connections: int) -> None:
        super().__init__(spec, connections)
        self._idle: list[_Control] = []
        self._open: set[_Control] = set()
        self._slots = asyncio.Semaphore(connections)
        self._watchdog = Watchdog(spec.stall_timeout)
        # FTPS: made before the first connection and kept, as the threaded source keeps
        # its own (checks turned off are logged once per reader, not once per connection).
        self._context: ssl.SSLContext | None = None

    async def read(self, path: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The file from ``offset`` on, as it arrives; a cut ends it early.

        A logged-in connection goes back to the pool after a clean end or a 5xx refusal
        (the server is still in step with it); after anything else, an abandoned read or a
        login that failed, it is closed.
        """
        full = self.remote_path(path)
        async with self._slots:
            control = self._idle.pop() if self._idle else None
            reusable = False
            try:
                if control is None:
                    context = self._tls_context()
                    control = await _Control.connect(self.spec, context, self._watchdog)
                    self._open.add(control)
                    await control.login()
                async for chunk in control.retrieve(full, offset):
                    yield chunk
                reusable = True
            except SourceError as error:
                reusable = error.permanent and control is not None and control.logged_in
                raise
            finally:
                if control is not None:
                    if reusable:
                        self._idle.append(control)
                    else:
                        self._open.discard(control)
                        self._watchdog.release(control.guard)
                        control.close()

    async def close(self) -> None:
        """Close every connection (``QUIT`` is not waited for)."""
        self._watchdog.stop()
        controls, self._open, self._idle = list(self._open), set(), []
        for control in controls:
            control.close()
        for control in controls:
            await control.closed()

    def _tls_context(self) -> ssl.SSLContext | None:
        """The FTPS context (``None`` for plain FTP); a CA file that cannot be used raises
        a permanent :class:`SourceError` before anything is sent."""
        if self._context is None and self.spec.protocol.endswith("ftps"):
            self._context = tls_context(self.spec)
        return self._context


class _Control:
    """One logged-in control connection and the folder it is in."""

    def __init__(
        self,
        spec: SourceSpec,
        context: ssl.SSLContext | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        watchdog: Watchdog,
    ) -> None:
        self.spec = spec
        self.where = server_name(spec)
        self.context = context  # FTPS: the control and every data connection use it
        self.reader = reader
        self.writer = writer
        self.cwd: str | None = None
        self.logged_in = False
        self.guard = watchdog.guard(self._abort)
        self._data: _DataConnection | None = None
        # Where data connections go: the control connection's own host, and how to ask.
        self._peer = writer.get_extra_info("peername")
        self._ipv4 = writer.get_extra_info("socket").family == socket.AF_INET

    @classmethod
    async def connect(
        cls, spec: SourceSpec, context: ssl.SSLContext | None, watchdog: Watchdog
    ) -> _Control:
        """A new control connection (secured with ``context`` at login), not yet logged in,
        its operations watched by ``watchdog``."""
        reader, writer = await _connecting(
            spec, asyncio.open_connection(spec.host, spec.port(21), limit=MAX_LINE)
        )
        apply_keepalive(writer.get_extra_info("socket"), spec.options.tcp_keepalive)
        return cls(spec, context, reader, writer, watchdog)

    async def login(self) -> None:
        """Secure (FTPS), log in and switch to binary, as the threaded source does."""
        spec = self.spec
        await self.reply()
        context = self.context
        if context is not None:
            await self.command("AUTH TLS")
            await self.guarded(self.writer.start_tls(context, server_hostname=spec.host))
        user, password = "anonymous", "anonymous@"
        if spec.credentials is not None:
            user, password = spec.credentials.user, spec.credentials.secret()
        if (await self.command(f"USER {user}")).startswith("3"):
            await self.command(f"PASS {password}")
        if context is not None:
            await self.command("PBSZ 0")
            await self.command("PROT P")
        await self.command("TYPE I")
        self.logged_in = True

    async def retrieve(self, full: str, offset: int) -> AsyncGenerator[bytes, None]:
        """The data connection's bytes, then the transfer's final reply checked."""
        folder, name = split_target(self.spec.options.ftp_method, full)
        if folder is not None and folder != self.cwd:
            self.cwd = None  # a refused step leaves the server somewhere on the way
            for step in cwd_steps(self.spec.options.ftp_method, folder):
                await self.command(f"CWD {step}")
            self.cwd = folder
        port = await self._passive_port()
        if offset:
            await self.command(f"REST {offset}")
        # RETR goes out before the data connection is made, and its reply is read after:
        # a passive server waits for the connection either way (RFC 959, 5.2), and the
        # file then costs one round trip less.
        self._send(f"RETR {name}")
        try:
            data = await self._connect_data(port)
        except SourceError as error:
            raise await self._refusal_of_retr() or error from None
        self._data = data
        try:
            await self.reply(preliminary=True)
            while chunks := await self.guarded(data.received()):
                for chunk in chunks:
                    yield chunk
        finally:
            data.close()
            self._data = None
        await self.reply()

    async def command(self, line: str, *, preliminary: bool = False) -> str:
        """Send ``line``; its reply, which must be 2xx or 3xx (1xx with ``preliminary``)."""
        self._send(line)
        return await self.reply(preliminary=preliminary)

    async def reply(self, *, preliminary: bool = False) -> str:
        """The next reply, whole (continuation lines included); an error reply raises."""
        text = await self._reply_text()
        first = text[:1]
        if first in ("4", "5"):
            raise refusal(self.where, text)
        if first not in (("1",) if preliminary else ("2", "3")):
            raise SourceError(f"{self.where}: unexpected reply {text.strip()!r}")
        return text

    async def _reply_text(self) -> str:
        line = await self._line()
        text = line
        if line[3:4] == "-":
            code = line[:3]
            while not ((line := await self._line())[:3] == code and line[3:4] != "-"):
                text += "\n" + line
            text += "\n" + line
        return text

    async def _refusal_of_retr(self) -> SourceError | None:
        """The server's refusal of the ``RETR`` sent before a data connection that failed,
        if it answers one soon: a server may close its passive port as it refuses a file,
        and the refusal (550: no such file) says more than the connection's failure."""
        try:
            async with asyncio.timeout(REFUSAL_WAIT):
                text = await self._reply_text()
        except (TimeoutError, SourceError):
            return None
        return refusal(self.where, text) if text[:1] in ("4", "5") else None

    def _send(self, line: str) -> None:
        line = without_line_breaks(self.where, line)
        self.writer.write(f"{line}\r\n".encode(ENCODING))

    async def guarded(self, operation: Awaitable[T]) -> T:
        """``operation``, failing as a stall after ``stall_timeout`` without progress and as
        a cut when the connection breaks (the reader's watchdog aborts a stalled one)."""
        try:
            with self.guard:
                result = await operation
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as error:
            if self.guard.stalled:
                raise stalled(self.where, self.spec.stall_timeout) from None
            if isinstance(error, ssl.SSLError):
                raise tls_failure(self.where, error) from None
            raise connection_cut(self.where, error) from None
        if self.guard.stalled:  # an aborted data connection reads as an end
            raise stalled(self.where, self.spec.stall_timeout)
        return result

    def _abort(self) -> None:
        """Drop this connection and its data connection at once (a stall)."""
        self.writer.transport.abort()
        if self._data is not None:
            self._data.abort()

    def close(self) -> None:
        """Say ``QUIT`` and close, without waiting for either."""
        if not self.writer.is_closing():
            self.writer.write(b"QUIT\r\n")
            self.writer.close()

    async def closed(self) -> None:
        """Wait until the connection is closed (errors on the way are of no interest)."""
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()

    async def _line(self) -> str:
        try:
            raw = await self.guarded(self.reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError:
            raise SourceError(f"{self.where}: a reply line is too long") from None
        return raw.decode(ENCODING, "replace").rstrip("\r\n")

    async def _passive_port(self) -> int:
        """The data port, by ``PASV`` (as ftplib does, the address in the reply is ignored:
        data connections go to the control connection's own host) or ``EPSV`` over IPv6."""
        ipv4 = self._ipv4
        reply = await self.command("PASV" if ipv4 else "EPSV")
        try:
            _, port = ftplib.parse227(reply) if ipv4 else ftplib.parse229(reply, self._peer)  # noqa: S321
        except ftplib.Error:
            raise SourceError(f"{self.where}: no data port in {reply.strip()!r}") from None
        return port

    async def _connect_data(self, port: int) -> _DataConnection:
        """A data connection to ``port`` of the control connection's host."""
        peer = self._peer
        loop = asyncio.get_running_loop()
        context = self.context
        _, data = await _connecting(
            self.spec,
            loop.create_connection(
                _DataConnection,
                peer[0],
                port,
                ssl=context,
                server_hostname=self.spec.host if context is not None else None,
            ),
        )
        return data


class _DataConnection(asyncio.Protocol):
    """A data connection's bytes, handed over as they were received, all that arrived
    since the last look at once. A stream reader copies each piece into its buffer and out
    again and is woken once per read: 1,000 files of 100 KiB took 4-12 % more CPU so."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pieces: list[bytes] = []
        self._held = 0
        self._paused = False
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._pieces.append(data)
        self._held += len(data)
        if self._held > DATA_BUFFER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._error = exc
        self._wake()

    async def received(self) -> list[bytes]:
        """The pieces received since the last call, waiting for one; none at the end."""
        if not self._pieces and not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        pieces, self._pieces, self._held = self._pieces, [], 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if not pieces and self._error is not None:
            raise self._error
        return pieces

    def close(self) -> None:
        """Close the connection (what is still unread is dropped)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once: its reader wakes to an end (a stall)."""
        if self._transport is not None:
            self._transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def _connecting(spec: SourceSpec, connecting: Awaitable[T]) -> T:
    """``connecting``, within the connect timeout; failures said as the source's."""
    where = server_name(spec)
    try:
        async with asyncio.timeout(spec.connect_timeout):
            return await connecting
    except TimeoutError:
        raise SourceError(f"{where}: no connection within {spec.connect_timeout:g} s") from None
    except ssl.SSLError as error:
        raise tls_failure(where, error) from None
    except OSError as error:
        raise SourceError(f"{where}: {error}") from None
