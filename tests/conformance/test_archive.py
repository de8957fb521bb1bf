"""One conformance suite for the archive, run identically against every storage backend.

Each test is parametrized over ``file`` (a tmp folder), ``memory`` (a fresh memory:// root),
``s3`` (moto's S3 server) and ``gs`` (the GCS emulator); the last two are integration tests.
"""

from __future__ import annotations

import hashlib
import random
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from conveyor.storage import Archive, ArchiveError, BlobNotFound, open_archive
from conveyor.storage.archive import blob_key

MiB = 1024 * 1024
BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("memory", id="memory"),
    pytest.param("s3", id="s3", marks=pytest.mark.integration),
    pytest.param("gs", id="gs", marks=pytest.mark.integration),
]


class WriteAborted(Exception):
    """Raised by a test in the middle of a write."""


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that do not compress or repeat."""
    return random.Random(seed).randbytes(size)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=BACKENDS)
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty archive's URL on each backend in turn."""
    backend = request.param
    if backend == "file":
        yield (tmp_path / "archive").as_uri()
    elif backend == "memory":
        root = f"/conveyor-test-{uuid.uuid4().hex}"
        yield f"memory://{root}"
        memory = fsspec.filesystem("memory")
        if memory.exists(root):
            memory.rm(root, recursive=True)
    elif backend == "s3":
        yield request.getfixturevalue("s3_archive_url")
    else:
        yield request.getfixturevalue("gcs_archive_url")


@pytest.fixture
def archive(archive_url: str) -> Archive:
    return open_archive(archive_url)


def tmp_keys(archive: Archive) -> list[str]:
    return list(archive.store.keys("tmp"))


def read_all(archive: Archive, sha256: str) -> bytes:
    with archive.open(sha256) as handle:
        return handle.read()


# --- writing and reading back -------------------------------------------------------------


def test_adopt_takes_a_finished_file(archive: Archive, tmp_path: Path) -> None:
    data = payload(200_000, seed=9)
    hashes = {"sha256": sha256_of(data), "crc32": f"{zlib.crc32(data):08x}"}
    first = tmp_path / "first.bin"
    first.write_bytes(data)
    stored = archive.adopt(first, hashes)
    assert (stored.sha256, stored.size, stored.created) == (sha256_of(data), len(data), True)
    assert not first.exists()
    assert read_all(archive, stored.sha256) == data
    again = tmp_path / "again.bin"
    again.write_bytes(data)
    assert archive.adopt(again, hashes).created is False
    assert not again.exists()
    assert tmp_keys(archive) == []


def test_put_then_read_back(archive: Archive, archive_url: str) -> None:
    data = payload(300_000, seed=1)
    chunks = [data[:1], data[1:100_000], data[100_000:]]
    stored = archive.put_chunks(chunks)

    assert stored.sha256 == sha256_of(data)
    assert stored.hashes == {"sha256": sha256_of(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert stored.size == len(data)
    assert stored.created is True
    assert archive.exists(stored.sha256)
    assert archive.size(stored.sha256) == len(data)
    assert read_all(archive, stored.sha256) == data
    assert b"".join(archive.read_range(stored.sha256)) == data
    # The blob is published under its key in blobs/, named by its sha256.
    key = blob_key(stored.sha256)
    assert key.startswith("blobs/")
    assert key.endswith("/" + stored.sha256)
    assert archive.store.size(key) == len(data)
    assert list(archive.blobs()) == [stored.sha256]
    assert tmp_keys(archive) == []
    # A second handle on the same URL sees the blob.
    assert read_all(open_archive(archive_url), stored.sha256) == data


def test_extra_hashes(archive: Archive) -> None:
    data = payload(70_000, seed=2)
    stored = archive.put_chunks([data[:5000], data[5000:]], extra_hashes=["sha1", "md5"])

    assert stored.hashes == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "crc32": f"{zlib.crc32(data):08x}",
        "sha1": hashlib.sha1(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    assert read_all(archive, stored.sha256) == data


def test_empty_blob(archive: Archive) -> None:
    stored = archive.put_bytes(b"")

    assert stored.sha256 == sha256_of(b"")
    assert stored.size == 0
    assert archive.exists(stored.sha256)
    assert archive.size(stored.sha256) == 0
    assert read_all(archive, stored.sha256) == b""
    assert b"".join(archive.read_range(stored.sha256)) == b""
    assert list(archive.blobs()) == [stored.sha256]


def test_identical_content_is_stored_once(archive: Archive) -> None:
    data = payload(50_000, seed=3)
    first = archive.put_bytes(data)
    second = archive.put_chunks([data[:10], data[10:]])
    other = archive.put_bytes(b"something else")

    assert first.created is True
    assert second.created is False
    assert second.sha256 == first.sha256
    assert second.size == first.size
    assert sorted(archive.blobs()) == sorted([first.sha256, other.sha256])
    assert tmp_keys(archive) == []
    assert read_all(archive, first.sha256) == data


def test_failed_write_leaves_nothing(archive: Archive) -> None:
    data = payload(40_000, seed=4)
    writer = archive.writer(extra_hashes=["md5"])

    def write_then_fail() -> None:
        with writer:
            writer.write(data[:20_000])
            writer.write(data[20_000:])
            raise WriteAborted

    with pytest.raises(WriteAborted):
        write_then_fail()

    assert writer.result is None
    assert not archive.exists(sha256_of(data))
    assert not archive.exists(sha256_of(data[:20_000]))
    assert list(archive.blobs()) == []
    assert tmp_keys(archive) == []


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 10_000),
        (1, None),
        (10, 20),
        (4095, 4097),
        (9_999, None),
        (10_000, None),
        (10_000, 10_000),
        (5_000, 5_000),
        (20, 10),
        (9_990, 20_000),
        (12_000, None),
    ],
)
def test_read_range(archive: Archive, start: int, end: int | None) -> None:
    data = payload(10_000, seed=5)
    stored = archive.put_bytes(data)

    chunks = list(archive.read_range(stored.sha256, start, end, chunk_size=1000))

    assert b"".join(chunks) == data[start:end]
    assert all(0 < len(chunk) <= 1000 for chunk in chunks)


