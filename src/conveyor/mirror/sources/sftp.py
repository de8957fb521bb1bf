"""SFTP with asyncssh: known-hosts checks as BioMAJ's ``ssh_*`` options say, resume by offset.

asyncssh reads a large span with many requests in flight (paramiko, pure Python, moved
about 40 MB/s a stream here). The threaded source drives its connection on the process's
background loop thread and hands each result to its caller's thread; the event-loop reader
keeps a run's connections on the run's own loop, with no hand-over between threads.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import asyncssh
from asyncssh.encryption import get_default_encryption_algs

from conveyor.aioloop import background_loop, run_on_loop
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError, stalled
from conveyor.mirror.sources.base import AsyncReader, Source, register
from conveyor.mirror.sources.watchdog import Guard, Watchdog
from conveyor.mirror.spec import SourceSpec

T = TypeVar("T")
# A cut loses at most the span being read: the spans before it were handed over whole.
READ_SPAN = 256 * 1024
LIST_BATCH = 1000
# AES-GCM before asyncssh's default ChaCha20-Poly1305: with the CPU's AES instructions it is
# one OpenSSL call a packet, where ChaCha20-Poly1305 takes several steps in Python. 1,000
# small files: 2.63-2.75 s -> 2.11-2.18 s; 4 x 256 MiB: 5.55 -> 4.17 s (bench/mirror).
AEAD_FIRST = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
ENCRYPTION_ALGS = [
    *AEAD_FIRST,
    *(name.decode() for name in get_default_encryption_algs() if name.decode() not in AEAD_FIRST),
]


class AsyncSftpReader(AsyncReader):
    """Reads files over up to ``connections`` SSH connections, each with its SFTP session,
    kept open between the transfers of a run."""

    def __init__(self, spec: SourceSpec, connections: int) -> None:
        super().__init__(spec, connections)
        self._idle: list[_Session] = []
        self._open: set[_Session] = set()
        self._closing: list[asyncssh.SSHClientConnection] = []
        self._slots = asyncio.Semaphore(connections)
        self._watchdog = Watchdog(spec.stall_timeout)

    async def read(self, path: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """Spans of 256 KiB from ``offset``, each read with many requests in flight.

        A connection goes back to the pool only after a clean end, or a refusal that left
        no file open; after a stall, a cut or an abandoned read it is closed, which also
        releases its open file on the server (closing that alone could wait on a stall).
        """
        full = self.remote_path(path)
        async with self._slots:
            session = await self._session(full)
            guard = session.guard
            handle: asyncssh.SFTPClientFile | None = None
            reusable = False
            try:
                handle = await _guarded(self.spec, session.sftp.open(full, "rb"), full, guard)
                position = offset
                while span := await _guarded(self.spec, _read_span(handle, position), full, guard):
                    position += len(span)
                    yield span
                await _guarded(self.spec, handle.close(), full, guard)
                reusable = True
            except _Failure as failure:
                reusable = failure.keep_connection and handle is None
                raise failure.error from None
            finally:
                if reusable:
                    self._idle.append(session)
                else:
                    self._drop(session)

    async def close(self) -> None:
        """Close every connection and wait until they are closed."""
        self._watchdog.stop()
        for session in list(self._open):
            self._drop(session)
        closing, self._closing = self._closing, []
        for connection in closing:
            await connection.wait_closed()

    async def _session(self, path: str) -> _Session:
        if self._idle:
            return self._idle.pop()
        try:
            session = await _guarded(self.spec, _connected(self.spec, self._watchdog), path)
        except _Failure as failure:
            raise failure.error from None
        self._open.add(session)
        return session

    def _drop(self, session: _Session) -> None:
        """Close a connection without waiting (a read may be ending on a cancellation)."""
        self._open.discard(session)
        self._watchdog.release(session.guard)
        session.connection.close()
        self._closing.append(session.connection)


@register
class SftpSource(Source):
    """One SSH connection and SFTP session, opened on first use and again after a failure."""

    protocols = ("sftp",)
    async_reader = AsyncSftpReader

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._session: _Session | None = None
        # On the shared loop, as the connection: watches every operation of this source.
        self._watchdog = Watchdog(spec.stall_timeout)

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """``scandir``, a batch of names at a time: never the whole folder at once."""
        path = self.remote_path(folder)
        names: AsyncIterator[asyncssh.SFTPName] = self._client().scandir(path)

        async def batch() -> list[asyncssh.SFTPName]:
            found: list[asyncssh.SFTPName] = []
            async for name in names:
                if name.filename not in (".", ".."):
                    found.append(name)
                if len(found) >= LIST_BATCH:
                    break
            return found

        while found := self._call(batch(), path):
            for name in found:
                yield _entry(str(name.filename), name.attrs)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """Spans of 256 KiB from ``offset``, each read with many requests in flight."""
        full = self.remote_path(path)
        client = self._client()

        async def opened() -> asyncssh.SFTPClientFile:
            return await client.open(full, "rb")

        handle = self._call(opened(), full)
        position = offset
        try:
            while span := self._call(_read_span(handle, position), full):
                position += len(span)
                yield span
        finally:
            if self._session is not None:
                try:
                    self._call(handle.close(), full)
                except SourceError:
                    self.close()

    def stat(self, path: str) -> RemoteEntry:
        """``stat`` of the file."""
        full = self.remote_path(path)
        attrs = self._call(self._client().stat(full), full)
        return _entry(full.rsplit("/", 1)[-1], attrs)

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        session, self._session = self._session, None
        if session is not None:
            loop = background_loop()
            loop.call_soon_threadsafe(self._watchdog.stop)
            session.connection.close()
            asyncio.run_coroutine_threadsafe(session.connection.wait_closed(), loop)

    def _client(self) -> asyncssh.SFTPClient:
        if self._session is None:
            self._session = self._call(_connected(self.spec, self._watchdog), "/")
        return self._session.sftp

    def _call(self, operation: Coroutine[Any, Any, T], path: str) -> T:
        guard = self._session.guard if self._session is not None else None
        try:
            return run_on_loop(_guarded(self.spec, operation, path, guard))
        except _Failure as failure:
            if not failure.keep_connection:
                self.close()
            raise failure.error from None


class _Session(NamedTuple):
    connection: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    guard: Guard  # aborts the connection when an operation on it stalls


class _Failure(Exception):
    """A source error, and whether the connection it happened on can still be used."""

    def __init__(self, error: SourceError, keep_connection: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.keep_connection = keep_connection


async def _guarded(
    spec: SourceSpec, operation: Awaitable[T], path: str, guard: Guard | None = None
) -> T:
    """Await ``operation`` (within the stall timeout, with a connection's ``guard``);
    asyncssh's and the network's errors become a :class:`_Failure`."""
    try:
        if guard is None:
            return await operation
        with guard:
            result = await operation
    except SourceError as error:
        raise _Failure(error, keep_connection=error.permanent) from None
    except (asyncssh.Error, OSError, TimeoutError) as error:
        stall = guard is not None and guard.stalled
        raise _failure(spec, TimeoutError() if stall else error, path) from None
    if guard.stalled:  # the connection was aborted as the operation ended
        raise _failure(spec, TimeoutError(), path)
    return result


async def _read_span(handle: asyncssh.SFTPClientFile, position: int) -> bytes:
    """The next span from ``position`` (empty at the end)."""
    return cast(bytes, await handle.read(READ_SPAN, position))  # opened "rb": bytes


async def _connected(spec: SourceSpec, watchdog: Watchdog) -> _Session:
    """A new session, its operations watched by ``watchdog``."""
    connection, sftp = await _connect(spec)
    return _Session(connection, sftp, watchdog.guard(connection.abort))


async def _connect(spec: SourceSpec) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
    """An SSH connection to the host (its key checked as the options say) and its session."""
    port = spec.port(22)
    credentials = spec.credentials
    connection = await asyncio.wait_for(
        asyncssh.connect(
            spec.host,
            port,
            username=credentials.user if credentials else None,
            password=credentials.secret() if credentials else None,
            known_hosts=await _trusted_keys(spec, port),
            client_keys=None,
            agent_path=None,
            keepalive_interval=spec.options.tcp_keepalive or None,
            encryption_algs=ENCRYPTION_ALGS,
        ),
        spec.connect_timeout,
    )
    try:
        return connection, await connection.start_sftp_client()
    except BaseException:
        connection.close()
        raise


async def _trusted_keys(spec: SourceSpec, port: int) -> Any:
    """The known-hosts file when it knows the host (a changed key is then refused), else
    what ``ssh_new_host`` says: refuse, trust for this connection, or trust and record."""
    known = Path(spec.options.ssh_hosts_file).expanduser()
    if known.is_file() and asyncssh.read_known_hosts(str(known)).match(spec.host, "", port)[0]:
        return str(known)
    policy = spec.options.ssh_new_host
    if policy == "reject":
        raise SourceError(
            f"the host key of {spec.host} is not in the known-hosts file and ssh_new_host "
            "is reject (set it to accept or add to trust a new host)",
            permanent=True,
        )
    key = await asyncssh.get_server_host_key(spec.host, port)
    if key is None:
        raise SourceError(f"{spec.host} offered no host key", permanent=True)
    if policy == "add":
        pattern = spec.host if port == 22 else f"[{spec.host}]:{port}"
        public = key.export_public_key("openssh").decode().split()
        known.parent.mkdir(parents=True, exist_ok=True)
        with known.open("a") as hosts:
            hosts.write(f"{pattern} {public[0]} {public[1]}\n")
    return ([key], [], [])


def _failure(spec: SourceSpec, error: BaseException, path: str) -> _Failure:
    """What ``error`` means for a transfer; a refused key or login, a stall or a broken
    connection drops the connection, a missing or forbidden file does not."""
    where = f"sftp://{spec.server.rsplit('@', 1)[-1]}{path}"
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        return _Failure(
            SourceError(
                f"the host key of {spec.host} does not match the known-hosts file: refused",
                permanent=True,
            ),
            keep_connection=False,
        )
    if isinstance(error, asyncssh.PermissionDenied):
        return _Failure(
            SourceError(f"{where}: authentication failed", permanent=True), keep_connection=False
        )
    if isinstance(error, asyncssh.SFTPNoSuchFile | FileNotFoundError):
        return _Failure(
            SourceError(f"{where}: no such file or folder", permanent=True), keep_connection=True
        )
    if isinstance(error, asyncssh.SFTPPermissionDenied | PermissionError):
        return _Failure(
            SourceError(f"{where}: permission denied", permanent=True), keep_connection=True
        )
    if isinstance(error, TimeoutError):
        return _Failure(stalled(where, spec.stall_timeout), keep_connection=False)
    return _Failure(SourceError(f"{where}: {error}"), keep_connection=False)


def _entry(name: str, attrs: asyncssh.SFTPAttrs) -> RemoteEntry:
    mode = attrs.permissions or 0
    is_dir = attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY or stat.S_ISDIR(mode)
    is_link = attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK or stat.S_ISLNK(mode)
    mtime = datetime.fromtimestamp(attrs.mtime, UTC) if attrs.mtime is not None else None
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir else attrs.size,
        mtime=mtime,
        fingerprint=f"{attrs.size}-{attrs.mtime}",
        is_link=is_link,
    )
