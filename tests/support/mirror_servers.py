"""Real loopback FTP, FTPS, HTTP, HTTPS and SFTP servers for the mirror tests.

Each context manager serves a local folder from background thread(s) of the test process on
127.0.0.1 (the kernel picks the port: binding port 0 cannot race another test for it), yields a
:class:`ServerInfo` and stops every thread it started on exit, even while a transfer is
stalled on purpose.

Every server carries a :class:`Faults` object the test may change while the server runs: refuse
the next connections or requests, cut or stall the transfer of one file once after a number of
bytes, and a log of the requests seen (``"RETR a/b.gz"``, ``"REST 1000"``,
``"GET /a/b.gz bytes=1000-"``, ``"READ a/b.gz 32768"``) to assert how a client resumed.

TLS servers use a throwaway CA and a certificate for 127.0.0.1/localhost made at start-up; the
CA's PEM (``ServerInfo.cafile``) lives in a temporary folder removed when the server stops.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import html
import ipaddress
import json
import logging
import mimetypes
import os
import posixpath
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.support.tracked_server import DispatchingHandler, TrackedHTTPServer, serving

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0  # seconds a server thread may take to stop before the test fails
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_COPY_CHUNK = 64 * 1024

IndexStyle = Literal["apache", "apache_table", "nginx", "iis", "simple"]


# --- faults and server description ---------------------------------------------------------


@dataclass(frozen=True)
class _TransferFault:
    """A fault claimed for one transfer: act after ``limit`` bytes of the file."""

    kind: Literal["cut", "stall"]
    limit: int
    seconds: float


@dataclass
class Faults:
    """Misbehaviour to inject; thread-safe and mutable while the server runs.

    Counters and the per-file tables are consumed as the faults fire, so a test can check
    afterwards that each fault was hit (``faults.cut_after == {}``). Byte counts are from the
    start of the file: a transfer that starts at or past the limit is not affected and leaves
    the fault armed.
    """

    refuse_connections: int = 0
    """Next N FTP connections get ``421`` then close; next N HTTP requests get ``503``."""
    too_many_requests: int = 0
    """HTTP only: next N requests get ``429`` with ``Retry-After: 1``."""
    cut_after: dict[str, int] = field(default_factory=dict)
    """Root-relative ``/``-separated path -> cut that file's transfer once after N bytes."""
    stall_after: dict[str, int] = field(default_factory=dict)
    """Path -> stop sending once after N bytes for ``stall_seconds``, connection held open."""
    stall_seconds: float = 30.0
    ignore_ranges: bool = False
    """HTTP only: answer a ``Range`` with the whole file (200), as servers may."""
    requests: list[str] = field(default_factory=list)
    """Log of the requests seen, oldest first."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _log(self, entry: str) -> None:
        with self._lock:
            self.requests.append(entry)

    def _take(self, counter: Literal["refuse_connections", "too_many_requests"]) -> bool:
        """Consume one unit of ``counter``; True when the fault fires."""
        with self._lock:
            left = getattr(self, counter)
            if left <= 0:
                return False
            setattr(self, counter, left - 1)
            return True

    def _claim(self, path: str, start: int, end: int) -> _TransferFault | None:
        """Consume the cut or stall for ``path`` if its byte falls inside ``[start, end)``.

        ``start < limit < end``: the transfer starts before the limit and has bytes after it
        (a limit at or past the end would never be seen by the client, so it stays armed).
        """
        tables: tuple[tuple[Literal["cut", "stall"], dict[str, int]], ...] = (
            ("cut", self.cut_after),
            ("stall", self.stall_after),
        )
        with self._lock:
            for kind, table in tables:
                limit = table.get(path)
                if limit is not None and start < limit < end:
                    del table[path]
                    return _TransferFault(kind, limit, self.stall_seconds)
        return None


@dataclass
class ServerInfo:
    """Where a test server listens and how to log in to it."""

    scheme: str
    host: str
    port: int
    root: Path
    user: str | None
    password: str | None
    cafile: Path | None
    """PEM of the CA that signed a TLS server's certificate (valid while the server runs)."""
    known_hosts_line: str | None
    """SFTP: ``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` for a known_hosts file."""
    faults: Faults

    @property
    def url(self) -> str:
        """``scheme://host:port`` without a path."""
        return f"{self.scheme}://{self.host}:{self.port}"


# --- TLS material ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TlsFiles:
    certfile: Path  # server certificate then the CA (the chain the server presents)
    keyfile: Path
    cafile: Path


