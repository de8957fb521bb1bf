"""A folder archive's layout: a new archive gets its 256 blob folders when it is opened."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from conveyor.storage import ArchiveError, open_archive


def _adopt_one(root: Path, work: Path, data: bytes) -> Path:
    """Adopt ``data`` from a finished file in ``work``; where the blob landed."""
    work.mkdir(exist_ok=True)
    finished = work / "finished.part"
    finished.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    open_archive(root.as_uri()).adopt(finished, {"sha256": sha256, "crc32": "00000000"})
    return root / "blobs" / sha256[:2] / sha256


def test_a_new_folder_archive_has_every_blob_folder(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    open_archive(root.as_uri())
    folders = sorted(path.name for path in (root / "blobs").iterdir())
    assert folders == [f"{prefix:02x}" for prefix in range(256)]
    assert all((root / "blobs" / name).is_dir() for name in folders)


def test_an_existing_archive_is_left_as_it_is_and_makes_a_missing_folder_on_demand(
    tmp_path: Path,
) -> None:
    root = tmp_path / "archive"
    data = b"a blob whose folder is gone\n"
    prefix = hashlib.sha256(data).hexdigest()[:2]
    open_archive(root.as_uri())
    (root / "blobs" / prefix).rmdir()
    (root / "blobs" / "00" if prefix != "00" else root / "blobs" / "01").rmdir()

    blob = _adopt_one(root, tmp_path / "work", data)

    assert blob.read_bytes() == data
    assert len(list((root / "blobs").iterdir())) == 255, "opening it made folders again"


def test_an_archive_that_cannot_be_written_opens_and_its_first_write_says_why(
    tmp_path: Path,
) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    # An immutable folder refuses new entries even to root (the tests may run as root).
    if subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        archive = open_archive(root.as_uri())
        with pytest.raises(ArchiveError, match="cannot write to the archive"):
            archive.put_bytes(b"refused\n")
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)
    assert list(root.iterdir()) == []
