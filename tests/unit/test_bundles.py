"""The streaming bundle writer (client) and reader (server), against each other and GNU tar."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from conveyor.client.bundler import BundleSourceError, BundleStream, collect, metadata_fields
from conveyor.ingest.bundle import BundleError, BundleLimits, BundleReader, StagedMember
from conveyor.storage.archive import Archive, open_archive
from tests.support.bundles import GOOD_MEMBERS, good_metadata, make_tar
from tests.support.services import require_command

LIMITS = BundleLimits(max_members=1000, max_metadata_bytes=1 << 20, max_name_bytes=4096)


def memory_archive() -> Archive:
    return open_archive(f"memory://bundles-{uuid.uuid4().hex}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "run42"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "image.bin").write_bytes(bytes(range(256)) * 4000)
    (root / "notes.txt").write_text("hello\n")
    (root / "raw" / "données ü.csv").write_text("a,b\n1,2\n")
    (root / "empty.dat").write_bytes(b"")
    return root


def bundle_bytes(tree: Path) -> tuple[BundleStream, bytes]:
    stream = BundleStream(collect([tree]), metadata_fields("p1", "i1", [("k", "v")], None))
    return stream, b"".join(stream.chunks())


def test_stream_length_is_exact_and_metadata_comes_last(tree: Path) -> None:
    stream, data = bundle_bytes(tree)
    assert len(data) == stream.length()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert names[-1] == "metadata.txt"
        document = tar.extractfile("metadata.txt").read()  # type: ignore[union-attr]
        entries = json.loads(document)
        files = {
            f"{e['subdir']}/{e['name']}": e for e in entries if e["destinationTable"] == "Files"
        }
        for name, entry in files.items():
            member = tar.extractfile(f"data/{name}").read()  # type: ignore[union-attr]
            assert hashlib.sha256(member).hexdigest() == entry["hashsum"]
    assert set(files) == {
        "run42/notes.txt",
        "run42/empty.dat",
        "run42/raw/image.bin",
        "run42/raw/données ü.csv",
    }


def test_gnu_tar_reads_the_stream(tree: Path, tmp_path: Path) -> None:
    tar = require_command("tar")
    _, data = bundle_bytes(tree)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar, "-xf", "-", "-C", str(out)], input=data, check=True)
    assert (out / "data/run42/raw/image.bin").read_bytes() == (tree / "raw/image.bin").read_bytes()
    assert (out / "data/run42/raw/données ü.csv").exists()


def test_reader_stores_every_file_once_with_both_hashes(tree: Path) -> None:
    _, data = bundle_bytes(tree)
    archive = memory_archive()
    staged: list[StagedMember] = []
    summary = BundleReader(archive, LIMITS, staged.append).read(io.BytesIO(data))
    assert summary.files == 4
    assert summary.metadata is not None
    for member in staged:
        with archive.open(member.sha256) as handle:
            content = handle.read()
        assert hashlib.sha256(content).hexdigest() == member.sha256
        # metadata.txt came last, so the reader computed sha1 as well, in the same pass
        assert member.hashes["sha1"] == hashlib.sha1(content).hexdigest()


def test_reader_computes_only_declared_hashes_when_metadata_comes_first() -> None:
    staged: list[StagedMember] = []
    BundleReader(memory_archive(), LIMITS, staged.append).read(
        io.BytesIO(make_tar(GOOD_MEMBERS, good_metadata()))
    )
    assert {tuple(sorted(m.hashes)) for m in staged} == {("crc32", "sha1", "sha256")}


def test_source_that_shrinks_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 5000)
    stream = BundleStream(collect([path]), metadata_fields("p", None, [], None))
    chunks = stream.chunks()
    next(chunks)
    path.write_bytes(b"x" * 10)
    with pytest.raises(BundleSourceError, match="shrank"):
        list(chunks)


def test_collect_refuses_missing_and_colliding_paths(tmp_path: Path) -> None:
    with pytest.raises(BundleSourceError, match="not a file or folder"):
        collect([tmp_path / "absent"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "a").mkdir(parents=True)
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b" / "a" / "x").write_text("2")
    with pytest.raises(BundleSourceError, match="same bundle path"):
        collect([tmp_path / "a", tmp_path / "b" / "a"])


@pytest.mark.parametrize(
    ("limits", "task", "words"),
    [
        (BundleLimits(3, 1 << 20, 4096), "open tar", "more than 3 members"),
        (BundleLimits(1000, 1024, 4096), "load metadata", "the limit is 1024"),
        (BundleLimits(1000, 1 << 20, 255), "open tar", "too long"),
    ],
)
def test_limits(limits: BundleLimits, task: str, words: str) -> None:
    members = {**GOOD_MEMBERS, "data/" + "n" * 300: b"x"}
    metadata = [*good_metadata(), {"destinationTable": "NothingReally", "pad": "p" * 2000}]
    with pytest.raises(BundleError) as caught:
        BundleReader(memory_archive(), limits, lambda _: None).read(
            io.BytesIO(make_tar(members, metadata))
        )
    assert caught.value.task == task
    assert words in caught.value.message


def test_truncated_bundle_names_the_last_good_member() -> None:
    data = make_tar({"data/a/b/big.bin": b"z" * 100_000}, good_metadata())
    with pytest.raises(BundleError) as caught:
        BundleReader(memory_archive(), LIMITS, lambda _: None).read(io.BytesIO(data[:60_000]))
    assert caught.value.task == "open tar"
    assert "truncated or corrupt" in caught.value.message


def test_gnu_sparse_members_are_stored_whole(tmp_path: Path) -> None:
    tar = require_command("tar")
    data = tmp_path / "data"
    data.mkdir()
    sparse = data / "holes.bin"
    with sparse.open("wb") as handle:
        handle.write(b"start")
        handle.seek(3_000_000)
        handle.write(b"end")
    (tmp_path / "metadata.txt").write_text(json.dumps(good_metadata()[:2]))
    bundle = tmp_path / "sparse.tar"
    subprocess.run(
        [
            tar,
            "--sparse",
            "--format=gnu",
            "-cf",
            str(bundle),
            "-C",
            str(tmp_path),
            "metadata.txt",
            "data",
        ],
        check=True,
    )
    archive = memory_archive()
    staged: list[StagedMember] = []
    BundleReader(archive, LIMITS, staged.append).read(io.BytesIO(bundle.read_bytes()))
    [member] = staged
    assert member.key == "holes.bin"
    assert member.sha256 == hashlib.sha256(sparse.read_bytes()).hexdigest()
