"""Paths inside a bundle: relative, normalised, and never able to leave it."""

from __future__ import annotations

from conveyor.carts.layout import MANIFEST_NAME

MAX_PATH_BYTES = 4096


class BadBundlePath(ValueError):
    """A requested path that could escape the bundle or is not a file path."""


def bundle_path(path: str) -> str:
    """``path`` as it will stand in the bundle, or :class:`BadBundlePath` saying why not."""
    if not path or not path.strip():
        raise BadBundlePath("a path inside the bundle is empty")
    if "\x00" in path:
        raise BadBundlePath(f"path {path!r} contains a NUL byte")
    if "\\" in path:
        raise BadBundlePath(f"path {path!r} contains a backslash; use '/'")
    if path.startswith("/"):
        raise BadBundlePath(f"path {path!r} is absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise BadBundlePath(f"path {path!r} contains '..'")
    if not parts:
        raise BadBundlePath(f"path {path!r} names no file")
    normalised = "/".join(parts)
    if normalised == MANIFEST_NAME:
        raise BadBundlePath(f"path {normalised!r} is reserved for the bundle's manifest")
    if len(normalised.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadBundlePath(f"path {normalised[:60]!r}… is longer than {MAX_PATH_BYTES} bytes")
    return normalised