@functools.cache
def _tls_pems() -> tuple[bytes, bytes, bytes]:
    """(server chain PEM, server key PEM, CA PEM), made once per test process.

    A separate CA and leaf (rather than one self-signed leaf) satisfy strict X.509 checks
    (``VERIFY_X509_STRICT``) that newer Pythons and OpenSSL turn on by default.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Conveyor test mirror CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(pem) + ca_pem, key_pem, ca_pem


def _write_tls_files(directory: Path) -> _TlsFiles:
    """Write the TLS PEMs into ``directory`` (a server's own temporary folder)."""
    chain, key, ca = _tls_pems()
    files = _TlsFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    files.certfile.write_bytes(chain)
    files.keyfile.write_bytes(key)
    files.keyfile.chmod(0o600)
    files.cafile.write_bytes(ca)
    return files


def _stop_thread(thread: threading.Thread, what: str) -> None:
    thread.join(timeout=JOIN_TIMEOUT)
    if thread.is_alive():
        raise RuntimeError(f"{what} thread {thread.name} did not stop in {JOIN_TIMEOUT:.0f} s")


# --- FTP / FTPS (pyftpdlib) ------------------------------------------------------------------


def _ftp_classes(tls: bool) -> tuple[type[Any], type[Any], type[Any]]:
    """pyftpdlib's (control handler, data handler, file producer) classes to build on.

    Imported lazily so that test modules not using FTP do not pay for pyftpdlib (and its
    deprecated asynchat import).
    """
    from pyftpdlib.handlers import DTPHandler, FTPHandler  # type: ignore[import-untyped]
    from pyftpdlib.handlers.ftp.producers import FileProducer  # type: ignore[import-untyped]

    if tls:
        from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

        return TLS_FTPHandler, TLS_DTPHandler, FileProducer
    return FTPHandler, DTPHandler, FileProducer


class _FaultyDTPMixin:
    """Data-channel side of the FTP faults: cut or stall a RETR after its byte limit.

    Works on ``send()`` (sendfile is switched off in the control handler), so the limit
    counts the bytes really handed to the socket.
    """

    cmd_channel: Any
    ioloop: Any
    tot_bytes_sent: int
    _closed: bool
    _error: bool  # TLS mixin: True skips the close_notify on close
    _wanted_io_events: int
    _fault: _TransferFault | None = None
    _fault_room = 0  # bytes of this transfer to send before the fault

    def push_with_producer(self, producer: Any) -> None:
        fault = getattr(self.cmd_channel, "_pending_fault", None)
        # Only a RETR's file producer: listings go through the same method.
        if fault is not None and isinstance(producer, self.cmd_channel.file_producer):
            self.cmd_channel._pending_fault = None
            self._fault = fault
            self._fault_room = fault.limit - self.cmd_channel._pending_start
        super().push_with_producer(producer)  # type: ignore[misc]

    def send(self, data: bytes) -> int:
        fault = self._fault
        if fault is None:
            return int(super().send(data))  # type: ignore[misc]
        room = self._fault_room - self.tot_bytes_sent
        if room > 0:
            return int(super().send(data[:room]))  # type: ignore[misc]
        self._fault = None
        if fault.kind == "cut":
            # TLS: no close_notify, the client sees the stream simply end. The control
            # channel then says 426 as after any dropped data connection.
            self._error = True
            self.handle_close()  # type: ignore[attr-defined]
            return 0
        # Stall: stop asking for write events; a client that gives up and closes still
        # wakes us through the read event, and close_all() on shutdown closes us anyway.
        self._wanted_io_events = self.ioloop.READ
        self.modify_ioloop_events(self.ioloop.READ)  # type: ignore[attr-defined]
        self.call_later(fault.seconds, self._end_stall)  # type: ignore[attr-defined]
        return 0

    def _end_stall(self) -> None:
        if not self._closed:
            self._wanted_io_events = self.ioloop.WRITE
            self.modify_ioloop_events(self.ioloop.WRITE)  # type: ignore[attr-defined]


class _MirrorFTPHandlerMixin:
    """Control-channel side: request log, 421 refusals and claiming RETR faults."""

    faults: Faults
    root_dir: str
    file_producer: type[Any]
    msdos_syst = False
    _restart_position: int
    _pending_fault: _TransferFault | None = None
    _pending_start = 0

    def handle(self) -> None:
        if self.faults._take("refuse_connections"):
            self.respond("421 Too many connections.")  # type: ignore[attr-defined]
            self.close_when_done()  # type: ignore[attr-defined]
            return
        super().handle()  # type: ignore[misc]

    def _relative(self, arg: str) -> str:
        """A filesystem path under the root as the client-facing relative path."""
        root = self.root_dir
        if arg == root:
            return "."
        if arg.startswith(root + os.sep):
            return arg[len(root) + 1 :].replace(os.sep, "/")
        return arg

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        arg = args[0] if args and isinstance(args[0], str) else ""
        shown = "PASS ******" if cmd == "PASS" else f"{cmd} {self._relative(arg)}".rstrip()
        self.faults._log(shown)
        super().process_command(cmd, *args, **kwargs)  # type: ignore[misc]

    def ftp_RETR(self, file: str) -> str | None:  # noqa: N802 - pyftpdlib's naming
        start = self._restart_position
        try:
            size = Path(file).stat().st_size
        except OSError:
            size = 0
        self._pending_fault = self.faults._claim(self._relative(file), start, size)
        self._pending_start = start
        result: str | None = super().ftp_RETR(file)  # type: ignore[misc]
        if result is None:
            self._pending_fault = None
        return result

    def ftp_SYST(self, line: str) -> None:  # noqa: N802
        if self.msdos_syst:
            self.respond("215 Windows_NT")  # type: ignore[attr-defined]
        else:
            super().ftp_SYST(line)  # type: ignore[misc]


def _msdos_line(name: str, st: os.stat_result) -> str:
    """One LIST line as IIS writes it in MS-DOS style, in UTC."""
    stamp = time.gmtime(st.st_mtime)
    hour = stamp.tm_hour % 12 or 12
    suffix = "AM" if stamp.tm_hour < 12 else "PM"
    when = (
        f"{stamp.tm_mon:02d}-{stamp.tm_mday:02d}-{stamp.tm_year % 100:02d}"
        f"  {hour:02d}:{stamp.tm_min:02d}{suffix}"
    )
    if stat.S_ISDIR(st.st_mode):
        return f"{when}       <DIR>          {name}\r\n"
    return f"{when} {st.st_size:>20} {name}\r\n"


def _msdos_filesystem() -> type[Any]:
    from pyftpdlib.filesystems import AbstractedFS  # type: ignore[import-untyped]

    class MSDOSFilesystem(AbstractedFS):  # type: ignore[misc]
        """LIST in MS-DOS format (what IIS and some Windows FTP servers answer)."""

        def format_list(
            self, basedir: str, listing: list[str], ignore_err: bool = True
        ) -> Iterator[bytes]:
            for basename in listing:
                path = os.path.join(basedir, basename)  # noqa: PTH118 - pyftpdlib works on str
                try:
                    st = self.stat(path)
                except OSError:
                    if ignore_err:
                        continue
                    raise
                line = _msdos_line(basename, st)
                yield line.encode(self.cmd_channel.encoding, self.cmd_channel.unicode_errors)

    return MSDOSFilesystem


@contextmanager
def ftp_server(
    root: Path,
    *,
    tls: bool = False,
    user: str = "user",
    password: str = "secret",
    anonymous: bool = False,
    listing: Literal["unix", "msdos"] = "unix",
    mlsd: bool = True,
) -> Iterator[ServerInfo]:
    """Serve ``root`` read-only over FTP (or explicit FTPS with ``tls=True``).

    pyftpdlib with MLSD, MDTM, SIZE, REST and passive mode on loopback; ``user`` has the
    read-only permissions ``elr``, and ``anonymous`` adds the anonymous login on the same
    root. With TLS the client must ``AUTH TLS`` before logging in and ``PROT P`` before any
    transfer. ``listing="msdos"`` answers LIST (and SYST) like IIS. The scheme is ``ftps``
    for the TLS server, which is explicit FTPS on the yielded port (not implicit on 990).
    ``mlsd=False`` answers MLSD with "500 Command not understood", as old servers do.
    """
    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.filesystems import AbstractedFS
    from pyftpdlib.ioloop import IOLoop  # type: ignore[import-untyped]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

    root = root.resolve()
    faults = Faults()
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elr")
    if anonymous:
        authorizer.add_anonymous(str(root), perm="elr")
    control_base, data_base, file_producer = _ftp_classes(tls)

    with tempfile.TemporaryDirectory(prefix="mirror-ftp-") as scratch:
        # Classes made per server: pyftpdlib keeps its settings (and the TLS context) on them.
        data_handler = type("MirrorDTPHandler", (_FaultyDTPMixin, data_base), {})
        settings: dict[str, Any] = {
            "authorizer": authorizer,
            "dtp_handler": data_handler,
            "abstracted_fs": _msdos_filesystem() if listing == "msdos" else AbstractedFS,
            "msdos_syst": listing == "msdos",
            "use_sendfile": False,  # the faults count bytes in send()
            "faults": faults,
            "root_dir": str(root),
            "file_producer": file_producer,
            "banner": "Conveyor test FTP server ready.",
        }
        if not mlsd:
            commands = dict(control_base.proto_cmds)
            commands.pop("MLSD")
            settings["proto_cmds"] = commands
        cafile = None
        if tls:
            files = _write_tls_files(Path(scratch))
            cafile = files.cafile
            settings |= {
                "certfile": str(files.certfile),
                "keyfile": str(files.keyfile),
                "ssl_context": None,
                "tls_control_required": True,
                "tls_data_required": True,
            }
        handler = type("MirrorFTPHandler", (_MirrorFTPHandlerMixin, control_base), settings)
        ioloop = IOLoop()  # its own loop: the global instance is shared by every server
        server = FTPServer(("127.0.0.1", 0), handler, ioloop=ioloop)
        port = int(server.address[1])
        stop = threading.Event()

        def run() -> None:
            try:
                while not stop.is_set():
                    ioloop.loop(timeout=0.05, blocking=False)
            finally:
                server.close_all()  # closes every control and data channel, stalled too

        thread = threading.Thread(target=run, name=f"mirror-ftp-{port}", daemon=True)
        thread.start()
        try:
            yield ServerInfo(
                scheme="ftps" if tls else "ftp",
                host="127.0.0.1",
                port=port,
                root=root,
                user=user,
                password=password,
                cafile=cafile,
                known_hosts_line=None,
                faults=faults,
            )
        finally:
            stop.set()
            _stop_thread(thread, "FTP server")


# --- HTTP / HTTPS (http.server) --------------------------------------------------------------


def _apache_size(size: int) -> str:
    """apr_strfsize(): Apache's four-character, binary-rounded size column."""
    if size < 0:
        return "  - "
    if size < 973:
        return f"{size:3d} "
    units = "KMGTPE"
    unit = 0
    while True:
        remain = size & 1023
        size >>= 10
        if size >= 973:
            unit += 1
            continue
        if size < 9 or (size == 9 and remain < 973):
            tenths = (remain * 5 + 256) // 512
            if tenths >= 10:
                size, tenths = size + 1, 0
            return f"{size}.{tenths}{units[unit]}"
        if remain >= 512:
            size += 1
        return f"{size:3d}{units[unit]}"


def _truncate(name: str, width: int) -> tuple[str, int]:
    """(HTML text, visible length) of a name cut to ``width`` the way Apache and nginx do."""
    if len(name) > width:
        return html.escape(name[: width - 3]) + "..&gt;", width
    return html.escape(name), len(name)


@dataclass(frozen=True)
class _Entry:
    name: str
    is_dir: bool
    size: int
    mtime: dt.datetime  # UTC


def _scan(
    directory: Path, *, dirs_first: bool, casefold: bool, hidden: bool
) -> list[tuple[str, bool]]:
    """Sorted (name, is_dir) pairs; only names are held, each row is stat'ed as written."""
    with os.scandir(directory) as entries:
        items: list[tuple[str, bool]] = []
        for entry in entries:
            if not hidden and entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            items.append((entry.name, is_dir))

    def key(item: tuple[str, bool]) -> tuple[bool, str]:
        name = item[0].casefold() if casefold else item[0]
        return (not item[1] if dirs_first else False, name)

    items.sort(key=key)
    return items


def _entries(directory: Path, items: list[tuple[str, bool]]) -> Iterator[_Entry]:
    for name, is_dir in items:
        try:
            st = (directory / name).stat()
        except OSError:
            continue  # removed while listing
        mtime = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
        yield _Entry(name, is_dir, -1 if is_dir else st.st_size, mtime)


def _parent(url_path: str) -> str:
    return url_path.rstrip("/").rsplit("/", 1)[0] + "/"


def _apache_head(title: str) -> str:
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
        f"  <title>Index of {title}</title>\n </head>\n <body>\n<h1>Index of {title}</h1>\n"
    )


