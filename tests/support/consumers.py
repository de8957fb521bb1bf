"""Consumer packages for tests: zips written member by member, with modes and links."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path


def make_zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    """A zip of ``members`` (name to bytes); ``links`` are stored as symbolic links."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            mode = stat.S_IFLNK | 0o777 if name in links else stat.S_IFREG | 0o644
            if name.endswith("run.bin"):
                mode = stat.S_IFREG | 0o755
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path
