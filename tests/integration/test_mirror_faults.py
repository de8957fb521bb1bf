"""Transfers under fire: cuts, stalls, throttling, corrupt files and refused hosts.

Every test runs :func:`conveyor.mirror.transfer.fetch` (or a source directly) against the real
loopback servers of :mod:`tests.support.mirror_servers` with their one-shot faults armed, and
checks both what the client got and what the server saw (its request log): a cut transfer
resumes where it stopped rather than starting over, a stall is noticed within the source's
``stall_timeout``, throttle replies slow the host's gate, and permanent errors end a file at
once. Retry policies use ``wait_none`` so the whole module runs in seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import gzip
import hashlib
import itertools
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import asyncssh
import pytest

from conveyor.mirror.errors import SourceError
from conveyor.mirror.gate import HostGate
from conveyor.mirror.integrity import CorruptFile
from conveyor.mirror.retry import RetryPolicy, retry_policy
from conveyor.mirror.sources import open_async_reader, open_source
from conveyor.mirror.spec import Credentials, SourceOptions, SourceSpec
from conveyor.mirror.transfer import PART_SUFFIX, Fetched, Wanted, fetch, fetch_async
from tests.support.mirror_servers import (
    Faults,
    ServerInfo,
    ftp_server,
    http_server,
    sftp_server,
)
from tests.support.reading import read_whole

# "-loop": the same server, fetched by the event-loop engine (fetch_async and the protocol's
# AsyncReader) instead of a source in a thread.
Kind = Literal[
    "ftp",
    "ftps",
    "http",
    "https",
    "sftp",
    "ftp-loop",
    "ftps-loop",
    "http-loop",
    "https-loop",
    "sftp-loop",
]
HTTP_KINDS = ["http", "http-loop"]

NAME = "f.bin"
DATA = random.Random(11).randbytes(1_000_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
# Long enough that a test which waits for a stall to end (instead of detecting it) fails
# the elapsed-time check by a wide margin.
STALL_SECONDS = 30.0
ATTEMPT_SECONDS = 60.0


def _policy(attempts: int) -> RetryPolicy:
    return retry_policy(f"stop_after_attempt({attempts})", "wait_none")


@dataclass
class Served:
    """A running server, the spec that reaches it, and where the test writes."""

    info: ServerInfo
    spec: SourceSpec
    tmp: Path
    loop: bool = False

    @property
    def root(self) -> Path:
        return self.info.root

    def wanted(self, path: str = NAME, size: int | None = None, **extra: Any) -> Wanted:
        """The file ``path`` to be saved under ``tmp/out/``."""
        return Wanted(path=path, name=path, size=size, target=self.tmp / "out" / path, **extra)


@dataclass
class Sleeps:
    """A ``sleep`` for fetch: records each wait, the part's size and the server's log length.

    fetch calls it between attempts (with 0 under ``wait_none``), so the part's size there is
    the offset the next attempt must resume from, and the log's length, once the failed
    attempt's last requests are in, marks where the next attempt's begin; ``then`` runs last.
    """

    part: Path | None = None
    faults: Faults | None = None
    then: Callable[[], object] | None = None
    calls: list[float] = field(default_factory=list)
    part_sizes: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.part is not None:
            self.part_sizes.append(self.part.stat().st_size if self.part.exists() else 0)
        if self.faults is not None:
            self.marks.append(_settled(self.faults))
        if self.then is not None:
            self.then()


def _part(wanted: Wanted) -> Path:
    return wanted.target.with_name(wanted.target.name + PART_SUFFIX)


def _spec(info: ServerInfo, known_hosts: Path, **overrides: Any) -> SourceSpec:
    """The spec of ``info`` as the conformance suite builds it, with ``overrides`` applied."""
    option_values: dict[str, Any] = {}
    if info.cafile is not None:
        option_values["ssl_server_cert"] = str(info.cafile)
    if info.scheme == "sftp":
        option_values["ssh_hosts_file"] = str(known_hosts)
    option_values |= overrides.pop("options", {})
    values: dict[str, Any] = {
        "protocol": info.scheme,
        "server": f"{info.host}:{info.port}",
        "remote_dir": "/",
        "options": SourceOptions(**option_values),
        "stall_timeout": 1,
        "connect_timeout": 10,
    }
    if info.user is not None:
        values["credentials"] = Credentials.parse(f"{info.user}:{info.password}")
    values |= overrides
    return SourceSpec(**values)


@contextmanager
def _serve(kind: Kind, tmp_path: Path, **spec_overrides: Any) -> Iterator[Served]:
    """Serve ``tmp_path/bank`` (holding ``f.bin``) over ``kind``; the spec reaches it."""
    loop = kind.endswith("-loop")
    kind = cast(Kind, kind.removesuffix("-loop"))
    root = tmp_path / "bank"
    root.mkdir(exist_ok=True)
    (root / NAME).write_bytes(DATA)
    known_hosts = tmp_path / "known_hosts"
    with ExitStack() as stack:
        if kind in ("ftp", "ftps"):
            info = stack.enter_context(ftp_server(root, tls=kind == "ftps"))
        elif kind in ("http", "https"):
            info = stack.enter_context(http_server(root, tls=kind == "https"))
        else:
            info = stack.enter_context(sftp_server(root))
            known_hosts.write_text(f"{info.known_hosts_line}\n")
        info.faults.stall_seconds = STALL_SECONDS
        yield Served(info, _spec(info, known_hosts, **spec_overrides), tmp_path, loop)


def _fetch(
    served: Served,
    wanted: Wanted,
    attempts: int,
    *,
    gate: HostGate | None = None,
    sleep: Callable[[float], None] | None = None,
    policy: RetryPolicy | None = None,
    **options: Any,
) -> Fetched:
    policy = policy or _policy(attempts)
    if served.loop:
        return asyncio.run(_fetch_on_loop(served, wanted, policy, gate, sleep, options))
    with open_source(served.spec) as source:
        return fetch(
            source,
            wanted,
            policy,
            gate=gate or HostGate(2),
            attempt_seconds=ATTEMPT_SECONDS,
            sleep=sleep or Sleeps(),
            **options,
        )


async def _fetch_on_loop(
    served: Served,
    wanted: Wanted,
    policy: RetryPolicy,
    gate: HostGate | None,
    sleep: Callable[[float], None] | None,
    options: dict[str, Any],
) -> Fetched:
    reader = open_async_reader(served.spec, 2)
    assert reader is not None
    record = sleep or Sleeps()

    async def wait(seconds: float) -> None:
        record(seconds)

    try:
        return await fetch_async(
            reader,
            wanted,
            policy,
            gate=gate or HostGate(2),
            attempt_seconds=ATTEMPT_SECONDS,
            sleep=wait,
            **options,
        )
    finally:
        await reader.close()


def _assert_whole(result: Fetched, wanted: Wanted) -> None:
    """The target holds exactly DATA, reported with DATA's digests, and no part is left."""
    assert result.path == wanted.target
    assert result.size == len(DATA)
    assert result.sha256 == SHA256
    # md5 is computed only to check an md5 sidecar.
    wants_md5 = wanted.digest is not None and wanted.digest[0] == "md5"
    assert result.md5 == (hashlib.md5(DATA).hexdigest() if wants_md5 else None)
    assert result.crc32 == zlib.crc32(DATA)
    assert wanted.target.read_bytes() == DATA
    assert not _part(wanted).exists()