def _apache_address(port: int) -> str:
    return f"<address>Apache/2.4.62 (Unix) Server at 127.0.0.1 Port {port}</address>\n"


def _index_apache(url_path: str, directory: Path, port: int) -> Iterator[str]:
    # mod_autoindex FancyIndexing: the title drops the trailing slash, names are cut to 23.
    title = html.escape(url_path.rstrip("/") or "/")
    yield _apache_head(title)
    yield (
        '<pre><img src="/icons/blank.gif" alt="Icon "> <a href="?C=N;O=D">Name</a>'
        '                    <a href="?C=M;O=A">Last modified</a>      '
        '<a href="?C=S;O=A">Size</a>  <a href="?C=D;O=A">Description</a><hr>'
    )
    if url_path != "/":
        yield (
            '<img src="/icons/back.gif" alt="[PARENTDIR]"> '
            f'<a href="{quote(_parent(url_path))}">Parent Directory</a>'
            f"{' ' * 8}{' ' * 19}  -   \n"
        )
    for entry in _entries(
        directory, _scan(directory, dirs_first=False, casefold=False, hidden=True)
    ):
        shown = entry.name + "/" if entry.is_dir else entry.name
        text, width = _truncate(shown, 23)
        href = quote(entry.name) + ("/" if entry.is_dir else "")
        icon = (
            '<img src="/icons/folder.gif" alt="[DIR]">'
            if entry.is_dir
            else '<img src="/icons/unknown.gif" alt="[   ]">'
        )
        m = entry.mtime
        when = f"{m.day:02d}-{_MONTHS[m.month - 1]}-{m.year} {m.hour:02d}:{m.minute:02d}"
        yield (
            f'{icon} <a href="{href}">{text}</a>{" " * (24 - width)}'
            f"{when}  {_apache_size(entry.size)}  \n"
        )
    yield "<hr></pre>\n" + _apache_address(port) + "</body></html>\n"


