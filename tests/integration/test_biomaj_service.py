"""Conveyor as BioMAJ's download service: the ``/api/download`` web API and the consumer.

The web API runs in process over the machine's Redis, under a key prefix of its own per
test (``biomaj-test-<hex>``, deleted afterwards). The consumer runs in a thread against the
machine's RabbitMQ (a queue of its own per test, deleted afterwards) and Redis, downloading
from a loopback FTP server the Operation messages built with Conveyor's own ``messages``
module, as BioMAJ's client sends them: one persistent message on the default exchange per
request, routed by the queue's name.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection
from prometheus_client import REGISTRY

from conveyor.mirror.biomaj.consumer import consume
from conveyor.mirror.biomaj.messages import DOWNLOAD, Operation
from conveyor.mirror.biomaj.sessions import SUFFIXES, DownloadSessions
from conveyor.mirror.transfer import PART_SUFFIX
from conveyor.queues import dead_lettered
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.biomaj import REDIS_URL, redis_prefix
from tests.support.mirror_servers import ServerInfo, ftp_server
from tests.support.queues import BROKER, publish, waiting
from tests.support.services import require_tcp

pytestmark = pytest.mark.integration

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FTP = 0  # DownloadFile.Protocol.FTP
LIST = 0  # Operation.OPERATION.LIST
TEXT = b"ACGT\n" * 1000
BINARY = random.Random(7).randbytes(200_000)
BIG = random.Random(8).randbytes(1_000_000)  # large enough to cut a transfer in the middle
CONSUMER_SECONDS = 30.0


def new_bank() -> str:
    """A bank name of its own: the Prometheus counters are process-wide."""
    return f"bank_{uuid.uuid4().hex[:10]}"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted after."""
    with redis_prefix() as name:
        yield name


@pytest.fixture
def sessions(prefix: str) -> Iterator[DownloadSessions]:
    """The sessions under the test's prefix, as the consumer and the web API see them."""
    found = DownloadSessions.from_url(REDIS_URL, prefix)
    yield found
    found.redis.close()


@pytest.fixture
def api(make_runtime: Callable[..., Runtime], prefix: str) -> Iterator[TestClient]:
    """The web API with BioMAJ's Redis configured under the test's prefix."""
    runtime = make_runtime(biomaj_redis_url=REDIS_URL, biomaj_redis_prefix=prefix)
    with TestClient(create_app(runtime=runtime)) as client:
        yield client


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A fresh queue name on the machine's RabbitMQ; it and its dead-letter queue go after."""
    require_tcp("RabbitMQ", "127.0.0.1", 5672)
    name = f"conveyor-test-biomaj-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(BROKER) as connection:
        channel: Any = connection.default_channel
        for queue in (name, f"{name}.dead"):
            channel.queue_delete(queue)


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[ServerInfo]:
    """A loopback FTP server (user:secret) over a small bank's files."""
    root = tmp_path / "remote"
    (root / "data").mkdir(parents=True)
    (root / "a.txt").write_bytes(TEXT)
    (root / "data" / "b.bin").write_bytes(BINARY)
    (root / "fake.gz").write_bytes(b"this is not gzip data\n")
    (root / "cut1.bin").write_bytes(BIG)
    (root / "cut2.bin").write_bytes(BIG)
    with ftp_server(root, user="user", password="secret") as info:
        yield info


# -- helpers -----------------------------------------------------------------------------------


def operation(
    bank: str,
    session: str,
    local_dir: Path,
    server: ServerInfo,
    files: list[tuple[str, str]],
    *,
    options: dict[str, str] | None = None,
    kind: int = DOWNLOAD,
    metadata: dict[str, int] | None = None,
) -> bytes:
    """An Operation's bytes, shaped as BioMAJ's ``download_remote_files`` builds them.

    ``files`` are (name under the remote dir, save_as or ""); ``metadata`` (size, year,
    month, day...) goes on each of them.
    """
    message: Any = Operation()
    message.type = kind
    download = message.download
    download.bank = bank
    download.session = session
    download.local_dir = str(local_dir)
    remote = download.remote_file
    remote.protocol = FTP
    remote.server = f"{server.host}:{server.port}"
    remote.remote_dir = "/"
    remote.credentials = f"{server.user}:{server.password}"
    for name, save_as in files:
        entry = remote.files.add()
        entry.name = name
        if save_as:
            entry.save_as = save_as
        for key, number in (metadata or {}).items():
            setattr(entry.metadata, key, number)
    for key, value in (options or {}).items():
        download.options[key] = value
    return bytes(message.SerializeToString())


