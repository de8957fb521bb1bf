"""Paths inside a bundle: normalising Pacifica's subdir variants and refusing escapes."""

from __future__ import annotations

DATA_PREFIX = "data"


class UnsafePath(ValueError):
    """A path that would leave the bundle or the transaction."""


def relative_parts(path: str) -> list[str]:
    """The parts of a path inside a transaction, without empty and ``.`` parts.

    Backslashes count as ``/``; ``..`` and NUL bytes are refused with :class:`UnsafePath`.
    """
    parts = [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]
    for part in parts:
        if part == "..":
            raise UnsafePath(f"{path!r} contains '..'")
        if "\x00" in part:
            raise UnsafePath(f"{path!r} contains a NUL byte")
    return parts


def clip(path: str) -> list[str]:
    """The parts of a bundle path without empty parts and without the leading ``data``.

    ``data/a/b/``, ``data//a/b`` and ``a/b`` all clip to ``["a", "b"]``, as Pacifica does.
    """
    parts = relative_parts(path)
    return parts[1:] if parts and parts[0] == DATA_PREFIX else parts


def file_key(subdir: str, name: str) -> str:
    """The normalised ``subdir/name`` that a metadata entry and a tar member share."""
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise UnsafePath(f"file name {name!r} is not a plain name")
    parts = clip(subdir)
    return "/".join([*parts, name])


def member_key(member_name: str) -> str:
    """The normalised key of a tar member under ``data/``."""
    if member_name.startswith("/"):
        raise UnsafePath(f"{member_name!r} is an absolute path")
    parts = [part for part in member_name.split("/") if part not in ("", ".")]
    if not parts or parts[0] != DATA_PREFIX:
        raise UnsafePath(f"{member_name!r} is outside data/")
    return "/".join(clip(member_name))
