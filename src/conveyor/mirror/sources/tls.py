"""TLS and TCP settings shared by the FTP and HTTP sources (BioMAJ's ``ssl_*`` and keepalive)."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from conveyor.mirror.errors import SourceError
from conveyor.mirror.spec import SourceOptions, SourceSpec

log = logging.getLogger(__name__)


def ssl_context(options: SourceOptions) -> ssl.SSLContext:
    """A client context: the system's CAs or ``ssl_server_cert``, checks as the options say."""
    context = ssl.create_default_context(cafile=options.ssl_server_cert or None)
    if not options.ssl_verifyhost or not options.ssl_verifypeer:
        context.check_hostname = False
    if not options.ssl_verifypeer:
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_context(spec: SourceSpec) -> ssl.SSLContext:
    """The TLS context of ``spec``'s options; turning checks off is logged once per client."""
    options = spec.options
    if not options.ssl_verifypeer or not options.ssl_verifyhost:
        log.warning("%s: TLS certificate checks are off (ssl_verify* options)", spec.server)
    return cached_context(options)


_contexts: dict[tuple[str | None, int, bool, bool], ssl.SSLContext] = {}


def cached_context(options: SourceOptions) -> ssl.SSLContext:
    """One context per TLS setting (and CA file version): loading the CAs costs ~25 ms."""
    cafile = options.ssl_server_cert
    version = Path(cafile).stat().st_mtime_ns if cafile and Path(cafile).exists() else 0
    key = (cafile, version, options.ssl_verifyhost, options.ssl_verifypeer)
    context = _contexts.get(key)
    if context is None:
        try:
            context = _contexts[key] = ssl_context(options)
        except (OSError, ssl.SSLError) as error:
            # A missing or malformed CA file is the mirror's setting: retrying cannot help.
            reason = error.strerror or getattr(error, "reason", None) or str(error)
            raise SourceError(
                f"ssl_server_cert {cafile!r} cannot be used: {reason}", permanent=True
            ) from None
    return context


def keepalive_options(seconds: int) -> list[tuple[int, int, int]]:
    """Socket options for TCP keepalive probes as curl sets them (idle twice, interval once)."""
    if seconds <= 0:
        return []
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if hasattr(socket, "TCP_KEEPIDLE"):
        options.append((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2 * seconds))
    if hasattr(socket, "TCP_KEEPINTVL"):
        options.append((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, seconds))
    return options


def apply_keepalive(sock: socket.socket, seconds: int) -> None:
    """Turn on keepalive probes on an open socket."""
    for level, name, value in keepalive_options(seconds):
        sock.setsockopt(level, name, value)