def run_consumer(
    name: str,
    sessions: DownloadSessions,
    limit: int,
    threads: int = 4,
    seconds: float = CONSUMER_SECONDS,
) -> int:
    """``consume`` in a thread until ``limit`` messages are recorded; stopped after ``seconds``."""
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="biomaj-consumer") as pool:
        future = pool.submit(
            consume, BROKER, sessions, stop, name=name, threads=threads, limit=limit
        )
        try:
            return future.result(timeout=seconds)
        finally:
            stop.set()  # lets the consumer go when it timed out; a no-op otherwise


def files_under(folder: Path) -> dict[str, bytes]:
    """Every finished file below ``folder`` by its relative path.

    A failed transfer may leave ``NAME.part`` for a later resume (BioMAJ itself leaves the
    partial file under its final name); those are not finished files.
    """
    if not folder.exists():
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith(PART_SUFFIX)
    }


def sample(name: str, **labels: str) -> float:
    """A sample's value in the process's Prometheus registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- web API -----------------------------------------------------------------------------------


def test_ping_answers_pong(api: TestClient) -> None:
    response = api.get("/api/download")
    assert (response.status_code, response.json()) == (200, {"msg": "pong"})


def test_a_session_lives_in_redis_under_biomaj_keys(
    api: TestClient, sessions: DownloadSessions, prefix: str
) -> None:
    bank = new_bank()
    response = api.post(f"/api/download/session/{bank}")
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    assert UUID.match(session), session
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    base = f"{prefix}:{bank}:session:{session}"
    assert raw.get(base) == "1"

    status = f"/api/download/status/download/{bank}/{session}"
    assert api.get(status).json() == {"progress": -1, "errors": -1}

    sessions.record(bank, session, [])
    sessions.record(bank, session, ["x.gz: first failure", "y.gz: second failure"])
    sessions.record(bank, session, ["z.gz: third failure"])
    assert api.get(status).json() == {"progress": 3, "errors": 2}
    # The raw keys are BioMAJ's: counters as strings, the messages pushed on the left.
    assert (raw.get(f"{base}:progress"), raw.get(f"{base}:error")) == ("3", "2")
    assert raw.lrange(f"{base}:error:info", 0, -1) == [
        "z.gz: third failure",
        "y.gz: second failure",
        "x.gz: first failure",
    ]

    errors = f"/api/download/error/download/{bank}/{session}"
    assert api.get(errors).json() == {
        "error": ["x.gz: first failure", "y.gz: second failure", "z.gz: third failure"]
    }
    assert api.get(errors).json() == {"error": []}  # reading them removed them
    assert api.get(status).json() == {"progress": 3, "errors": 2}  # the counts stay

    listed = f"/api/download/status/list/{bank}/{session}"
    result = f"/api/download/list/{bank}/{session}"
    assert api.get(result).json() == {"files": None}
    raw.set(f"{base}:files", "b'\\n\\x05a.txt'")  # as BioMAJ's list() stores it: str(bytes)
    assert api.get(listed).json() == {"status": True}  # progress exists
    assert api.get(result).json() == {"files": "b'\\n\\x05a.txt'"}

    sessions.record(bank, session, ["late.gz: failed after the errors were read"])
    keys = [f"{base}{suffix}" for suffix in SUFFIXES]
    assert raw.exists(*keys) == 5  # the session, both counters, the messages, the listing
    cleared = api.delete(f"/api/download/session/{bank}/{session}")
    assert (cleared.status_code, cleared.json()) == (200, {"msg": "session cleared"})
    assert raw.exists(*keys) == 0
    assert api.get(status).json() == {"progress": -1, "errors": -1}
    assert api.get(listed).json() == {"status": False}
    raw.close()


def test_a_bank_name_with_a_colon_is_refused_with_a_reason(api: TestClient, prefix: str) -> None:
    response = api.post("/api/download/session/bad:bank")
    assert response.status_code == 400, response.text
    assert "bank 'bad:bank' must be non-empty, without ':'" in response.json()["detail"]
    session = str(uuid.uuid4())
    for path in (
        f"/api/download/status/download/bad:bank/{session}",
        "/api/download/error/download/good/bad:session",
    ):
        answer = api.get(path)
        assert answer.status_code == 400, (path, answer.text)
        assert "without ':'" in answer.json()["detail"]
    raw = redis.Redis.from_url(REDIS_URL)
    assert list(raw.scan_iter(match=f"{prefix}:*")) == []  # nothing was written
    raw.close()


def test_without_redis_the_service_is_unavailable(client: TestClient) -> None:
    assert client.get("/api/download").json() == {"msg": "pong"}  # health needs no Redis
    for method, path in (
        ("POST", "/api/download/session/genome"),
        ("GET", f"/api/download/status/download/genome/{uuid.uuid4()}"),
        ("DELETE", f"/api/download/session/genome/{uuid.uuid4()}"),
    ):
        response = client.request(method, path)
        assert response.status_code == 503, (path, response.text)
        assert "CONVEYOR_BIOMAJ_REDIS_URL" in response.json()["detail"]


def test_posted_metrics_show_on_the_metrics_page(api: TestClient) -> None:
    bank = new_bank()
    # What BioMAJ's consumer posts: one entry per file, failures as {"bank", "error"}.
    posted = [
        {"bank": bank, "host": "node1", "size": 1000, "download_time": 2},
        {"bank": bank, "host": "node1", "size": 24, "download_time": 1},
        {"bank": bank, "error": 1},
    ]
    response = api.post("/api/download/metrics", json=posted)
    assert (response.status_code, response.json()) == (200, {"msg": "OK"})
    text = api.get("/metrics").text
    for line in (
        f'biomaj_download_total{{bank="{bank}"}} 2.0',
        f'biomaj_download_errors_total{{bank="{bank}"}} 1.0',
        f'biomaj_download_file_size_total{{bank="{bank}",host="node1"}} 1024.0',
        f'biomaj_download_file_time_total{{bank="{bank}",host="node1"}} 3.0',
    ):
        assert line in text.splitlines(), line
    refused = api.post("/api/download/metrics", json=[{"bank": "", "size": -1}])
    assert refused.status_code == 422


# -- the consumer --------------------------------------------------------------------------


def test_the_consumer_downloads_records_and_acknowledges(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    bank = new_bank()
    live = sessions.create(bank)
    gone = sessions.create(bank)
    sessions.clean(bank, gone)
    garbage = b"\xff\x00 not an Operation"
    good_dir, missing_dir, gone_dir = (tmp_path / name for name in ("good", "missing", "gone"))
    # Garbage and the cleaned session first: they are settled before the recorded ones, so
    # nothing is still in flight when the consumer reaches its limit.
    publish(
        queue_name,
        garbage,
        operation(bank, gone, gone_dir, ftp, [("a.txt", "")]),
        operation(bank, live, good_dir, ftp, [("a.txt", ""), ("data/b.bin", "flat/b.bin")]),
        operation(bank, live, missing_dir, ftp, [("missing.txt", "")]),
    )
    downloads_before = sample("biomaj_download_total", bank=bank)

    assert run_consumer(queue_name, sessions, limit=2) == 2

    assert files_under(good_dir) == {"a.txt": TEXT, "flat/b.bin": BINARY}
    assert files_under(missing_dir) == {}
    assert sessions.status(bank, live) == (2, 1)  # two messages finished, one failed
    [error] = sessions.drain_errors(bank, live)
    assert error.startswith("missing.txt: "), error
    # The cleaned session stays cleaned: nothing downloaded, no key brought back.
    assert files_under(gone_dir) == {}
    assert not sessions.exists(bank, gone)
    assert sessions.status(bank, gone) == (-1, -1)
    assert sessions.drain_errors(bank, gone) == []
    assert sample("biomaj_download_total", bank=bank) - downloads_before == 2
    assert sample("biomaj_download_errors_total", bank=bank) == 1

    assert waiting(queue_name) == (0, 1)  # everything acknowledged but the garbage
    _live, dead = dead_lettered(queue_name)
    with Connection(BROKER) as connection:
        rejected: Any = dead.bind(connection.default_channel).get(no_ack=True)
        assert rejected is not None
        assert rejected.body == garbage
        [death] = rejected.headers["x-death"]
        assert (death["reason"], death["queue"]) == ("rejected", queue_name)


def test_the_options_map_steers_checks_and_retries(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    bank = new_bank()
    session = sessions.create(bank)
    ftp.faults.cut_after.update({"cut1.bin": 300_000, "cut2.bin": 300_000})
    # wait_none where a retry happens: the default wait_fixed(3) would only slow the test.
    quick = {"wait_policy": "wait_none"}
    cases: list[tuple[str, str, dict[str, str], int]] = [
        ("skip", "fake.gz", {"skip_check_uncompress": "true"}, DOWNLOAD),
        ("check", "fake.gz", quick, DOWNLOAD),
        ("once", "cut1.bin", {"stop_condition": "stop_after_attempt(1)", **quick}, DOWNLOAD),
        ("twice", "cut2.bin", {"stop_condition": "stop_after_attempt(2)", **quick}, DOWNLOAD),
        ("maybe", "a.txt", {"skip_check_uncompress": "perhaps"}, DOWNLOAD),
        ("evil", "a.txt", {"stop_condition": "__import__('os').system('true')"}, DOWNLOAD),
        ("unknown", "a.txt", {"no_such_option": "1"}, DOWNLOAD),
        ("listing", "a.txt", {}, LIST),
    ]
    publish(
        queue_name,
        *(
            operation(bank, session, tmp_path / folder, ftp, [(name, "")], options=opts, kind=kind)
            for folder, name, opts, kind in cases
        ),
    )

    assert run_consumer(queue_name, sessions, limit=len(cases)) == len(cases)

    assert files_under(tmp_path / "skip") == {"fake.gz": b"this is not gzip data\n"}
    assert files_under(tmp_path / "check") == {}  # the corrupt download was thrown away
    assert files_under(tmp_path / "twice") == {"cut2.bin": BIG}  # resumed after the cut
    assert ftp.faults.cut_after == {}  # both cuts did fire
    assert not (tmp_path / "once" / "cut1.bin").exists()
    for folder in ("maybe", "evil", "unknown", "listing"):
        assert files_under(tmp_path / folder) == {}, folder
    assert sessions.status(bank, session) == (len(cases), 6)
    errors = sessions.drain_errors(bank, session)
    expected = {
        "check": "fake.gz: fake.gz is not a valid archive",
        "once": "cut1.bin: ",
        "maybe": "option skip_check_uncompress: 'perhaps' is not a boolean",
        "evil": "invalid stop policy",
        "unknown": "unknown download option 'no_such_option'",
        "listing": "only DOWNLOAD operations are served",
    }
    assert len(errors) == len(expected), errors
    for case, text in expected.items():
        matching = [error for error in errors if text in error]
        assert len(matching) == 1, f"{case}: {text!r} in {errors}"
    assert waiting(queue_name) == (0, 0)


def test_the_remote_date_stamps_the_download(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    bank = new_bank()
    session = sessions.create(bank)
    day = {"year": 2024, "month": 2, "day": 29}
    local = tmp_path / "local"
    publish(queue_name, operation(bank, session, local, ftp, [("a.txt", "")], metadata=day))
    assert run_consumer(queue_name, sessions, limit=1) == 1
    assert sessions.status(bank, session) == (1, -1)
    stamp = (local / "a.txt").stat().st_mtime
    assert stamp == datetime(2024, 2, 29).timestamp()  # midnight local time, as BioMAJ does


def test_a_message_with_an_impossible_date_is_still_settled(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    """A bad remote date must not leave the message unacknowledged (a poison message).

    Fails today: ``datetime(2024, 13, 1)`` raises ValueError in ``_set_remote_date``
    (downloads.py), nothing in ``download_operation`` or ``OperationConsumer._work`` catches
    it, and the pool swallows it: the message is never recorded nor acknowledged, and goes
    back to the queue when the consumer stops, for the next one to choke on.
    """
    bank = new_bank()
    session = sessions.create(bank)
    bad = {"year": 2024, "month": 13, "day": 1}
    local = tmp_path / "local"
    publish(queue_name, operation(bank, session, local, ftp, [("a.txt", "")], metadata=bad))
    try:
        handled = run_consumer(queue_name, sessions, limit=1, seconds=10)
    except TimeoutError:
        handled = 0
    assert handled == 1, "the message was never settled"
    progress, _errors = sessions.status(bank, session)
    assert progress == 1
    assert waiting(queue_name) == (0, 0)


def test_a_file_that_cannot_be_written_here_is_that_files_error(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    """local_dir under a plain file: the kernel refuses the folder. The error is the
    file's, named, with the reason (not an "internal error" of the operation)."""
    bank = new_bank()
    session = sessions.create(bank)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    publish(queue_name, operation(bank, session, blocker / "bank", ftp, [("a.txt", "")]))
    assert run_consumer(queue_name, sessions, limit=1) == 1
    assert sessions.status(bank, session) == (1, 1)
    [error] = sessions.drain_errors(bank, session)
    assert error.startswith("a.txt: could not be written here: [Errno 20] Not a directory"), error
    assert waiting(queue_name) == (0, 0)