def test_open_missing_blob(archive: Archive) -> None:
    missing = sha256_of(b"never stored")

    assert not archive.exists(missing)
    assert archive.size(missing) is None
    with pytest.raises(BlobNotFound, match=missing):
        archive.open(missing)
    with pytest.raises(BlobNotFound):
        list(archive.read_range(missing, 0, 10))


def test_delete(archive: Archive) -> None:
    kept = archive.put_bytes(b"kept")
    gone = archive.put_bytes(b"gone")

    archive.delete(gone.sha256)

    assert not archive.exists(gone.sha256)
    assert archive.exists(kept.sha256)
    assert list(archive.blobs()) == [kept.sha256]
    with pytest.raises(BlobNotFound):
        archive.open(gone.sha256)
    archive.delete(gone.sha256)  # deleting a missing blob is not an error
    # Once deleted, the same content is written afresh.
    assert archive.put_bytes(b"gone").created is True


def test_large_blob_round_trips(archive: Archive) -> None:
    chunk = payload(MiB, seed=6)
    count = 20
    expected = hashlib.sha256()
    for index in range(count):
        expected.update(index.to_bytes(4, "big") + chunk[4:])

    stored = archive.put_chunks(index.to_bytes(4, "big") + chunk[4:] for index in range(count))

    assert stored.size == count * MiB
    assert stored.sha256 == expected.hexdigest()
    assert archive.size(stored.sha256) == count * MiB
    reread = hashlib.sha256()
    total = 0
    for piece in archive.read_range(stored.sha256):
        reread.update(piece)
        total += len(piece)
    assert total == count * MiB
    assert reread.hexdigest() == stored.sha256
    tail = b"".join(archive.read_range(stored.sha256, 19 * MiB - 2, 19 * MiB + 6))
    assert tail == chunk[-2:] + (19).to_bytes(4, "big") + chunk[4:6]
    assert tmp_keys(archive) == []


BAD_NAMES = [
    "not-a-digest",
    "",
    "A" * 64,
    "0" * 63,
    "0" * 65,
    "g" * 64,
    "../" + "0" * 61,
    sha256_of(b"x") + "\n",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_blob_key_rejects_bad_names(name: str) -> None:
    with pytest.raises(ArchiveError, match="not a sha256"):
        blob_key(name)


def test_blob_key_accepts_a_digest() -> None:
    good = "ab" + "0" * 62
    assert blob_key(good).startswith("blobs/")
    assert blob_key(good).endswith("/" + good)


def test_archive_rejects_bad_names(archive: Archive) -> None:
    for name in BAD_NAMES:
        with pytest.raises(ArchiveError, match="not a sha256"):
            archive.exists(name)
        with pytest.raises(ArchiveError, match="not a sha256"):
            archive.open(name)
        with pytest.raises(ArchiveError, match="not a sha256"):
            archive.delete(name)


def test_ping(archive: Archive) -> None:
    archive.ping()


@pytest.mark.parametrize("url", ["ftp://example.org/archive", "nope:///tmp/archive"])
def test_unknown_scheme(url: str) -> None:
    with pytest.raises(ArchiveError) as caught:
        open_archive(url)

    message = str(caught.value)
    assert "unknown scheme" in message
    assert url in message
    for scheme in ("file", "memory", "s3", "gs"):
        assert scheme in message


def test_memory_url_with_an_empty_authority_stays_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    archive = open_archive(f"memory:///conveyor-test-{uuid.uuid4().hex}")
    archive.put_bytes(b"kept in memory")
    assert list(tmp_path.iterdir()) == []
