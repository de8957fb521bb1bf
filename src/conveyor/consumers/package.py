"""A ``consumer.zip``: checked before anything of it is written, then unpacked safely.

The published layout: ``__main__.py`` (run as ``python __main__.py SRC DST``), and optionally
``requirements.txt``, ``init.sh`` and ``jsonpath2.txt`` (the filter, in Pacifica's jsonpath2
dialect), all at the top of the archive or all inside one top folder (what zipping a folder
gives). A member that would land outside the folder (``..``, an absolute path, a drive),
a link, a duplicate, or an archive too large unpacked or with too many members is refused
with the reason; so is one that does not read as a zip.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from conveyor.ingest.paths import UnsafePath, relative_parts

ENTRY_POINT = "__main__.py"
REQUIREMENTS = "requirements.txt"
INIT_SCRIPT = "init.sh"
FILTER_FILE = "jsonpath2.txt"
READ_CHUNK = 1024 * 1024


class PackageError(ValueError):
    """The consumer package cannot be used; the message says why."""


@dataclass(frozen=True)
class PackageLimits:
    """How large a consumer package may be."""

    max_members: int = 10_000
    max_unpacked_bytes: int = 512 * 1024 * 1024
    max_ratio: float = 200.0


@dataclass(frozen=True)
class ConsumerPackage:
    """A checked ``consumer.zip``: where it is, its digest, and what it declares."""

    path: Path
    sha256: str
    # The folder inside the archive that holds __main__.py ("" for the top).
    root: str
    members: tuple[str, ...]
    filter_text: str | None
    has_requirements: bool
    has_init: bool

    @property
    def version(self) -> str:
        """The package's version: the first 12 hex digits of its sha256."""
        return self.sha256[:12]


def read_package(path: Path, limits: PackageLimits | None = None) -> ConsumerPackage:
    """Check ``path`` as a consumer package; :class:`PackageError` when it is not one."""
    chosen = limits or PackageLimits()
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            members = _checked_members(infos, chosen)
            root = _root_of(members)
            filter_text = _read_text(archive, root, FILTER_FILE)
    except zipfile.BadZipFile as error:
        raise PackageError(f"{path.name} is not a zip archive: {error}") from None
    except OSError as error:
        raise PackageError(f"{path.name} cannot be read: {error}") from None
    names = set(members)
    return ConsumerPackage(
        path=path,
        sha256=_sha256(path),
        root=root,
        members=tuple(members),
        filter_text=filter_text.strip() if filter_text is not None else None,
        has_requirements=_join(root, REQUIREMENTS) in names,
        has_init=_join(root, INIT_SCRIPT) in names,
    )


def unpack(package: ConsumerPackage, destination: Path) -> Path:
    """Write the package's files under ``destination`` (made anew); the folder of __main__.py.

    Files are written into a temporary sibling folder that is renamed into place at the
    end, so a half-unpacked consumer is never seen.
    """
    staging = destination.with_name(destination.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(package.path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            target = staging.joinpath(*relative_parts(info.filename))
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, READ_CHUNK)
            if info.filename.endswith(".sh") or _mode(info) & 0o111:
                target.chmod(0o755)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination.joinpath(*PurePosixPath(package.root).parts)


def _checked_members(infos: list[zipfile.ZipInfo], limits: PackageLimits) -> list[str]:
    if len(infos) > limits.max_members:
        raise PackageError(f"the package has {len(infos)} members; at most {limits.max_members}")
    names: list[str] = []
    seen: set[str] = set()
    unpacked = 0
    for info in infos:
        try:
            parts = relative_parts(info.filename)
        except UnsafePath as error:
            raise PackageError(f"member {info.filename!r} is refused: {error}") from None
        if info.filename.startswith(("/", "\\")) or (parts and ":" in parts[0]):
            raise PackageError(f"member {info.filename!r} is refused: an absolute path")
        if stat.S_ISLNK(_mode(info)):
            raise PackageError(f"member {info.filename!r} is refused: a symbolic link")
        if info.is_dir() or not parts:
            continue
        name = "/".join(parts)
        if name in seen:
            raise PackageError(f"member {name!r} appears twice")
        seen.add(name)
        names.append(name)
        unpacked += info.file_size
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise PackageError(f"member {name!r} unpacks {info.file_size} bytes: a zip bomb?")
    if unpacked > limits.max_unpacked_bytes:
        raise PackageError(
            f"the package unpacks to {unpacked} bytes; at most {limits.max_unpacked_bytes}"
        )
    return names


def _root_of(names: list[str]) -> str:
    """The folder holding __main__.py: the top, or one top folder holding everything."""
    if ENTRY_POINT in names:
        return ""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1:
        top = next(iter(tops))
        if f"{top}/{ENTRY_POINT}" in names:
            return top
    raise PackageError(f"the package has no {ENTRY_POINT} at its top (nor in one top folder)")


def _read_text(archive: zipfile.ZipFile, root: str, name: str) -> str | None:
    try:
        with archive.open(_join(root, name)) as member:
            data = member.read(64 * 1024 + 1)
    except KeyError:
        return None
    if len(data) > 64 * 1024:
        raise PackageError(f"{name} is larger than 64 KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{name} is not UTF-8 text") from None


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def _mode(info: zipfile.ZipInfo) -> int:
    """The Unix mode bits a zip member was stored with (0 when made elsewhere)."""
    return (info.external_attr >> 16) & 0xFFFF


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