def _starts(kind: Kind, requests: list[str], marks: list[int] | None = None) -> list[int]:
    """The offsets each transfer of ``f.bin`` started from, in order, by the server's log.

    FTP and HTTP log one command per transfer. SFTP logs every READ of paramiko's pipelined
    prefetch, so its transfers are told apart by ``marks``: the log's length when each later
    transfer began.
    """
    name = NAME
    kind = cast(Kind, kind.removesuffix("-loop"))
    if kind in ("ftp", "ftps"):
        starts: list[int] = []
        rest = 0
        for entry in requests:
            if entry.startswith("REST "):
                rest = int(entry.split()[1])
            elif entry == f"RETR {name}":
                starts.append(rest)
                rest = 0
        return starts
    if kind in ("http", "https"):
        starts = []
        for entry in requests:
            # "GET /f.bin -" or "GET /f.bin bytes=N-"; HEADs and others have no range field.
            parts = entry.split(" ")
            if len(parts) == 3 and parts[:2] == ["GET", f"/{name}"]:
                ranged = parts[2]
                starts.append(0 if ranged == "-" else int(ranged.removeprefix("bytes=")[:-1]))
        return starts
    bounds = [0, *(marks or []), len(requests)]
    starts = []
    for begin, end in itertools.pairwise(bounds):
        reads = [e for e in requests[begin:end] if e.startswith(f"READ {name} ")]
        if reads:
            starts.append(int(reads[0].rsplit(" ", 1)[1]))
    return starts


