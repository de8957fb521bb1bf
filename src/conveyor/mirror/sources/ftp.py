"""FTP and explicit FTPS (``AUTH TLS``) with ``ftplib``: MLSD or LIST, REST for resume."""

from __future__ import annotations

import contextlib
import ftplib
import posixpath
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError, stalled
from conveyor.mirror.listings import parse_list, parse_mlsd
from conveyor.mirror.sources.base import READ_CHUNK, Source, register
from conveyor.mirror.sources.ftp_async import AsyncFtpReader
from conveyor.mirror.sources.ftp_commands import (
    cwd_steps,
    refusal,
    server_name,
    split_target,
    tls_failure,
    without_line_breaks,
)
from conveyor.mirror.sources.parts import PartWriter
from conveyor.mirror.sources.receiving import BatchedReceiver
from conveyor.mirror.sources.tls import apply_keepalive, tls_context
from conveyor.mirror.spec import SourceSpec

T = TypeVar("T")
Piece = TypeVar("Piece", bytes, memoryview)

# Replies meaning "this server does not know MLSD": fall back to LIST.
NOT_IMPLEMENTED = ("500", "501", "502", "504")


@register
class FtpSource(Source):
    """One control connection, opened on first use and opened again after a failure."""

    protocols = ("ftp", "ftps", "directftp", "directftps")
    async_reader = AsyncFtpReader

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self.tls = spec.protocol.endswith("ftps")
        # Made at the first login and kept: checks turned off are logged once per source.
        self._tls_context: ssl.SSLContext | None = None
        self._ftp: ftplib.FTP | None = None
        self._cwd: str | None = None
        self._mlsd = True

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """MLSD when the server has it (exact sizes and UTC times), else LIST."""
        path = self.remote_path(folder)
        now = datetime.now(UTC)
        if self._mlsd:
            try:
                yield from parse_mlsd(self._lines("MLSD", path))
                return
            except SourceError as error:
                if not str(error).startswith(NOT_IMPLEMENTED):
                    raise
                self._mlsd = False
        yield from parse_list(self._lines("LIST", path), now=now)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """RETR, after ``REST offset`` when resuming."""
        conn = self._retrieve(path, offset)
        yield from self._drain(conn, path, lambda: conn.recv(READ_CHUNK))

    def read_into(self, path: str, part: Path, offset: int) -> Iterator[memoryview]:
        """:meth:`read`, received straight into the part file's buffer."""
        conn = self._retrieve(path, offset)
        receiver = BatchedReceiver(conn)
        with PartWriter(part, offset) as out:
            yield from self._drain(conn, path, lambda: out.receive(receiver.recv_into))

    def stat(self, path: str) -> RemoteEntry:
        """SIZE and MDTM."""
        target = self._target(path)
        size = self._call(lambda ftp: ftp.size(target))
        modified = self._call(lambda ftp: ftp.voidcmd(f"MDTM {target}"))
        mtime = _mdtm(modified)
        return RemoteEntry(
            posixpath.basename(path), size=size, mtime=mtime, fingerprint=modified.split()[-1]
        )

    def close(self) -> None:
        """QUIT politely, or just close the socket."""
        ftp, self._ftp, self._cwd = self._ftp, None, None
        if ftp is None:
            return
        try:
            ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            ftp.close()

    def _retrieve(self, path: str, offset: int) -> socket.socket:
        """The data connection of ``RETR path``, after ``REST offset`` when resuming."""
        target = self._target(path)
        return self._call(lambda ftp: ftp.transfercmd(f"RETR {target}", rest=offset or None))

    def _connection(self) -> ftplib.FTP:
        if self._ftp is not None:
            return self._ftp
        spec = self.spec
        if self.tls and self._tls_context is None:
            self._tls_context = tls_context(spec)  # a missing CA file: a SourceError, by _call
        # Plain FTP is what many public banks serve; FTPS is used whenever asked for.
        ftp = (
            ftplib.FTP_TLS(context=self._tls_context)  # noqa: S321
            if self._tls_context is not None
            else ftplib.FTP()  # noqa: S321
        )
        try:
            ftp.connect(spec.host, spec.port(21), timeout=spec.connect_timeout)
            # Data and control sockets then wait at most this long for a byte: a stall.
            ftp.timeout = spec.stall_timeout
            if ftp.sock is not None:
                ftp.sock.settimeout(spec.stall_timeout)
                apply_keepalive(ftp.sock, spec.options.tcp_keepalive)
            user, password = "anonymous", "anonymous@"
            if spec.credentials is not None:
                user = spec.credentials.user
                password = spec.credentials.secret()
            where = server_name(spec)
            ftp.login(without_line_breaks(where, user), without_line_breaks(where, password))
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        self._ftp = ftp
        return ftp

    def _call(self, operation: Callable[[ftplib.FTP], T]) -> T:
        try:
            return operation(self._connection())
        except (ftplib.Error, OSError, EOFError) as error:
            raise self._failure(error) from None

    def _failure(self, error: BaseException) -> SourceError:
        """A SourceError for ``error``; the connection is dropped unless the reply was a 5xx."""
        where = server_name(self.spec)
        if isinstance(error, ftplib.error_perm):
            return refusal(where, str(error))
        self.close()
        if isinstance(error, ftplib.error_temp):
            return refusal(where, str(error))
        if isinstance(error, TimeoutError | socket.timeout):
            return stalled(where, self.spec.stall_timeout)
        if isinstance(error, ssl.SSLError):
            return tls_failure(where, error)
        return SourceError(f"{where}: {error}")

    def _chdir(self, folder: str) -> None:
        if self._cwd == folder:
            return
        self._cwd = None  # a refused step leaves the server somewhere on the way
        for step in cwd_steps(self.spec.options.ftp_method, folder):
            self._call(lambda ftp, step=step: ftp.cwd(step))  # type: ignore[misc]
        self._cwd = folder

    def _target(self, path: str) -> str:
        """What to name in a command for ``path``: the full path, or a name after CWD."""
        full = without_line_breaks(server_name(self.spec), self.remote_path(path))
        folder, name = split_target(self.spec.options.ftp_method, full)
        if folder is not None:
            self._chdir(folder)
        return name

    def _lines(self, command: str, path: str) -> Iterator[str]:
        without_line_breaks(server_name(self.spec), path)
        if self.spec.options.ftp_method == "nocwd":
            request = f"{command} {path}"
        else:
            self._chdir(path)
            request = command
        conn = self._call(lambda ftp: ftp.transfercmd(request))
        ftp = self._connection()
        pending = b""
        for chunk in self._drain(conn, path, lambda: conn.recv(READ_CHUNK)):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode(ftp.encoding, "replace")
        if pending.strip():
            yield pending.rstrip(b"\r").decode(ftp.encoding, "replace")

    def _drain(
        self, conn: socket.socket, path: str, receive: Callable[[], Piece]
    ) -> Iterator[Piece]:
        """What ``receive`` takes from a data connection until it ends, then the transfer's
        final reply."""
        done = False
        try:
            with conn:
                while chunk := receive():
                    yield chunk
                if isinstance(conn, ssl.SSLSocket):
                    # A cut data connection ends without TLS's close message; the reply
                    # that follows (426) says what happened, and the size check catches it.
                    with contextlib.suppress(ssl.SSLError, OSError):
                        conn.unwrap()
            self._call(lambda ftp: ftp.voidresp())
            done = True
        except (OSError, EOFError, ftplib.Error) as error:
            raise self._failure(error) from None
        finally:
            if not done:
                # Abandoned or failed mid-transfer: the control connection is out of step.
                self.close()


def _mdtm(reply: str) -> datetime | None:
    stamp = reply.split()[-1]
    try:
        return datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