def _index_apache_table(url_path: str, directory: Path, port: int) -> Iterator[str]:
    # mod_autoindex with IndexOptions HTMLTable.
    yield _apache_head(html.escape(url_path.rstrip("/") or "/"))
    yield (
        "  <table>\n"
        '   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th>'
        '<th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th>'
        '<th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>\n'
        '   <tr><th colspan="5"><hr></th></tr>\n'
    )
    if url_path != "/":
        yield (
            '<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td>'
            f'<td><a href="{quote(_parent(url_path))}">Parent Directory</a></td>'
            '<td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>\n'
        )
    for entry in _entries(
        directory, _scan(directory, dirs_first=False, casefold=False, hidden=True)
    ):
        shown = entry.name + "/" if entry.is_dir else entry.name
        text, _ = _truncate(shown, 23)
        href = quote(entry.name) + ("/" if entry.is_dir else "")
        icon, alt = ("folder", "[DIR]") if entry.is_dir else ("unknown", "[   ]")
        yield (
            f'<tr><td valign="top"><img src="/icons/{icon}.gif" alt="{alt}"></td>'
            f'<td><a href="{href}">{text}</a></td>'
            f'<td align="right">{entry.mtime:%Y-%m-%d %H:%M}  </td>'
            f'<td align="right">{_apache_size(entry.size)}</td><td>&nbsp;</td></tr>\n'
        )
    yield '   <tr><th colspan="5"><hr></th></tr>\n</table>\n' + _apache_address(port)
    yield "</body></html>\n"


