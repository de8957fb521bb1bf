"""Checks that a downloaded file is whole: archive structure and checksum sidecars.

BioMAJ shelled out to ``gunzip -t``, ``tar tf`` and ``unzip -t`` with the file name pasted
into a shell string, and tested a plain ``.bz2`` with ``tar`` (which always fails). Here
every format is read through in Python, streaming, so a truncated or corrupt file is caught
by its own checksums (gzip CRC-32, bzip2 and xz block checks, zip member CRCs) whatever its
name holds.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from conveyor.mirror.errors import MirrorError

CHUNK = 1024 * 1024
TAR_SUFFIXES = {
    ".tar": "r|",
    ".tar.gz": "r|gz",
    ".tgz": "r|gz",
    ".tar.bz2": "r|bz2",
    ".tbz2": "r|bz2",
    ".tar.xz": "r|xz",
    ".txz": "r|xz",
}
STREAM_OPENERS: dict[str, Callable[..., Any]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
}
ARCHIVE_SUFFIXES = (*TAR_SUFFIXES, ".zip", *STREAM_OPENERS)
DECODE_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    tarfile.TarError,
    zipfile.BadZipFile,
    ValueError,
)


class CorruptFile(MirrorError):
    """A downloaded file failed an integrity check; the message says which and why."""


def check_archive(path: Path, name: str | None = None) -> None:
    """Read an archive or compressed file through, by the suffix of ``name`` (or ``path``).

    Files of other types pass untouched. Raises :class:`CorruptFile`.
    """
    label = (name or path.name).lower()
    if not label.endswith(ARCHIVE_SUFFIXES):
        return
    if path.stat().st_size == 0:
        # Python reads an empty .gz as an empty stream; gunzip, rightly, does not.
        raise CorruptFile(f"{name or path.name} is empty, which no archive of its type is")
    try:
        for suffix, mode in TAR_SUFFIXES.items():
            if label.endswith(suffix):
                _read_tar(path, mode)
                return
        if label.endswith(".zip"):
            _read_zip(path)
            return
        for suffix, opener in STREAM_OPENERS.items():
            if label.endswith(suffix):
                with opener(path, "rb") as stream:
                    _drain(stream)
                return
    except DECODE_ERRORS as error:
        raise CorruptFile(f"{name or path.name} is not a valid archive: {error}") from None


def _drain(stream: IO[bytes]) -> None:
    while stream.read(CHUNK):
        pass


def _read_tar(path: Path, mode: str) -> None:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]
        for member in archive:
            if member.isfile():
                content = archive.extractfile(member)
                if content is not None:
                    _drain(content)


def _read_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad!r} has a bad CRC")


def sidecar_digest(text: str, algorithm: str, sidecar: str) -> str:
    """The digest a ``.md5`` / ``.sha256`` sidecar states: its first token, checked for form."""
    token = text.split(maxsplit=1)[0].lower() if text.strip() else ""
    length = {"md5": 32, "sha256": 64}[algorithm]
    if len(token) != length or any(c not in "0123456789abcdef" for c in token):
        raise CorruptFile(f"{sidecar} does not start with a {algorithm} digest")
    return token
