"""The interface every remote source implements, and the registry that picks one by protocol.

A source holds one connection (an FTP control connection, an SSH session, an HTTP client)
and reuses it for every listing and transfer; a mirror that downloads N files at once opens
N sources. A protocol may also offer an :class:`AsyncReader`: one object for a whole run,
whose transfers all share one event loop and a pool of N connections (no thread per
transfer). Paths are relative to the source's ``remote_dir`` and ``/``-separated.
"""

from __future__ import annotations

import importlib
import posixpath
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import DefinitionError, SourceError
from conveyor.mirror.sources.parts import PartWriter
from conveyor.mirror.spec import SourceSpec

READ_CHUNK = 256 * 1024


class Source(ABC):
    """Lists folders and reads files of one remote."""

    protocols: ClassVar[tuple[str, ...]] = ()
    # The event-loop reader of the same protocol, when there is one.
    async_reader: ClassVar[type[AsyncReader] | None] = None

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    @abstractmethod
    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """The entries of ``folder``, named relative to it, as the remote sends them.

        A folder that does not exist raises a permanent :class:`SourceError`.
        """

    @abstractmethod
    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """The bytes of ``path`` from ``offset`` to its end.

        The stream may end early when the connection is cut: the caller compares what it
        got with the expected size and resumes from there. A transfer that moves no byte
        for ``spec.stall_timeout`` seconds raises a transient :class:`SourceError`.
        """

    def read_into(self, path: str, part: Path, offset: int) -> Iterator[bytes | memoryview]:
        """Append the bytes of ``path`` from ``offset`` to ``part`` (made, with its folder,
        if missing), yielding each piece.

        Sources whose tools write files themselves (rsync) write into ``part`` directly and
        yield what landed, so a transfer is never copied twice; sources reading a socket of
        their own receive into the part's buffer (:meth:`PartWriter.receive`) and yield
        views that are valid until the next piece is asked for.
        """
        with PartWriter(part, offset) as out:
            for chunk in self.read(path, offset):
                out.write(chunk)
                yield chunk

    @abstractmethod
    def stat(self, path: str) -> RemoteEntry:
        """Size and modification time of one file (HEAD, SIZE and MDTM, stat)."""

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def remote_path(self, path: str) -> str:
        """The absolute remote path of ``path`` (relative to ``remote_dir``), refusing escapes."""
        return join_remote(self.spec.remote_dir, path)


class AsyncReader(ABC):
    """Reads files of one remote from an event loop, for every transfer of a run at once.

    It holds up to ``connections`` connections and shares them among the transfers on its
    loop; it is opened and closed on that loop.
    """

    def __init__(self, spec: SourceSpec, connections: int) -> None:
        self.spec = spec
        self.connections = connections

    @classmethod
    def serves(cls, spec: SourceSpec) -> bool:
        """Whether this reader handles everything ``spec`` asks for (else a source must)."""
        return True

    @abstractmethod
    def read(self, path: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The bytes of ``path`` from ``offset`` on, with the contract of :meth:`Source.read`."""

    async def close(self) -> None:
        """Release the connections."""

    def remote_path(self, path: str) -> str:
        """The absolute remote path of ``path`` (relative to ``remote_dir``), refusing escapes."""
        return join_remote(self.spec.remote_dir, path)


def join_remote(root: str, path: str) -> str:
    """``root/path`` with ``//`` collapsed; ``..`` segments and absolute paths are refused."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"path {path!r} climbs out of the mirrored folder", permanent=True)
    return posixpath.join("/" + root.strip("/"), *parts) if parts else "/" + root.strip("/")


_REGISTRY: dict[str, type[Source]] = {}

# The built-in module serving each protocol, imported on first use: a mirror loads only its
# own client library (importing asyncssh took a fresh server's first FTP run ~0.4 s).
BUILTIN_MODULES = {
    **dict.fromkeys(("ftp", "ftps", "directftp", "directftps"), "ftp"),
    **dict.fromkeys(("http", "https", "directhttp", "directhttps"), "http"),
    "local": "local",
    "rsync": "rsync",
    "s3": "objects",
    "gs": "objects",
    "sftp": "sftp",
}


def register(cls: type[Source]) -> type[Source]:
    """Register a source class for each of its protocols (a class decorator)."""
    for protocol in cls.protocols:
        _REGISTRY[protocol] = cls
    return cls


def open_source(spec: SourceSpec) -> Source:
    """A new source for ``spec.protocol``."""
    return source_class(spec.protocol)(spec)


def open_async_reader(spec: SourceSpec, connections: int) -> AsyncReader | None:
    """A new event-loop reader for ``spec.protocol``, or ``None`` when it has none."""
    reader = source_class(spec.protocol).async_reader
    return reader(spec, connections) if reader is not None and offers_async_reader(spec) else None


def offers_async_reader(spec: SourceSpec) -> bool:
    """Whether ``spec.protocol`` has an event-loop reader that serves ``spec``."""
    reader = source_class(spec.protocol).async_reader
    return reader is not None and reader.serves(spec)


def source_class(protocol: str) -> type[Source]:
    """The source class registered for ``protocol`` (its built-in module loaded if need be)."""
    cls = _REGISTRY.get(protocol)
    if cls is None and protocol in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{BUILTIN_MODULES[protocol]}")
        cls = _REGISTRY.get(protocol)
    if cls is None:
        known = ", ".join(sorted({*_REGISTRY, *BUILTIN_MODULES}))
        raise DefinitionError(f"no source handles protocol {protocol!r} (known: {known})")
    return cls
