"""SFTP with paramiko: known-hosts checks as BioMAJ's ``ssh_*`` options say, resume by offset."""

from __future__ import annotations

import errno
import socket
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import paramiko

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.sources.base import READ_CHUNK, Source, register
from conveyor.mirror.spec import SourceSpec

T = TypeVar("T")
MISSING = (errno.ENOENT, errno.ENOTDIR)
# Read requests in flight (32 KiB each): about 2 MiB buffered a transfer at most.
PREFETCH_REQUESTS = 64


class _AddHostKey(paramiko.MissingHostKeyPolicy):
    """Accept a host seen for the first time and append its key to the known-hosts file.

    Only a missing key is added; a changed key is refused by paramiko before any policy runs.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _AcceptHostKey(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time for this connection only.

    Not paramiko's AutoAddPolicy: with a known-hosts file loaded, that one writes it.
    """

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)


class _RejectHostKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise SourceError(
            f"the host key of {hostname} is not in the known-hosts file and ssh_new_host is "
            "reject (set it to accept or add to trust a new host)",
            permanent=True,
        )


@register
class SftpSource(Source):
    """One SSH session and SFTP channel, opened on first use and again after a failure."""

    protocols = ("sftp",)

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """``listdir_iter``: attributes arrive in batches, never the whole folder at once."""
        path = self.remote_path(folder)
        items = self._call(lambda sftp: sftp.listdir_iter(path), path)
        try:
            for item in items:
                yield _entry(item.filename, item)
        except (OSError, paramiko.SSHException) as error:
            raise self._failure(error, path) from None

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """Reads from ``offset``, with paramiko's pipelined prefetch."""
        full = self.remote_path(path)
        handle = self._call(lambda sftp: sftp.open(full, "rb"), full)
        done = False
        try:
            with handle:
                handle.seek(offset)
                # Bounded: all requests at once would buffer the whole file in memory.
                handle.prefetch(max_concurrent_requests=PREFETCH_REQUESTS)
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
            done = True
        except (OSError, paramiko.SSHException) as error:
            raise self._failure(error, full) from None
        finally:
            if not done:
                # Outstanding prefetch requests would answer into the next read.
                self.close()

    def stat(self, path: str) -> RemoteEntry:
        """``stat`` of the file."""
        full = self.remote_path(path)
        info = self._call(lambda sftp: sftp.stat(full), full)
        return _entry(full.rsplit("/", 1)[-1], info)

    def close(self) -> None:
        """Close the SFTP channel and the SSH session."""
        ssh, self._ssh, self._sftp = self._ssh, None, None
        if ssh is not None:
            ssh.close()

    def _client(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        spec = self.spec
        ssh = paramiko.SSHClient()
        known = Path(spec.options.ssh_hosts_file).expanduser()
        if known.is_file():
            ssh.load_host_keys(str(known))
        policy: paramiko.MissingHostKeyPolicy = {
            "reject": _RejectHostKey(),
            "accept": _AcceptHostKey(),
            "add": _AddHostKey(known),
        }[spec.options.ssh_new_host]
        ssh.set_missing_host_key_policy(policy)
        user = spec.credentials.user if spec.credentials else None
        password = spec.credentials.secret() if spec.credentials else None
        try:
            ssh.connect(
                spec.host,
                spec.port(22),
                username=user,
                password=password,
                timeout=spec.connect_timeout,
                banner_timeout=spec.connect_timeout,
                auth_timeout=spec.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            transport = ssh.get_transport()
            if transport is not None and spec.options.tcp_keepalive:
                transport.set_keepalive(spec.options.tcp_keepalive)
            sftp = ssh.open_sftp()
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(spec.stall_timeout)
        except BaseException:
            ssh.close()
            raise
        self._ssh, self._sftp = ssh, sftp
        return sftp

    def _call(self, operation: Callable[[paramiko.SFTPClient], T], path: str) -> T:
        try:
            return operation(self._client())
        except (OSError, paramiko.SSHException) as error:
            raise self._failure(error, path) from None

    def _failure(self, error: BaseException, path: str) -> SourceError:
        where = f"sftp://{self.spec.host}{path}"
        if isinstance(error, paramiko.BadHostKeyException):
            self.close()
            return SourceError(
                f"the host key of {self.spec.host} does not match the known-hosts file: refused",
                permanent=True,
            )
        if isinstance(error, paramiko.AuthenticationException):
            self.close()
            return SourceError(f"{where}: authentication failed", permanent=True)
        if isinstance(error, FileNotFoundError) or getattr(error, "errno", None) in MISSING:
            return SourceError(f"{where}: no such file or folder", permanent=True)
        if isinstance(error, PermissionError):
            return SourceError(f"{where}: permission denied", permanent=True)
        self.close()
        if isinstance(error, TimeoutError | socket.timeout):
            return SourceError(f"{where}: stalled, no data for {self.spec.stall_timeout:g} s")
        return SourceError(f"{where}: {error}")


def _entry(name: str, info: paramiko.SFTPAttributes) -> RemoteEntry:
    mode = info.st_mode or 0
    is_dir = stat.S_ISDIR(mode)
    mtime = datetime.fromtimestamp(info.st_mtime, UTC) if info.st_mtime is not None else None
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir else info.st_size,
        mtime=mtime,
        fingerprint=f"{info.st_size}-{info.st_mtime}",
        is_link=stat.S_ISLNK(mode),
    )