def _index_nginx(url_path: str, directory: Path, port: int) -> Iterator[str]:
    # ngx_http_autoindex_module: directories first, dotfiles hidden, names cut to 50, CRLF.
    title = html.escape(url_path)
    yield (
        f"<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n"
        f'<h1>Index of {title}</h1><hr><pre><a href="../">../</a>\r\n'
    )
    for entry in _entries(
        directory, _scan(directory, dirs_first=True, casefold=False, hidden=False)
    ):
        shown = entry.name + "/" if entry.is_dir else entry.name
        text, width = _truncate(shown, 50)
        href = quote(entry.name) + ("/" if entry.is_dir else "")
        m = entry.mtime
        when = f"{m.day:02d}-{_MONTHS[m.month - 1]}-{m.year} {m.hour:02d}:{m.minute:02d}"
        size = "-" if entry.is_dir else str(entry.size)
        yield f'<a href="{href}">{text}</a>{" " * (50 - width)} {when} {size:>19}\r\n'
    yield "</pre><hr></body>\r\n</html>\r\n"


def _index_iis(url_path: str, directory: Path, port: int) -> Iterator[str]:
    # IIS directory browsing: one long line, absolute hrefs, US dates, "<dir>" for folders.
    title = f"127.0.0.1 - {html.escape(url_path)}"
    yield f"<html><head><title>{title}</title></head><body><H1>{title}</H1><hr>\r\n\r\n<pre>"
    if url_path != "/":
        yield f'<A HREF="{quote(_parent(url_path))}">[To Parent Directory]</A><br><br>'
    for entry in _entries(
        directory, _scan(directory, dirs_first=False, casefold=True, hidden=True)
    ):
        m = entry.mtime
        date = f"{m.month}/{m.day}/{m.year}"
        clock = f"{m.hour % 12 or 12}:{m.minute:02d} {'AM' if m.hour < 12 else 'PM'}"
        size = " " * 7 + "&lt;dir&gt;" if entry.is_dir else f"{entry.size:>12}"
        href = quote(url_path + entry.name + ("/" if entry.is_dir else ""))
        yield f'{date:>10} {clock:>8} {size} <A HREF="{href}">{html.escape(entry.name)}</A><br>'
    yield "</pre><hr></body></html>\r\n"


def _index_simple(url_path: str, directory: Path, port: int) -> Iterator[str]:
    yield f"<html><head><title>{html.escape(url_path)}</title></head><body><ul>\n"
    for name, is_dir in _scan(directory, dirs_first=False, casefold=False, hidden=True):
        shown = name + "/" if is_dir else name
        yield f'<li><a href="{quote(shown)}">{html.escape(shown)}</a></li>\n'
    yield "</ul></body></html>\n"


_INDEXES: dict[str, Callable[[str, Path, int], Iterator[str]]] = {
    "apache": _index_apache,
    "apache_table": _index_apache_table,
    "nginx": _index_nginx,
    "iis": _index_iis,
    "simple": _index_simple,
}


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _ChunkedWriter:
    """Transfer-Encoding: chunked body, sent in ~16 KiB chunks as rows come."""

    def __init__(self, out: _Writable, chunk: int = 16 * 1024) -> None:
        self._out = out
        self._chunk = chunk
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._chunk:
            self.flush()

    def flush(self) -> None:
        if self._size:
            payload = b"".join(self._parts)
            self._out.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self._parts, self._size = [], 0

    def close(self) -> None:
        self.flush()
        self._out.write(b"0\r\n\r\n")


