"""What the two FTP clients (threads and event loop) share: how they name the server,
judge an error reply and reach a file's folder."""

from __future__ import annotations

import posixpath
import ssl

from conveyor.mirror.errors import SourceError
from conveyor.mirror.spec import SourceSpec


def server_name(spec: SourceSpec) -> str:
    """The server as errors name it: scheme, host and port, never a login."""
    return f"{spec.protocol}://{spec.server.rsplit('@', 1)[-1]}"


def refusal(where: str, reply: str) -> SourceError:
    """What an error reply means: a 5xx is permanent, 421 throttles, another 4xx is retried."""
    text = reply.strip()
    if text.startswith("5"):
        return SourceError(text if text[:3].isdigit() else f"{where}: {text}", permanent=True)
    return SourceError(f"{where}: {text}", throttled=text.startswith("421"))


def split_target(method: str, full: str) -> tuple[str | None, str]:
    """The folder to change to (``None``: none, with ``nocwd``) and what to name in the
    command, for the absolute remote path ``full`` under ``ftp_method``."""
    if method == "nocwd":
        return None, full
    return posixpath.split(full)


def cwd_steps(method: str, folder: str) -> list[str]:
    """The CWD arguments reaching ``folder``: from the root one folder at a time
    (``default``, ``multicwd``) or all at once (``singlecwd``)."""
    if method in ("default", "multicwd"):
        return ["/", *(part for part in folder.strip("/").split("/") if part)]
    return [folder]


def without_line_breaks(where: str, text: str) -> str:
    """``text`` for a command line; a line break in it (which would end the command and
    start another) is refused for good."""
    if "\r" in text or "\n" in text:
        raise SourceError(f"{where}: an FTP command cannot hold a line break", permanent=True)
    return text


def tls_failure(where: str, error: ssl.SSLError) -> SourceError:
    """A failed TLS handshake or record: an untrusted certificate is permanent."""
    permanent = isinstance(error, ssl.SSLCertVerificationError)
    return SourceError(f"{where}: TLS failed: {error}", permanent=permanent)
