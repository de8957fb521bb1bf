"""One conformance suite for remote sources, run against a real server for every protocol.

Each test runs over: a local folder; FTP with MLSD, with Unix LIST and with MS-DOS LIST;
explicit FTPS; HTTP with Apache (both forms), nginx and IIS index pages; HTTPS; SFTP; S3
(moto), GCS (the emulator) and rsync. What a protocol cannot tell (an exact size in a
rounded index page, a file's time on an object store) is declared per backend, not skipped.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import random
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor.mirror.errors import SourceError
from conveyor.mirror.matching import select_files
from conveyor.mirror.sources import Source, open_source
from conveyor.mirror.sources import base as sources_base
from conveyor.mirror.sources import parts as sources_parts
from conveyor.mirror.spec import Credentials, SourceOptions, SourceSpec
from tests.support.mirror_servers import ftp_server, http_server, sftp_server
from tests.support.object_stores import S3_REGION, gcs_filesystem, s3_filesystem
from tests.support.reading import read_whole

MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC
BIG = random.Random(5).randbytes(600_000)
FILES = {
    "alpha.txt": b"alpha\n" * 20,
    "beta.gz": gzip.compress(b"ACGT" * 500, mtime=0),
    "empty.dat": b"",
    "with space.txt": b"spaced",
    "\u00fcn\u00efcode.txt": b"unicode",
    "sub/gamma.bin": BIG,
    "sub/deeper/delta.txt": b"delta",
}


@dataclass(frozen=True)
class Backend:
    """How a backend is reached, and what its listings can say."""

    spec: SourceSpec
    exact_sizes: bool = True
    # How close a listed time is to the file's (None: the remote keeps its own times).
    mtime_slack: float | None = 0.0


def _tree(root: Path) -> Path:
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (MTIME, MTIME))
    return root


def _login(info: Any) -> Credentials:
    return Credentials.parse(f"{info.user}:{info.password}")


@contextmanager
def _ftp(root: Path, **options: Any) -> Iterator[Backend]:
    tls = options.pop("tls", False)
    with ftp_server(root, tls=tls, **options) as info:
        listed_by_mlsd = options.get("mlsd", True)
        yield Backend(
            SourceSpec(
                protocol="ftps" if tls else "ftp",
                server=f"{info.host}:{info.port}",
                remote_dir="/",
                credentials=_login(info),
                options=SourceOptions(ssl_server_cert=str(info.cafile) if tls else None),
                stall_timeout=10,
            ),
            # LIST shows minutes (and, for old files, days); MLSD shows seconds.
            mtime_slack=0.0 if listed_by_mlsd else 86400.0,
        )


@contextmanager
def _http(root: Path, style: str, tls: bool = False) -> Iterator[Backend]:
    with http_server(root, index_style=style, tls=tls) as info:  # type: ignore[arg-type]
        yield Backend(
            SourceSpec(
                protocol="https" if tls else "http",
                server=f"{info.host}:{info.port}",
                remote_dir="/",
                options=SourceOptions(ssl_server_cert=str(info.cafile) if tls else None),
                stall_timeout=10,
            ),
            exact_sizes=style in ("nginx", "iis"),
            mtime_slack=60.0,
        )


@contextmanager
def _sftp(root: Path, tmp_path: Path) -> Iterator[Backend]:
    with sftp_server(root) as info:
        known = tmp_path / "known_hosts"
        known.write_text(f"{info.known_hosts_line}\n")
        yield Backend(
            SourceSpec(
                protocol="sftp",
                server=f"{info.host}:{info.port}",
                remote_dir="/",
                credentials=_login(info),
                options=SourceOptions(ssh_hosts_file=str(known)),
                stall_timeout=10,
            )
        )


def _upload(fs: Any, bucket: str, root: Path) -> None:
    for name in FILES:
        fs.pipe(f"{bucket}/bank/{name}", (root / name).read_bytes())


@contextmanager
def _s3(root: Path, endpoint: str) -> Iterator[Backend]:
    bucket = f"conveyor-mirror-{uuid.uuid4().hex}"
    fs = s3_filesystem(endpoint)
    fs.mkdir(bucket, region_name=S3_REGION)
    _upload(fs, bucket, root)
    try:
        yield Backend(
            SourceSpec(
                protocol="s3",
                server=bucket,
                remote_dir="/bank",
                credentials=Credentials.parse("testing:testing"),
                storage_options={"endpoint_url": endpoint, "region": S3_REGION},
            ),
            mtime_slack=None,
        )
    finally:
        fs.rm(bucket, recursive=True)


@contextmanager
def _gs(root: Path, endpoint: str) -> Iterator[Backend]:
    bucket = f"conveyor-mirror-{uuid.uuid4().hex}"
    fs = gcs_filesystem(endpoint)
    fs.mkdir(bucket)
    _upload(fs, bucket, root)
    try:
        yield Backend(
            SourceSpec(
                protocol="gs",
                server=bucket,
                remote_dir="/bank",
                storage_options={"endpoint_url": endpoint, "token": "anon"},
            ),
            mtime_slack=None,
        )
    finally:
        fs.rm(bucket, recursive=True)


BACKENDS = [
    "local",
    "ftp",
    "ftp-list-unix",
    "ftp-list-msdos",
    "ftps",
    "http-apache",
    "http-apache-table",
    "http-nginx",
    "http-iis",
    "https",
    "sftp",
    pytest.param("s3", marks=pytest.mark.integration),
    pytest.param("gs", marks=pytest.mark.integration),
    "rsync",
]


def _open_backend(
    name: str, root: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> AbstractContextManager[Backend]:
    simple: dict[str, Any] = {
        "ftp": lambda: _ftp(root),
        "ftp-list-unix": lambda: _ftp(root, mlsd=False),
        "ftp-list-msdos": lambda: _ftp(root, mlsd=False, listing="msdos"),
        "ftps": lambda: _ftp(root, tls=True),
        "http-apache": lambda: _http(root, "apache"),
        "http-apache-table": lambda: _http(root, "apache_table"),
        "http-nginx": lambda: _http(root, "nginx"),
        "http-iis": lambda: _http(root, "iis"),
        "https": lambda: _http(root, "nginx", tls=True),
        "sftp": lambda: _sftp(root, tmp_path),
        "s3": lambda: _s3(root, request.getfixturevalue("moto_s3")),
        "gs": lambda: _gs(root, request.getfixturevalue("gcs_emulator")),
    }
    if name == "local":
        return _plain(Backend(SourceSpec(protocol="local", remote_dir=str(root))))
    if name == "rsync":
        return _plain(Backend(SourceSpec(protocol="rsync", remote_dir=str(root))))
    return simple[name]()  # type: ignore[no-any-return]


@contextmanager
def _plain(backend: Backend) -> Iterator[Backend]:
    yield backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    root = _tree(tmp_path / "bank")
    with _open_backend(request.param, root, tmp_path, request) as opened:
        yield opened


@pytest.fixture
def source(backend: Backend) -> Iterator[Source]:
    with open_source(backend.spec) as opened:
        yield opened


def _listing(source: Source, folder: str = "") -> dict[str, Any]:
    return {entry.name: entry for entry in source.list(folder)}


def test_lists_files_and_folders(source: Source, backend: Backend) -> None:
    listed = _listing(source)
    top = {name for name in FILES if "/" not in name}
    assert set(listed) == top | {"sub"}
    assert listed["sub"].is_dir
    for name in top:
        entry = listed[name]
        assert not entry.is_dir, name
        size = len(FILES[name])
        if backend.exact_sizes or entry.size is not None:
            assert entry.size == size, name
        else:
            assert entry.approximate_size is not None
            assert abs(entry.approximate_size - size) <= max(0.1 * size, 1024), name


def test_listed_times_are_the_files_times(source: Source, backend: Backend) -> None:
    entry = _listing(source)["alpha.txt"]
    assert entry.mtime is not None
    assert entry.mtime.tzinfo is not None
    if backend.mtime_slack is not None:
        gap = abs((entry.mtime - datetime.fromtimestamp(MTIME, UTC)).total_seconds())
        assert gap <= backend.mtime_slack


def test_lists_a_subfolder(source: Source) -> None:
    listed = _listing(source, "sub")
    assert set(listed) == {"gamma.bin", "deeper"}
    assert listed["deeper"].is_dir
    assert set(_listing(source, "sub/deeper")) == {"delta.txt"}


def test_a_missing_folder_is_a_permanent_error(source: Source) -> None:
    with pytest.raises(SourceError) as raised:
        list(source.list("no-such-folder"))
    assert raised.value.permanent


@pytest.mark.parametrize("name", sorted(FILES))
def test_reads_every_file_whole(source: Source, name: str) -> None:
    assert b"".join(source.read(name)) == FILES[name]


@pytest.mark.parametrize("offset", [1, 262_144, 599_999, 600_000])
def test_reads_from_an_offset(source: Source, offset: int) -> None:
    assert b"".join(source.read("sub/gamma.bin", offset)) == BIG[offset:]


def read_into(source: Source, path: str, part: Path, offset: int) -> bytes:
    """What ``read_into`` yields, each piece copied as it comes (a piece may be a view
    that is valid only until the next one)."""
    return b"".join(bytes(piece) for piece in source.read_into(path, part, offset))


@pytest.mark.parametrize("offset", [0, 262_144, 600_000])
def test_reads_into_a_part_file_resuming_it(source: Source, tmp_path: Path, offset: int) -> None:
    part = tmp_path / "gamma.bin.part"
    part.write_bytes(BIG[:offset])
    assert read_into(source, "sub/gamma.bin", part, offset) == BIG[offset:]
    assert part.read_bytes() == BIG


def test_reading_into_a_part_from_its_start_drops_what_it_held(
    source: Source, tmp_path: Path
) -> None:
    # A part nobody resumes (offset 0) must not keep bytes an earlier attempt left.
    part = tmp_path / "gamma.bin.part"
    part.write_bytes(b"left by an attempt nobody resumed\n" * 1000)
    assert read_into(source, "sub/gamma.bin", part, 0) == BIG
    assert part.read_bytes() == BIG


@pytest.mark.parametrize("offset", [0, 262_144])
def test_reads_into_a_part_file_sending_spans_to_disk_on_the_way(
    source: Source, tmp_path: Path, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_parts, "WRITEBACK_SPAN", 100_000)
    advised: list[tuple[int, int]] = []
    real_advise = os.posix_fadvise

    def recording_advise(descriptor: int, start: int, length: int, advice: int) -> None:
        advised.append((start, length))
        real_advise(descriptor, start, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording_advise)
    part = tmp_path / "gamma.bin.part"
    part.write_bytes(BIG[:offset])
    assert read_into(source, "sub/gamma.bin", part, offset) == BIG[offset:]
    assert part.read_bytes() == BIG
    if source.spec.protocol != "rsync":  # rsync writes the part itself
        # Contiguous spans of at least the span size, from the resume offset on.
        assert advised, "no span was sent to disk"
        assert advised[0][0] == offset
        for (start, length), (following, _) in itertools.pairwise(advised):
            assert length >= 100_000 and following == start + length


@pytest.mark.parametrize("offset", [0, 262_145])
def test_reads_into_a_part_file_directly_past_the_threshold(
    source: Source, tmp_path: Path, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_parts, "DIRECT_FROM", 100_000)
    monkeypatch.setattr(sources_parts, "DIRECT_SPAN", 4 * sources_parts.ALIGN)
    part = tmp_path / "gamma.bin.part"
    part.write_bytes(BIG[:offset])
    assert read_into(source, "sub/gamma.bin", part, offset) == BIG[offset:]
    assert part.read_bytes() == BIG


def test_reading_a_missing_file_into_a_part_is_a_permanent_error(
    source: Source, tmp_path: Path
) -> None:
    part = tmp_path / "missing.part"
    part.touch()
    with pytest.raises(SourceError) as raised:
        read_into(source, "no-such-file.txt", part, 0)
    assert raised.value.permanent
    assert part.read_bytes() == b""


def test_reading_a_missing_file_is_a_permanent_error(source: Source) -> None:
    with pytest.raises(SourceError) as raised:
        b"".join(source.read("no-such-file.txt"))
    assert raised.value.permanent


def test_a_read_refused_in_a_missing_folder_leaves_the_source_usable(source: Source) -> None:
    # FTP: the refused CWD leaves the server in another folder than the one last entered.
    assert b"".join(source.read("sub/gamma.bin")) == BIG
    with pytest.raises(SourceError) as raised:
        b"".join(source.read("no-such-folder/x.bin"))
    assert raised.value.permanent
    assert b"".join(source.read("sub/gamma.bin")) == BIG


def test_stat_gives_size_and_time(source: Source, backend: Backend) -> None:
    entry = source.stat("sub/gamma.bin")
    assert entry.size == len(BIG)
    if backend.mtime_slack is not None:
        assert entry.mtime is not None
        gap = abs((entry.mtime - datetime.fromtimestamp(MTIME, UTC)).total_seconds())
        assert gap <= 1.0


def test_paths_cannot_climb_out(source: Source) -> None:
    with pytest.raises(SourceError, match="climbs out") as raised:
        b"".join(source.read("../bank/alpha.txt"))
    assert raised.value.permanent


def test_a_connection_is_reused_after_an_abandoned_read(source: Source) -> None:
    reading = source.read("sub/gamma.bin")
    assert next(reading)
    reading.close()
    assert b"".join(source.read("alpha.txt")) == FILES["alpha.txt"]
    assert set(_listing(source, "sub")) == {"gamma.bin", "deeper"}


def test_selection_walks_folders_and_renames(source: Source) -> None:
    chosen = {item.save_as for item in select_files(source, [r"^sub/.*\.bin$", r"^(alpha)\.txt$"])}
    assert chosen == {"sub/gamma.bin", "alpha"}
    everything = {item.save_as for item in select_files(source, ["**/*"])}
    assert everything == set(FILES)


# --- event-loop readers -----------------------------------------------------------------------
# A protocol with an AsyncReader is read by the mirror's event-loop engine: what it reads
# must be what the protocol's source reads. One backend per server kind (the index style
# and the listing command do not matter to reading).
READER_BACKENDS = ["ftp", "ftps", "http-nginx", "https", "sftp"]
PROTOCOLS_WITH_READERS = {
    "ftp",
    "ftps",
    "directftp",
    "directftps",
    "http",
    "https",
    "directhttp",
    "directhttps",
    "sftp",
}


@pytest.fixture(params=READER_BACKENDS)
def reader_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    root = _tree(tmp_path / "bank")
    with _open_backend(request.param, root, tmp_path, request) as opened:
        yield opened


def test_every_protocol_with_an_event_loop_reader_is_covered_here() -> None:
    readers = {
        protocol
        for protocol in sources_base.BUILTIN_MODULES
        if sources_base.source_class(protocol).async_reader is not None
    }
    assert readers == PROTOCOLS_WITH_READERS


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_reader_reads_every_file_whole(reader_backend: Backend, name: str) -> None:
    assert read_whole(reader_backend.spec, name, loop=True) == FILES[name]


@pytest.mark.parametrize("offset", [1, 262_144, 599_999, 600_000])
def test_the_reader_reads_from_an_offset(reader_backend: Backend, offset: int) -> None:
    assert read_whole(reader_backend.spec, "sub/gamma.bin", offset, loop=True) == BIG[offset:]


def test_the_reader_says_a_missing_file_is_a_permanent_error(reader_backend: Backend) -> None:
    with pytest.raises(SourceError) as raised:
        read_whole(reader_backend.spec, "no-such-file.txt", loop=True)
    assert raised.value.permanent


def test_the_reader_refuses_paths_climbing_out(reader_backend: Backend) -> None:
    with pytest.raises(SourceError, match="climbs out") as raised:
        read_whole(reader_backend.spec, "../bank/alpha.txt", loop=True)
    assert raised.value.permanent


def test_a_read_refused_in_a_missing_folder_leaves_the_reader_usable(
    reader_backend: Backend,
) -> None:
    async def read_in_turn() -> list[bytes]:
        reader = sources_base.open_async_reader(reader_backend.spec, 1)  # one connection
        assert reader is not None

        async def whole(name: str) -> bytes:
            return b"".join([chunk async for chunk in reader.read(name)])

        try:
            first = await whole("sub/gamma.bin")
            with pytest.raises(SourceError) as raised:
                await whole("no-such-folder/x.bin")
            assert raised.value.permanent
            return [first, await whole("sub/gamma.bin")]
        finally:
            await reader.close()

    assert asyncio.run(read_in_turn()) == [BIG, BIG]


def test_the_reader_shares_its_connections_among_many_reads(reader_backend: Backend) -> None:
    async def read_many() -> list[bytes]:
        reader = sources_base.open_async_reader(reader_backend.spec, 2)
        assert reader is not None

        async def whole(name: str) -> bytes:
            return b"".join([chunk async for chunk in reader.read(name)])

        try:
            # An abandoned read first: its connection must not serve the next answer.
            abandoned = reader.read("sub/gamma.bin")
            assert await anext(abandoned)
            await abandoned.aclose()
            return await asyncio.gather(*(whole(name) for name in sorted(FILES) * 3))
        finally:
            await reader.close()

    assert asyncio.run(read_many()) == [FILES[name] for name in sorted(FILES) * 3]