@dataclass
class _HttpConfig:
    root: Path
    faults: Faults
    index_style: str
    redirects: dict[str, str]
    authorization: str | None  # the expected Authorization header value
    stopping: threading.Event


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _content_type(path: Path) -> str:
    kind, encoding = mimetypes.guess_type(path.name)
    # Never Content-Encoding: clients would unpack .gz files on the fly.
    if encoding == "gzip":
        return "application/gzip"
    if encoding or kind is None:
        return "application/octet-stream"
    return kind


class _MirrorHTTPHandler(DispatchingHandler):
    """GET/HEAD of files and indexes, /echo, /no-head/, redirects, auth and faults."""

    protocol_version = "HTTP/1.1"
    server_version = "ConveyorTestHTTP/1.0"
    timeout = 60  # an idle keep-alive connection is dropped after this
    disable_nagle_algorithm = True
    server: _MirrorHTTPServer

    # --- responses

    def _reply_json(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        """Read the request body so the connection stays usable for the next request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # not needed by the mirror clients
            return b""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 16 * 1024 * 1024:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length else b""

    # --- routing

    def dispatch(self) -> None:
        config = self.server.config
        faults = config.faults
        if self.command == "GET":
            faults._log(f"GET {self.path} {self.headers.get('Range') or '-'}")
        else:
            faults._log(f"{self.command} {self.path}")
        body = self._read_body()
        if faults._take("refuse_connections"):
            return self.reply_text(503, "Service Unavailable", {"Retry-After": "1"})
        if faults._take("too_many_requests"):
            return self.reply_text(429, "Too Many Requests", {"Retry-After": "1"})
        if config.authorization is not None and (
            self.headers.get("Authorization") != config.authorization
        ):
            return self.reply_text(
                401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="mirror"'}
            )
        split = urlsplit(self.path)
        path = split.path
        if path in config.redirects:
            return self.reply_text(302, "Found", {"Location": config.redirects[path]})
        if path == "/echo":
            return self._echo(split.query, body)
        local = path
        if path.startswith("/no-head/"):
            if self.command == "HEAD":
                return self.reply_text(405, "Method Not Allowed", {"Allow": "GET"})
            local = path[len("/no-head") :]
        if self.command == "POST":
            return self.reply_text(405, "Method Not Allowed", {"Allow": "GET, HEAD"})
        return self._serve_path(path, local, split.query)

    def _echo(self, query: str, body: bytes) -> None:
        def flat(values: dict[str, list[str]]) -> dict[str, str | list[str]]:
            return {k: v[0] if len(v) == 1 else v for k, v in values.items()}

        if self.command == "POST":
            form = {}
            if self.headers.get_content_type() == "application/x-www-form-urlencoded":
                form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            return self._reply_json({"form": flat(form)})
        return self._reply_json({"args": flat(parse_qs(query, keep_blank_values=True))})

    def _serve_path(self, path: str, local: str, query: str) -> None:
        """Serve URL ``path``, found in the root at ``local`` (``path`` minus /no-head)."""
        parts = [p for p in unquote(local).split("/") if p not in ("", ".")]
        if ".." in parts or any("\0" in p for p in parts):
            return self.reply_text(404, "Not Found")
        target = self.server.config.root.joinpath(*parts)
        if target.is_dir():
            if not path.endswith("/"):
                location = path + "/" + (f"?{query}" if query else "")
                return self.reply_text(301, "Moved Permanently", {"Location": location})
            return self._send_index(unquote(path), target)
        if target.is_file():
            return self._send_file(target, "/".join(parts))
        return self.reply_text(404, "Not Found")

    # --- directory index

    def _send_index(self, url_path: str, directory: Path) -> None:
        config = self.server.config
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        # Chunked so that the page is written row by row, never held whole.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        writer = _ChunkedWriter(self.wfile)
        for piece in _INDEXES[config.index_style](url_path, directory, self.server.port):
            writer.write(piece)
        writer.close()

    # --- files

    def _range(self, size: int, etag: str, mtime: float) -> tuple[int, int] | str | None:
        """(start, end inclusive) of a usable Range, None to send it all, or "416"."""
        header = self.headers.get("Range")
        if not header or self.server.config.faults.ignore_ranges:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None:
            if if_range.startswith(('"', "W/")):
                if if_range != etag:
                    return None
            else:
                try:
                    if int(parsedate_to_datetime(if_range).timestamp()) != int(mtime):
                        return None
                except (TypeError, ValueError):
                    return None
        match = _RANGE.fullmatch(header.strip())
        if not match or not (match[1] or match[2]):
            return None  # several ranges or bad syntax: ignore it, as RFC 9110 allows
        if match[1]:
            start = int(match[1])
            end = int(match[2]) if match[2] else size - 1
            if match[2] and end < start:
                return None  # invalid: ignored
            if start >= size:
                return "416"
            return start, min(end, size - 1)
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            return "416"
        return max(0, size - suffix), size - 1

    def _send_file(self, target: Path, key: str) -> None:
        st = target.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        wanted = self._range(size, etag, st.st_mtime)
        if wanted == "416":
            self.reply_text(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            return
        start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
        self.send_response(206 if isinstance(wanted, tuple) else 200)
        self.send_header("Content-Type", _content_type(target))
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        faults = self.server.config.faults
        with target.open("rb") as source:
            source.seek(start)
            fault = faults._claim(key, start, end + 1)
            if fault is None:
                self._copy(source, end + 1 - start)
                return
            self._copy(source, fault.limit - start)
            if fault.kind == "stall" and not self.server.config.stopping.wait(fault.seconds):
                self._copy(source, end + 1 - fault.limit)
                return
            self._cut()  # a cut, or a stall interrupted by the server stopping

    def _copy(self, source: IO[bytes], count: int) -> None:
        while count > 0:
            data = source.read(min(_COPY_CHUNK, count))
            if not data:
                break  # the file shrank: the client sees a short body
            self.wfile.write(data)
            count -= len(data)

    def _cut(self) -> None:
        """End the connection mid-body: TCP FIN, and for TLS no close_notify."""
        self.close_connection = True
        # socket.socket.shutdown, not SSLSocket's, so no TLS alert goes out first.
        with suppress(OSError):
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)


class _MirrorHTTPServer(TrackedHTTPServer):
    """The test HTTP(S) server: TLS per connection, every connection tracked for shutdown."""

    thread_prefix = "mirror-http"

    def __init__(self, config: _HttpConfig, context: ssl.SSLContext | None) -> None:
        self.config = config
        self.context = context
        super().__init__(_MirrorHTTPHandler)

    def open_connection(self, request: socket.socket) -> socket.socket:
        if self.context is None:
            return request
        request.settimeout(_MirrorHTTPHandler.timeout)
        return self.context.wrap_socket(request, server_side=True)


@contextmanager
def http_server(
    root: Path,
    *,
    tls: bool = False,
    index_style: IndexStyle = "apache",
    redirects: dict[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> Iterator[ServerInfo]:
    """Serve ``root`` over HTTP/1.1 with keep-alive (HTTPS with ``tls=True``).

    GET and HEAD send ``Content-Length``, ``Last-Modified``, a strong ``ETag`` and
    ``Accept-Ranges``; one ``Range`` (``N-``, ``N-M``, ``-N``) gives 206, honouring
    ``If-Range``; 416 past the end; 404 when missing. A folder URL ending in ``/`` gives a
    streamed (chunked) index page in ``index_style``; without the slash, 301 to it.
    ``redirects`` maps exact paths to a 302 ``Location``. ``/echo`` answers GET with
    ``{"args": ...}`` and form POSTs with ``{"form": ...}``; ``/no-head/<path>`` serves
    ``<path>`` but answers HEAD with 405. With ``basic_auth`` every request needs it (401).
    """
    root = root.resolve()
    faults = Faults()
    authorization = None
    if basic_auth is not None:
        token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        authorization = f"Basic {token}"
    config = _HttpConfig(
        root=root,
        faults=faults,
        index_style=index_style,
        redirects=dict(redirects or {}),
        authorization=authorization,
        stopping=threading.Event(),
    )
    with tempfile.TemporaryDirectory(prefix="mirror-http-") as scratch:
        context = None
        cafile = None
        if tls:
            files = _write_tls_files(Path(scratch))
            cafile = files.cafile
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files.certfile, files.keyfile)
        server = _MirrorHTTPServer(config, context)
        # On exit, stopping makes stalled bodies give up at once.
        with serving(server, on_stop=config.stopping.set):
            yield ServerInfo(
                scheme="https" if tls else "http",
                host="127.0.0.1",
                port=server.port,
                root=root,
                user=basic_auth[0] if basic_auth else None,
                password=basic_auth[1] if basic_auth else None,
                cafile=cafile,
                known_hosts_line=None,
                faults=faults,
            )


# --- SFTP (asyncssh) -------------------------------------------------------------------------


@dataclass
class _SftpState:
    root: Path
    user: str
    password: str
    faults: Faults
    connections: set[Any] = field(default_factory=set)
    stopping: asyncio.Event | None = None  # made inside the server's loop


@dataclass
class _OpenFile:
    path: str
    size: int
    first_offset: int | None = None
    pending: _TransferFault | None = None  # fires at the next read, after a short one


def _sftp_classes() -> tuple[type[Any], type[Any]]:
    import asyncssh

    class SSHServer(asyncssh.SSHServer):
        """Password login for one user; tracks connections so shutdown can close them."""

        def __init__(self, state: _SftpState) -> None:
            self._state = state
            self._conn: Any = None

        def connection_made(self, conn: Any) -> None:
            self._conn = conn
            self._state.connections.add(conn)

        def connection_lost(self, exc: Exception | None) -> None:
            self._state.connections.discard(self._conn)

        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return username == self._state.user and password == self._state.password

    class SFTPServer(asyncssh.SFTPServer):
        """Read-only SFTP chrooted to the root, with the read faults and the READ log."""

        def __init__(self, chan: Any, state: _SftpState) -> None:
            super().__init__(chan, chroot=os.fsencode(state.root))
            self._state = state
            self._files: dict[Any, _OpenFile] = {}

        def open(self, path: bytes, pflags: int, attrs: Any) -> Any:
            writing = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT
            if pflags & (writing | asyncssh.FXF_TRUNC):
                raise asyncssh.SFTPPermissionDenied("read-only mirror")
            file_obj = cast(IO[bytes], super().open(path, pflags, attrs))
            relative = os.fsdecode(posixpath.normpath(posixpath.join(b"/", path))).lstrip("/")
            self._files[file_obj] = _OpenFile(relative, os.fstat(file_obj.fileno()).st_size)
            return file_obj

        def close(self, file_obj: Any) -> None:
            self._files.pop(file_obj, None)
            super().close(file_obj)

        def remove(self, path: bytes) -> None:
            raise asyncssh.SFTPPermissionDenied("read-only mirror")

        def rename(self, oldpath: bytes, newpath: bytes) -> None:
            raise asyncssh.SFTPPermissionDenied("read-only mirror")

        def mkdir(self, path: bytes, attrs: Any) -> None:
            raise asyncssh.SFTPPermissionDenied("read-only mirror")

        def rmdir(self, path: bytes) -> None:
            raise asyncssh.SFTPPermissionDenied("read-only mirror")

        async def read(self, file_obj: object, offset: int, size: int) -> bytes:
            file_obj = cast(IO[bytes], file_obj)
            opened = self._files.get(file_obj)
            if opened is None:
                return _read_at(file_obj, offset, size)
            faults = self._state.faults
            faults._log(f"READ {opened.path} {offset}")
            if opened.first_offset is None:
                opened.first_offset = offset
            fault, opened.pending = opened.pending, None
            if fault is None:
                end = min(offset + size, opened.size)
                fault = faults._claim(opened.path, opened.first_offset, end)
                if fault is not None and offset < fault.limit:
                    # A short read up to the limit (legal in SFTP); the fault hits the next.
                    opened.pending = fault
                    return _read_at(file_obj, offset, fault.limit - offset)
            if fault is not None:
                stopping = self._state.stopping
                assert stopping is not None
                if fault.kind == "cut":
                    # The session ends with this read unanswered. Only the channel is closed,
                    # cleanly: closing the connection resets it, and a reset makes the
                    # client's kernel drop answers it received but had not read yet.
                    self.channel.close()
                    raise asyncssh.SFTPConnectionLost("transfer cut by the test server")
                if not await _wait(stopping, fault.seconds):
                    # The server is stopping during a stall: drop the connection.
                    self.connection.close()
                    raise asyncssh.SFTPConnectionLost("transfer cut by the test server")
            return _read_at(file_obj, offset, size)

    return SSHServer, SFTPServer


def _read_at(file_obj: IO[bytes], offset: int, size: int) -> bytes:
    file_obj.seek(offset)
    return file_obj.read(size)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; True when the sleep ran out."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return True
    return False


@contextmanager
def sftp_server(
    root: Path,
    *,
    user: str = "user",
    password: str = "secret",
    encryption_algs: Sequence[str] = (),
) -> Iterator[ServerInfo]:
    """Serve ``root`` read-only over SFTP (asyncssh on its own loop in a background thread).

    Password login, a fresh ed25519 host key (``known_hosts_line``), chroot to ``root``;
    ``encryption_algs`` limits the ciphers it accepts (default: asyncssh's).
    Faults: ``cut_after`` / ``stall_after`` on reads of a file (a short read up to the limit,
    then the next read closes the SFTP channel, after the answers already sent, or waits
    ``stall_seconds``); every read is logged as ``"READ path offset"``.
    """
    import asyncssh

    root = root.resolve()
    state = _SftpState(root=root, user=user, password=password, faults=Faults())
    server_class, sftp_class = _sftp_classes()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}

    async def start() -> None:
        state.stopping = asyncio.Event()
        ready["listener"] = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            server_factory=lambda: server_class(state),
            sftp_factory=lambda chan: sftp_class(chan, state),
            allow_scp=False,
            login_timeout=30,
            encryption_algs=list(encryption_algs) or (),
        )

    async def stop() -> None:
        assert state.stopping is not None
        state.stopping.set()
        listener = ready["listener"]
        listener.close()
        connections = list(state.connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            with suppress(TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 5)
        await listener.wait_closed()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever is still pending (a read parked in a stall) is cancelled, not leaked.
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="mirror-sftp", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=JOIN_TIMEOUT)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        _stop_thread(thread, "SFTP server")
        raise
    port = int(ready["listener"].get_port())
    public = host_key.export_public_key("openssh").decode().split()
    try:
        yield ServerInfo(
            scheme="sftp",
            host="127.0.0.1",
            port=port,
            root=root,
            user=user,
            password=password,
            cafile=None,
            known_hosts_line=f"[127.0.0.1]:{port} {public[0]} {public[1]}",
            faults=state.faults,
        )
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=JOIN_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            _stop_thread(thread, "SFTP server")
