"""Archive checks in Python: whole files pass, truncated or corrupt ones say why."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from conveyor.mirror.integrity import CorruptFile, check_archive, sidecar_digest

# Half random, so the compressed forms are long enough to corrupt in their middle.
PAYLOAD = b"ACGT" * 25_000 + random.Random(7).randbytes(100_000)


def _tar(mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        info = tarfile.TarInfo("seq.fasta")
        info.size = len(PAYLOAD)
        archive.addfile(info, io.BytesIO(PAYLOAD))
    return buffer.getvalue()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("seq.fasta", PAYLOAD)
    return buffer.getvalue()


SAMPLES = {
    "x.gz": lambda: gzip.compress(PAYLOAD),
    "x.bz2": lambda: bz2.compress(PAYLOAD),
    "x.xz": lambda: lzma.compress(PAYLOAD),
    "x.tar": lambda: _tar("w"),
    "x.tar.gz": lambda: _tar("w:gz"),
    "x.tgz": lambda: _tar("w:gz"),
    "x.tar.bz2": lambda: _tar("w:bz2"),
    "x.tar.xz": lambda: _tar("w:xz"),
    "x.zip": _zip,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_whole_archives_pass(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(SAMPLES[name]())
    check_archive(path)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_archives_fail(tmp_path: Path, name: str) -> None:
    data = SAMPLES[name]()
    path = tmp_path / name
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptFile, match=name):
        check_archive(path)


@pytest.mark.parametrize("name", ["x.gz", "x.bz2", "x.xz", "x.zip"])
def test_a_flipped_byte_fails(tmp_path: Path, name: str) -> None:
    data = bytearray(SAMPLES[name]())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / name
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile):
        check_archive(path)


def test_an_empty_gz_fails_as_in_biomaj(tmp_path: Path) -> None:
    path = tmp_path / "invalid.gz"
    path.write_bytes(b"")
    with pytest.raises(CorruptFile):
        check_archive(path)


def test_other_files_and_the_saved_name_decide(tmp_path: Path) -> None:
    path = tmp_path / "download.part"
    path.write_bytes(b"not an archive")
    check_archive(path)
    with pytest.raises(CorruptFile, match=r"real\.gz"):
        check_archive(path, "real.gz")


def test_names_with_shell_characters_are_just_names(tmp_path: Path) -> None:
    path = tmp_path / "a b; rm -rf $HOME .gz"
    path.write_bytes(gzip.compress(PAYLOAD))
    check_archive(path)


def test_sidecar_digest() -> None:
    digest = "d41d8cd98f00b204e9800998ecf8427e"
    assert sidecar_digest(f"{digest.upper()}  file.gz\n", "md5", "file.gz.md5") == digest
    with pytest.raises(CorruptFile, match="md5 digest"):
        sidecar_digest("nothing here", "md5", "file.gz.md5")
    with pytest.raises(CorruptFile):
        sidecar_digest("", "sha256", "file.gz.sha256")
