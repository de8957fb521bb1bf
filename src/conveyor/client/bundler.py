"""Writing a Pacifica bundle as a stream: no temporary file, its exact length known up front.

Files go under ``data/``; ``metadata.txt`` comes last, since the hashes in it are computed
while the files stream. Every hash is a fixed-length hex string, so the metadata's length,
and therefore the whole bundle's, is known before the first byte is sent.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1024 * 1024
HASHTYPE = "sha256"
HEX_LENGTH = hashlib.new(HASHTYPE).digest_size * 2


class BundleSourceError(Exception):
    """A file to bundle cannot be read, or changed while it was read."""


@dataclass(frozen=True)
class BundleFile:
    """One file to bundle: where it is, and its path inside ``data/``."""

    path: Path
    relative: str
    size: int
    mtime: int


def collect(paths: list[Path]) -> list[BundleFile]:
    """Files named directly, and every file below folders named (by their folder's name)."""
    found: list[BundleFile] = []
    for path in paths:
        if path.is_dir():
            base = path.resolve()
            for root, dirs, files in os.walk(base):
                dirs.sort()
                for name in sorted(files):
                    full = Path(root, name)
                    rel = f"{base.name}/{full.relative_to(base).as_posix()}"
                    found.append(_bundle_file(full, rel))
        elif path.is_file():
            found.append(_bundle_file(path, path.name))
        else:
            raise BundleSourceError(f"{path} is not a file or folder")
    seen: set[str] = set()
    for item in found:
        if item.relative in seen:
            raise BundleSourceError(f"two inputs map to the same bundle path {item.relative!r}")
        seen.add(item.relative)
    return found


def _bundle_file(path: Path, relative: str) -> BundleFile:
    info = path.stat()
    return BundleFile(path, relative, info.st_size, int(info.st_mtime))


def _padding(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class BundleStream:
    """A bundle of ``files`` with metadata entries ``fields``, as an iterator of bytes."""

    def __init__(self, files: list[BundleFile], fields: list[dict[str, Any]]) -> None:
        self.files = files
        self.fields = fields
        self._now = int(datetime.now(UTC).timestamp())

    def _metadata(self, hashes: list[str]) -> bytes:
        entries = list(self.fields)
        for item, digest in zip(self.files, hashes, strict=True):
            subdir, _, name = item.relative.rpartition("/")
            mtime = datetime.fromtimestamp(item.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            entries.append(
                {
                    "destinationTable": "Files",
                    "name": name,
                    "subdir": subdir,
                    "size": item.size,
                    "hashtype": HASHTYPE,
                    "hashsum": digest,
                    "mimetype": mimetypes.guess_type(name)[0] or "application/octet-stream",
                    "mtime": mtime,
                    "ctime": mtime,
                }
            )
        return json.dumps(entries, ensure_ascii=False).encode()

    def length(self) -> int:
        """The exact number of bytes the stream will yield."""
        total = 0
        for item in self.files:
            total += len(_header(f"data/{item.relative}", item.size, item.mtime))
            total += item.size + _padding(item.size)
        metadata = self._metadata(["0" * HEX_LENGTH] * len(self.files))
        total += len(_header("metadata.txt", len(metadata), self._now))
        return total + len(metadata) + _padding(len(metadata)) + 2 * BLOCK

    def chunks(self, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The bundle's bytes; ``on_bytes`` hears how many file bytes went out."""
        hashes: list[str] = []
        for item in self.files:
            yield _header(f"data/{item.relative}", item.size, item.mtime)
            hasher = hashlib.new(HASHTYPE)
            sent = 0
            with item.path.open("rb") as handle:
                while sent < item.size:
                    chunk = handle.read(min(CHUNK, item.size - sent))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                    yield chunk
            if sent != item.size:
                raise BundleSourceError(f"{item.path} shrank from {item.size} to {sent} bytes")
            yield b"\0" * _padding(item.size)
            hashes.append(hasher.hexdigest())
        metadata = self._metadata(hashes)
        yield _header("metadata.txt", len(metadata), self._now)
        yield metadata + b"\0" * _padding(len(metadata))
        yield b"\0" * (2 * BLOCK)


def metadata_fields(
    project: str, instrument: str | None, key_values: list[tuple[str, str]], submitter: str | None
) -> list[dict[str, Any]]:
    """The transaction-level metadata entries of a bundle."""
    fields: list[dict[str, Any]] = [{"destinationTable": "Transactions.project", "value": project}]
    if instrument:
        fields.append({"destinationTable": "Transactions.instrument", "value": instrument})
    if submitter:
        fields.append({"destinationTable": "Transactions.submitter", "value": submitter})
    fields.extend(
        {"destinationTable": "TransactionKeyValue", "key": key, "value": value}
        for key, value in key_values
    )
    return fields