def test_operations_that_cannot_be_recorded_are_dead_lettered(
    ftp: ServerInfo, sessions: DownloadSessions, queue_name: str, tmp_path: Path
) -> None:
    """An Operation without a download, or naming a bank no key can hold, goes to ``.dead``.

    Fails today: both decode (``type`` is their only required field; a bank is any string),
    then ``OperationConsumer._work`` (consumer.py) calls ``sessions.exists`` with an empty or
    ``:``-bearing bank, which raises ``BadName``; only ``redis.RedisError`` is caught there,
    so the pool swallows the error and the message is never settled: it stays unacknowledged
    and comes back each time a consumer stops.
    """
    bank = new_bank()
    session = sessions.create(bank)
    process: Any = Operation()
    process.type = 2  # PROCESS, with its ``process`` part and no ``download``
    process.process.exec = "true"
    publish(
        queue_name,
        bytes(process.SerializeToString()),
        operation("bad:bank", session, tmp_path / "bad", ftp, [("a.txt", "")]),
        operation(bank, session, tmp_path / "good", ftp, [("a.txt", "")]),
    )
    assert run_consumer(queue_name, sessions, limit=1, seconds=10) == 1
    assert files_under(tmp_path / "good") == {"a.txt": TEXT}
    assert waiting(queue_name) == (0, 2)