def _settled(faults: Faults, quiet: float = 0.2, limit: float = 5.0) -> int:
    """The length of the server's log once it stops growing.

    The SFTP server still logs the reads a client pipelined before its session ended.
    """
    deadline = time.monotonic() + limit
    seen = -1
    while len(faults.requests) != seen and time.monotonic() < deadline:
        seen = len(faults.requests)
        time.sleep(quiet)
    return seen


# --- 1. a cut transfer resumes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "ftp",
        "ftp-loop",
        "ftps",
        "ftps-loop",
        "http",
        "http-loop",
        "https",
        "https-loop",
        "sftp",
        "sftp-loop",
    ],
)
def test_a_cut_transfer_resumes_where_it_stopped(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        served.info.faults.cut_after[NAME] = 300_000
        wanted = served.wanted(size=len(DATA))
        sleeps = Sleeps(part=_part(wanted), faults=served.info.faults)
        result = _fetch(served, wanted, 3, sleep=sleeps)
        requests = list(served.info.faults.requests)
    assert served.info.faults.cut_after == {}  # the cut did fire
    _assert_whole(result, wanted)
    assert result.attempts == 2
    assert result.resumed >= 1
    # The second transfer started from what the part held after the cut, not from 0.
    (resumed_at,) = sleeps.part_sizes
    assert 0 < resumed_at <= 300_000
    assert _starts(kind, requests, sleeps.marks) == [0, resumed_at]


# --- 2. a part left by an earlier run ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_a_part_left_by_an_earlier_run_is_resumed(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        wanted = served.wanted(size=len(DATA))
        _part(wanted).parent.mkdir(parents=True)
        _part(wanted).write_bytes(DATA[:100_000])
        result = _fetch(served, wanted, 3)
        requests = list(served.info.faults.requests)
    _assert_whole(result, wanted)
    assert (result.attempts, result.resumed) == (1, 1)
    assert _starts(kind, requests) == [100_000]


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_a_whole_part_left_by_an_earlier_run_is_checked_without_a_transfer(
    kind: Kind, tmp_path: Path
) -> None:
    with _serve(kind, tmp_path) as served:
        wanted = served.wanted(size=len(DATA))
        _part(wanted).parent.mkdir(parents=True)
        _part(wanted).write_bytes(DATA)
        result = _fetch(served, wanted, 1)
        requests = list(served.info.faults.requests)
    _assert_whole(result, wanted)
    assert (result.attempts, result.resumed) == (1, 1)
    assert _starts(kind, requests) == []


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_an_empty_file_is_fetched_as_an_empty_file(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        (served.root / "empty.dat").write_bytes(b"")
        wanted = served.wanted("empty.dat", size=0)
        result = _fetch(served, wanted, 1)
    assert (result.size, result.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert wanted.target.read_bytes() == b""
    assert not _part(wanted).exists()


@pytest.mark.parametrize("kind", ["http", "http-loop"])
def test_a_server_ignoring_the_range_resumes_with_the_bytes_already_held_skipped(
    kind: Kind, tmp_path: Path
) -> None:
    with _serve(kind, tmp_path) as served:
        served.info.faults.ignore_ranges = True
        wanted = served.wanted(size=len(DATA))
        _part(wanted).parent.mkdir(parents=True)
        _part(wanted).write_bytes(DATA[:100_000])
        result = _fetch(served, wanted, 1)
    _assert_whole(result, wanted)
    assert (result.attempts, result.resumed) == (1, 1)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_a_kept_part_is_whole_and_checked_under_its_part_name(kind: Kind, tmp_path: Path) -> None:
    """With ``keep_part`` (the archive takes the file by one rename) nothing is renamed."""
    with _serve(kind, tmp_path) as served:
        served.info.faults.cut_after[NAME] = 300_000
        wanted = dataclasses.replace(served.wanted(size=len(DATA)), keep_part=True)
        result = _fetch(served, wanted, 3)
    assert result.path == _part(wanted)
    assert result.attempts == 2
    assert (result.size, result.sha256) == (len(DATA), SHA256)
    assert result.path.read_bytes() == DATA
    assert not wanted.target.exists()


# --- 3. and 4. throttling ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop"])
def test_an_ftp_421_storm_is_ridden_out_with_fewer_connections(kind: Kind, tmp_path: Path) -> None:
    gate = HostGate(4)
    with _serve(kind, tmp_path) as served:
        served.info.faults.refuse_connections = 3
        wanted = served.wanted(size=len(DATA))
        result = _fetch(served, wanted, 6, gate=gate)
    assert served.info.faults.refuse_connections == 0
    _assert_whole(result, wanted)
    assert result.attempts == 4
    assert gate.limit < 4


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop"])
def test_a_throttle_reply_lowers_the_limit_by_one_not_two(kind: Kind, tmp_path: Path) -> None:
    # Four transfers in flight (three held here, one fetching) and the host refuses the
    # fourth: it tolerates three, and HostGate says a throttle reply lowers the limit by one.
    gate = HostGate(4)
    with _serve(kind, tmp_path) as served, ExitStack() as held:
        for _ in range(3):
            held.enter_context(gate.slot())
        served.info.faults.refuse_connections = 1
        # One attempt: with the limit at or below the three held, a retry would wait forever.
        with pytest.raises(SourceError) as raised:
            _fetch(served, served.wanted(size=len(DATA)), 1, gate=gate)
    assert raised.value.throttled
    assert gate.limit == 3


@pytest.mark.parametrize(
    ("fault", "status"), [("too_many_requests", "429"), ("refuse_connections", "503")]
)
@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_http_retry_after_holds_the_host_back(
    kind: Kind,
    fault: Literal["too_many_requests", "refuse_connections"],
    status: str,
    tmp_path: Path,
) -> None:
    gate = HostGate(2)
    sleeps = Sleeps()
    with _serve(kind, tmp_path) as served:
        setattr(served.info.faults, fault, 2)
        wanted = served.wanted(size=len(DATA))
        started = time.monotonic()
        result = _fetch(served, wanted, 5, gate=gate, sleep=sleeps)
        elapsed = time.monotonic() - started
    _assert_whole(result, wanted)
    assert result.attempts == 3
    # The retry policy never waited (wait_none): the two one-second pauses are the gate's,
    # honouring the server's Retry-After: 1.
    assert sleeps.calls == [0, 0]
    assert elapsed >= 1.8, f"{status}: Retry-After not honoured, done in {elapsed:.2f} s"
    assert gate.limit < 2


# --- 5. stalls --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_a_stalled_transfer_is_noticed_and_resumed(
    kind: Kind, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _serve(kind, tmp_path) as served:
        served.info.faults.stall_after[NAME] = 200_000
        wanted = served.wanted(size=len(DATA))
        sleeps = Sleeps(part=_part(wanted), faults=served.info.faults)
        started = time.monotonic()
        result = _fetch(served, wanted, 3, sleep=sleeps)
        elapsed = time.monotonic() - started
        requests = list(served.info.faults.requests)
    assert served.info.faults.stall_after == {}
    _assert_whole(result, wanted)
    assert result.attempts == 2
    assert elapsed < STALL_SECONDS / 3, f"took {elapsed:.1f} s: the stall was waited out"
    # The retry starts from whatever reached the part. HTTP and SFTP hand bytes on in 256 KiB
    # pieces, so with the stall at 200 000 that is 0 for them; FTP passes on what arrives.
    (kept,) = sleeps.part_sizes
    assert kept <= 200_000
    assert _starts(kind, requests, sleeps.marks) == [0, kept]
    _assert_no_work_left_behind(caplog)


def _assert_no_work_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing the abandoned attempt started fails later, unheard (asyncssh's parallel
    reads of a cancelled span did: "Task exception was never retrieved")."""
    gc.collect()  # a lost task says so when it is collected
    lost = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    assert lost == []


@pytest.mark.parametrize(
    ("stop", "attempts"),
    [
        ("stop_after_attempt(2)", 2),
        # The first attempt runs before the policy's retry loop is made; its stall (1 s) is
        # past the policy's 0.5 s all the same, so no second attempt may start.
        ("stop_after_delay(0.5)", 1),
    ],
)
@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_a_file_stalling_on_every_attempt_fails_with_the_stall_as_reason(
    kind: Kind, stop: str, attempts: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _serve(kind, tmp_path) as served:
        faults = served.info.faults
        faults.stall_after[NAME] = 200_000
        wanted = served.wanted(size=len(DATA))
        # The retry resumes at or before 200 000 bytes; the stall armed again catches it.
        sleeps = Sleeps(then=lambda: faults.stall_after.update({NAME: 400_000}))
        policy = retry_policy(stop, "wait_none")
        with pytest.raises(SourceError) as raised:
            _fetch(served, wanted, 0, sleep=sleeps, policy=policy)
    error = raised.value
    assert "stalled, no data for 1 s" in str(error), str(error)
    assert not error.permanent
    assert error.attempts == attempts
    assert len(sleeps.calls) == attempts - 1
    assert faults.stall_after == {}  # every stall armed fired
    assert not wanted.target.exists()
    _assert_no_work_left_behind(caplog)


# --- 6. permanent errors ----------------------------------------------------------------------


def _assert_permanent_at_once(served: Served, wanted: Wanted) -> SourceError:
    sleeps = Sleeps()
    with pytest.raises(SourceError) as raised:
        _fetch(served, wanted, 5, sleep=sleeps)
    assert raised.value.permanent, str(raised.value)
    assert raised.value.attempts == 1
    assert sleeps.calls == []
    assert not wanted.target.exists()
    assert not _part(wanted).exists()  # nothing was fetched, so nothing is kept to resume
    return raised.value


@pytest.mark.parametrize("kind", ["http", "http-loop", "ftp", "ftp-loop", "sftp", "sftp-loop"])
def test_a_missing_file_is_not_retried(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        error = _assert_permanent_at_once(served, served.wanted("missing.bin"))
    expected = {"http": "404", "ftp": "550", "sftp": "no such file"}[kind.removesuffix("-loop")]
    assert expected in str(error)


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop"])
def test_a_name_with_a_line_break_is_refused_before_it_reaches_the_server(
    kind: Kind, tmp_path: Path
) -> None:
    with _serve(kind, tmp_path) as served:
        error = _assert_permanent_at_once(served, served.wanted(f"{NAME}\r\nDELE {NAME}"))
        requests = list(served.info.faults.requests)
    assert "line break" in str(error)
    assert not [entry for entry in requests if entry.startswith(("DELE", "RETR"))]


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "sftp", "sftp-loop"])
def test_a_bad_password_is_not_retried(
    kind: Kind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind.startswith("ftp"):
        from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]

        # pyftpdlib waits 3 s before it answers a bad password; the test need not.
        monkeypatch.setattr(FTPHandler, "auth_failed_timeout", 0.05)
    wrong = Credentials.parse("user:wrong")
    with _serve(kind, tmp_path, credentials=wrong) as served:
        _assert_permanent_at_once(served, served.wanted(size=len(DATA)))
        logins = [e for e in served.info.faults.requests if e.startswith("PASS")]
    assert len(logins) <= 1  # FTP logs its one PASS; the SFTP server logs only reads


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop"])
def test_a_connection_refused_at_login_is_not_used_again(
    kind: Kind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyftpdlib.handlers import FTPHandler

    monkeypatch.setattr(FTPHandler, "auth_failed_timeout", 0.05)
    wrong = Credentials.parse("user:wrong")
    with _serve(kind, tmp_path, credentials=wrong) as served:
        errors = _two_reads(served)
        logins = [e for e in served.info.faults.requests if e.startswith("PASS")]
    # Each read logs in anew and is refused for the password, not for being logged out.
    assert all(error.permanent and "530" in str(error) for error in errors), errors
    assert str(errors[1]) == str(errors[0])
    assert len(logins) == 2


def _two_reads(served: Served) -> list[SourceError]:
    """The errors of two reads of ``f.bin`` through one source (or one reader with one
    connection), one after the other."""
    errors: list[SourceError] = []
    if not served.loop:
        with open_source(served.spec) as source:
            for _ in range(2):
                with pytest.raises(SourceError) as raised:
                    b"".join(source.read(NAME))
                errors.append(raised.value)
        return errors

    async def on_loop() -> None:
        reader = open_async_reader(served.spec, 1)
        assert reader is not None
        try:
            for _ in range(2):
                with pytest.raises(SourceError) as raised:
                    b"".join([chunk async for chunk in reader.read(NAME)])
                errors.append(raised.value)
        finally:
            await reader.close()

    asyncio.run(on_loop())
    return errors


# --- 7. corrupt archives ----------------------------------------------------------------------

NOT_GZIP = b"this is not gzip at all\n" * 100
GZIP = gzip.compress(b"ACGT" * 10_000, mtime=0)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_a_corrupt_gzip_is_retried_then_refused(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        (served.root / "x.gz").write_bytes(NOT_GZIP)
        wanted = served.wanted("x.gz")
        with pytest.raises(CorruptFile, match=r"x\.gz") as raised:
            _fetch(served, wanted, 3)
        gets = [e for e in served.info.faults.requests if e.startswith("GET /x.gz")]
    assert raised.value.attempts == 3
    # Each attempt fetched the whole file again: a corrupt part is not resumed.
    assert gets == ["GET /x.gz -"] * 3
    assert not wanted.target.exists()
    assert not _part(wanted).exists()


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_a_corrupt_gzip_fixed_on_the_server_is_fetched_on_retry(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        served_file = served.root / "x.gz"
        served_file.write_bytes(NOT_GZIP)
        wanted = served.wanted("x.gz")
        result = _fetch(
            served,
            wanted,
            3,
            sleep=Sleeps(then=lambda: served_file.write_bytes(GZIP)),
        )
    assert result.attempts == 2
    assert wanted.target.read_bytes() == GZIP
    assert result.sha256 == hashlib.sha256(GZIP).hexdigest()


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_archive_checks_can_be_turned_off(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        (served.root / "x.gz").write_bytes(NOT_GZIP)
        wanted = served.wanted("x.gz", size=len(NOT_GZIP))
        result = _fetch(served, wanted, 3, check_archives=False)
    assert result.attempts == 1
    assert wanted.target.read_bytes() == NOT_GZIP


# --- 8. sizes and sidecar digests -------------------------------------------------------------


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_more_bytes_than_listed_is_a_corrupt_file(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        (served.root / "sized.bin").write_bytes(DATA[:1200])
        wanted = served.wanted("sized.bin", size=1000)
        with pytest.raises(CorruptFile) as raised:
            _fetch(served, wanted, 2)
    message = str(raised.value)
    assert "1000" in message and "1200" in message and "sized.bin" in message
    assert raised.value.attempts == 2
    assert not wanted.target.exists()
    assert not _part(wanted).exists()


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_a_digest_unlike_the_sidecar_is_a_corrupt_file(kind: Kind, tmp_path: Path) -> None:
    wrong = hashlib.md5(b"something else").hexdigest()
    with _serve(kind, tmp_path) as served:
        wanted = served.wanted(size=len(DATA), digest=("md5", wrong))
        with pytest.raises(CorruptFile, match="sidecar") as raised:
            _fetch(served, wanted, 2)
    assert wrong in str(raised.value)
    assert not wanted.target.exists()


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_a_digest_matching_the_sidecar_passes(kind: Kind, algorithm: str, tmp_path: Path) -> None:
    digest = hashlib.new(algorithm, DATA).hexdigest()
    with _serve(kind, tmp_path) as served:
        wanted = served.wanted(size=len(DATA), digest=(algorithm, digest))
        result = _fetch(served, wanted, 2)
    _assert_whole(result, wanted)


# --- 9. SSH host keys -------------------------------------------------------------------------


def _other_key_line(info: ServerInfo) -> str:
    """A known_hosts line giving the server's host another ed25519 key."""
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").split()
    return f"[{info.host}]:{info.port} {public[0].decode()} {public[1].decode()}\n"


def _list_sftp(info: ServerInfo, known_hosts: Path, new_host: str | None) -> set[str]:
    """The names at the top of the server, connecting with ``ssh_new_host`` (None: default)."""
    options = {} if new_host is None else {"ssh_new_host": new_host}
    spec = _spec(info, known_hosts, options=options, stall_timeout=5)
    with open_source(spec) as source:
        return {entry.name for entry in source.list("")}


def test_an_unknown_host_key_is_rejected_by_default(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    assert SourceOptions().ssh_new_host == "reject"
    with sftp_server(tmp_path) as info, pytest.raises(SourceError) as raised:
        _list_sftp(info, known, None)
    assert raised.value.permanent
    assert "ssh_new_host" in str(raised.value)
    assert known.read_text() == ""


def test_an_accepted_host_key_is_not_written_down(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / NAME).write_bytes(b"x")
    with sftp_server(tmp_path / "bank") as info:
        assert _list_sftp(info, known, "accept") == {NAME}
    # "accept" trusts the host for this session only; "add" is the one that writes.
    assert known.read_text() == ""


@pytest.mark.parametrize("exists", [True, False])
def test_an_added_host_key_is_written_down(exists: bool, tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    if exists:
        known.parent.mkdir()
        known.write_text("")
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / NAME).write_bytes(b"x")
    with sftp_server(tmp_path / "bank") as info:
        assert _list_sftp(info, known, "add") == {NAME}
        # The line written is trusted as is by the next, rejecting, connection.
        assert _list_sftp(info, known, "reject") == {NAME}
    assert info.known_hosts_line is not None
    assert known.read_text().splitlines() == [info.known_hosts_line]


@pytest.mark.parametrize("new_host", ["reject", "accept", "add"])
def test_a_changed_host_key_is_refused_whatever_ssh_new_host_says(
    new_host: str, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    with sftp_server(tmp_path) as info:
        line = _other_key_line(info)
        known.write_text(line)
        with pytest.raises(SourceError) as raised:
            _list_sftp(info, known, new_host)
    assert raised.value.permanent
    assert "does not match" in str(raised.value)
    assert known.read_text() == line


@pytest.mark.parametrize("stranger", ["unknown", "changed"])
def test_the_event_loop_reader_checks_host_keys_as_the_source_does(
    stranger: str, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / NAME).write_bytes(b"x")
    with sftp_server(tmp_path / "bank") as info:
        known.write_text(_other_key_line(info) if stranger == "changed" else "")
        spec = _spec(info, known, stall_timeout=5)
        with pytest.raises(SourceError) as raised:
            read_whole(spec, NAME, loop=True)
        accepted = _spec(info, known, options={"ssh_new_host": "accept"}, stall_timeout=5)
        if stranger == "unknown":
            assert read_whole(accepted, NAME, loop=True) == b"x"
    assert raised.value.permanent
    assert ("ssh_new_host" if stranger == "unknown" else "does not match") in str(raised.value)


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-ctr"])
def test_sftp_prefers_aes_gcm_but_still_meets_a_server_without_it(
    cipher: str, tmp_path: Path
) -> None:
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / NAME).write_bytes(b"x")
    known = tmp_path / "known_hosts"
    with sftp_server(tmp_path / "bank", encryption_algs=[cipher]) as info:
        known.write_text(f"{info.known_hosts_line}\n")
        assert _list_sftp(info, known, None) == {NAME}


# --- 10. TLS options --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ftps", "ftps-loop", "https", "https-loop"])
def test_an_unknown_certificate_authority_is_refused(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path, options={"ssl_server_cert": None}) as served:
        assert served.spec.options.ssl_server_cert is None
        with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
            read_whole(served.spec, NAME, loop=served.loop)


@pytest.mark.parametrize("kind", ["ftps", "ftps-loop", "https", "https-loop"])
def test_an_unknown_certificate_authority_is_a_permanent_error(kind: Kind, tmp_path: Path) -> None:
    # Retrying cannot make a certificate trusted: like a bad password, it ends the file.
    with _serve(kind, tmp_path, options={"ssl_server_cert": None}) as served:
        _assert_permanent_at_once(served, served.wanted(size=len(DATA)))


@pytest.mark.parametrize("problem", ["missing", "not a certificate"])
@pytest.mark.parametrize("kind", ["ftps", "ftps-loop", "https", "https-loop"])
def test_an_unusable_ca_file_is_a_clear_permanent_error(
    kind: Kind, problem: str, tmp_path: Path
) -> None:
    cafile = tmp_path / "ca.pem"
    if problem != "missing":
        cafile.write_text("not a certificate\n")
    with _serve(kind, tmp_path, options={"ssl_server_cert": str(cafile)}) as served:
        error = _assert_permanent_at_once(served, served.wanted(size=len(DATA)))
    assert f"ssl_server_cert '{cafile}' cannot be used" in str(error)


@pytest.mark.parametrize("kind", ["ftps", "ftps-loop", "https", "https-loop"])
def test_certificate_checks_can_be_turned_off(
    kind: Kind, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unchecked = {"ssl_server_cert": None, "ssl_verifypeer": False, "ssl_verifyhost": False}
    with _serve(kind, tmp_path, options=unchecked) as served:
        assert read_whole(served.spec, NAME, loop=served.loop) == DATA
    # Said in the log, once per client, as a mirror's operator must be told.
    warned = [r for r in caplog.records if "TLS certificate checks are off" in r.message]
    assert len(warned) == 1, caplog.text


@pytest.mark.parametrize("kind", ["ftps", "ftps-loop", "https", "https-loop"])
def test_a_given_certificate_authority_is_trusted(kind: Kind, tmp_path: Path) -> None:
    with _serve(kind, tmp_path) as served:
        assert served.spec.options.ssl_server_cert == str(served.info.cafile)
        assert read_whole(served.spec, NAME, loop=served.loop) == DATA


# --- 11. HTTP redirects -----------------------------------------------------------------------


@contextmanager
def _redirecting(tmp_path: Path, allow: bool) -> Iterator[SourceSpec]:
    root = tmp_path / "bank"
    root.mkdir()
    (root / NAME).write_bytes(DATA)
    with http_server(root, redirects={f"/old/{NAME}": f"/{NAME}"}) as info:
        yield _spec(info, tmp_path / "known_hosts", options={"allow_redirections": allow})


@pytest.mark.parametrize("loop", [False, True], ids=["thread", "loop"])
def test_redirects_are_followed_by_default(loop: bool, tmp_path: Path) -> None:
    with _redirecting(tmp_path, allow=True) as spec:
        assert read_whole(spec, f"old/{NAME}", loop=loop) == DATA


@pytest.mark.parametrize("loop", [False, True], ids=["thread", "loop"])
def test_redirects_can_be_refused(loop: bool, tmp_path: Path) -> None:
    with (
        _redirecting(tmp_path, allow=False) as spec,
        pytest.raises(SourceError, match="allow_redirections") as raised,
    ):
        read_whole(spec, f"old/{NAME}", loop=loop)
    assert raised.value.permanent


# --- 12. cancellation -------------------------------------------------------------------------


class Cancelled(Exception):
    """What a caller's progress callback raises to stop a transfer."""


@pytest.mark.parametrize("kind", ["ftp", "ftp-loop", "http", "http-loop", "sftp", "sftp-loop"])
def test_a_progress_callback_can_cancel_and_the_part_is_kept(kind: Kind, tmp_path: Path) -> None:
    counted: list[int] = []

    def cancel_after_first_chunk(count: int) -> None:
        counted.append(count)
        raise Cancelled

    sleeps = Sleeps()
    with _serve(kind, tmp_path) as served:
        wanted = served.wanted(size=len(DATA))
        with pytest.raises(Cancelled):
            _fetch(served, wanted, 5, sleep=sleeps, on_bytes=cancel_after_first_chunk)
        # Not retried: a cancellation is not a transfer error.
        assert sleeps.calls == []
        kept = _part(wanted).read_bytes()
        assert 0 < len(kept) == sum(counted) < len(DATA)
        assert kept == DATA[: len(kept)]
        assert not wanted.target.exists()
        # A later fetch resumes from the kept bytes.
        mark = _settled(served.info.faults)
        result = _fetch(served, wanted, 2)
        requests = list(served.info.faults.requests)
    _assert_whole(result, wanted)
    assert result.resumed == 1
    assert _starts(kind, requests, [mark]) == [0, len(kept)]
