"""MoTrPAC zip requests: FileDownloadMessages in (HTTP raw, Pub/Sub push, AMQP), one zip out.

Each request names archived objects by path; identical requests share one deflated zip at
``<md5 of the sorted names>.zip`` in the bundle store, and every requester gets one
UserNotificationMessage at the configured notifier. The runtime is inline: the zip is built
inside the request (or the AMQP delivery) that asked for it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import subprocess
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import create_engine, func, select, text

from conveyor.carts.motrpac_messages import (
    DownloadRequest,
    Requester,
    decode_notification,
    encode_download,
)
from conveyor.carts.motrpac_queue import consume
from conveyor.db.models import Cart, CartRequester, Job
from conveyor.queues import dead_lettered
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import JAPANESE_NAME, good_tar, make_tar, sha1
from tests.support.databases import POSTGRES_ADMIN, scratch_database
from tests.support.executors import retry_now
from tests.support.queues import BROKER, publish, waiting
from tests.support.receivers import Receiver, running_receiver
from tests.support.services import require_command, require_tcp

FOO = "a/b/foo.txt"
BAR = "a/b/bar.txt"
JAPANESE = f"a/c/{JAPANESE_NAME}"
ABSENT = "a/b/not-archived.txt"
MANIFEST = "conveyor-manifest.json"

ANN = Requester("ann@example.org", "Ann Smith", "u-17")
BEN = Requester("ben@example.org", "Ben Jones")


def md5_name(names: list[str]) -> str:
    """The zipper's hash of a request: md5 of the sorted object names, comma-joined."""
    return hashlib.md5(",".join(sorted(names)).encode()).hexdigest()


def message(requester: Requester, *objects: tuple[str, int]) -> bytes:
    """A FileDownloadMessage's bytes."""
    return encode_download(DownloadRequest(requester, tuple(objects)))


def push_envelope(data: bytes) -> dict[str, Any]:
    """A Pub/Sub push envelope around ``data``."""
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "4711"},
        "subscription": "projects/motrpac/subscriptions/zipper",
    }


def post_raw(client: TestClient, data: bytes) -> Any:
    """POST a raw FileDownloadMessage."""
    return client.post(
        "/motrpac/download", content=data, headers={"Content-Type": "application/octet-stream"}
    )


def post_push(client: TestClient, data: bytes) -> Any:
    """POST a FileDownloadMessage in a Pub/Sub push envelope."""
    return client.post("/motrpac/download", json=push_envelope(data))


def ingest(client: TestClient, bundle: bytes | None = None) -> dict[str, Any]:
    """Ingest a bundle (default: the published good one); its job."""
    job: dict[str, Any] = client.post("/api/v1/ingest", content=bundle or good_tar()).json()
    assert job["state"] == "succeeded", job
    return job


def other_project_tar(members: dict[str, bytes]) -> bytes:
    """A bundle of project ``other`` with ``members`` (paths under ``data/``)."""
    entries: list[dict[str, Any]] = [
        {"destinationTable": "Transactions.submitter", "value": 11},
        {"destinationTable": "Transactions.project", "value": "other"},
        {"destinationTable": "Transactions.instrument", "value": 54},
    ]
    for path, data in members.items():
        subdir, _, name = path.rpartition("/")
        entries.append(
            {
                "destinationTable": "Files",
                "name": name,
                "subdir": f"data/{subdir}",
                "size": len(data),
                "hashtype": "sha1",
                "hashsum": sha1(data),
                "mimetype": "text/plain",
            }
        )
    folders = {"data"}
    for path in members:
        parts = path.split("/")[:-1]
        folders.update("/".join(["data", *parts[:depth]]) for depth in range(1, len(parts) + 1))
    return make_tar(
        {f"data/{path}": data for path, data in members.items()},
        entries,
        directories=tuple(sorted(folders)),
    )


def zip_bytes(runtime: Runtime, key: str) -> bytes:
    """The stored zip at ``key`` in the bundle store."""
    with runtime.bundles.open_read(key) as stream:
        return stream.read()


def count(runtime: Runtime, model: Any, *where: Any) -> int:
    """How many rows of ``model`` match."""
    with runtime.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def notifications(receiver: Receiver) -> list[tuple[Requester, str, list[str]]]:
    """Every UserNotificationMessage the receiver accepted, decoded, after checking the POST."""
    told = []
    for received in receiver.delivered:
        assert (received.method, received.path) == ("POST", "/notify")
        assert received.headers["content-type"] == "application/octet-stream"
        told.append(decode_notification(received.body))
    return told


def test_raw_and_push_requests_share_one_valid_zip(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    ingest(client)
    names = [FOO, JAPANESE, ABSENT]
    file_hash = md5_name(names)
    zip_name = f"{file_hash}.zip"
    raw = post_raw(client, message(ANN, (FOO, 4), (JAPANESE, 4), (ABSENT, 9)))
    assert raw.status_code == 202, raw.text
    cart_id = raw.json()["cart"]
    assert raw.json() == {
        "cart": cart_id,
        "status": "waiting",  # recorded, then built
        "zipfile": zip_name,
        "fileHash": file_hash,
        "missing": [ABSENT],
    }
    # The same objects in another order, from someone else, as a Pub/Sub push.
    pushed = post_push(client, message(BEN, (ABSENT, 9), (JAPANESE, 4), (FOO, 4)))
    assert pushed.status_code == 202, pushed.text
    assert pushed.json() == {**raw.json(), "status": "ready"}
    assert count(runtime, Cart) == 1
    assert count(runtime, Job, Job.kind == "cart build") == 1
    with runtime.db.session() as session:
        cart = session.get(Cart, cart_id)
        assert cart is not None
        assert (cart.state, cart.format, cart.mode, cart.compression) == (
            "ready",
            "zip",
            "build",
            "deflate",
        )
        assert cart.bundle_key == zip_name
        total = cart.total_size
        requesters = session.scalars(
            select(CartRequester).where(CartRequester.cart_id == cart_id)
        ).all()
        assert sorted(
            (r.user, r.notify_kind, r.email, r.name, r.external_id) for r in requesters
        ) == [
            ("motrpac:ann@example.org", "motrpac", ANN.email, ANN.name, ANN.id),
            ("motrpac:ben@example.org", "motrpac", BEN.email, BEN.name, None),
        ]
    assert runtime.bundles.size(zip_name) == total
    data = zip_bytes(runtime, zip_name)
    assert len(data) == total
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == [MANIFEST, FOO, JAPANESE]
        assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}
        assert archive.read(FOO) == b"foo\n"
        assert archive.read(JAPANESE) == b"foo\n"
        manifest = json.loads(archive.read(MANIFEST))
    assert [entry["path"] for entry in manifest["files"]] == [FOO, JAPANESE]
    assert [entry["size"] for entry in manifest["files"]] == [4, 4]
    assert (manifest["file_count"], manifest["missing_count"]) == (2, 1)
    [gone] = manifest["missing"]
    assert gone["path"] == ABSENT
    assert "not in the archive" in gone["reason"]
    path = tmp_path / zip_name
    path.write_bytes(data)
    tested = subprocess.run(
        [require_command("unzip"), "-t", str(path)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout


def test_every_requester_gets_one_notification(make_runtime: Callable[..., Runtime]) -> None:
    with running_receiver() as receiver:
        runtime = make_runtime(motrpac_notify_url=f"{receiver.url}/notify")
        with TestClient(create_app(runtime=runtime)) as client:
            ingest(client)
            names = [BAR, FOO, ABSENT]
            zip_name = f"{md5_name(names)}.zip"
            assert (
                post_raw(client, message(ANN, (FOO, 4), (BAR, 4), (ABSENT, 1))).status_code == 202
            )
            assert notifications(receiver) == [(ANN, zip_name, sorted(names))]
            # Joining the ready zip: told at once.
            assert (
                post_push(client, message(BEN, (BAR, 4), (ABSENT, 1), (FOO, 4))).status_code == 202
            )
            # Asking again: already told, not told twice.
            assert (
                post_raw(client, message(ANN, (ABSENT, 1), (FOO, 4), (BAR, 4))).status_code == 202
            )
            told = notifications(receiver)
            assert len(receiver.requests) == 2
    assert told == [(ANN, zip_name, sorted(names)), (BEN, zip_name, sorted(names))]
    assert told[1][0].id is None  # an unset id stays unset, not ""
    with runtime.db.session() as session:
        rows = session.scalars(select(CartRequester)).all()
        assert len(rows) == 2 and all(row.notified_at is not None for row in rows)


def test_fifty_requesters_at_once_share_one_build_and_are_each_told(
    make_runtime: Callable[..., Runtime],
) -> None:
    with running_receiver() as receiver:
        runtime = make_runtime(motrpac_notify_url=f"{receiver.url}/notify")
        with TestClient(create_app(runtime=runtime)) as client:
            ingest(client)
            people = [Requester(f"user{n}@example.org", f"User {n}", str(n)) for n in range(50)]

            def ask(person: Requester) -> tuple[int, int]:
                answer = post_raw(client, message(person, (BAR, 4), (FOO, 4)))
                return answer.status_code, answer.json().get("cart", -1)

            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(ask, people))
        told = notifications(receiver)
        requests = receiver.requests
    assert [code for code, _ in answers] == [202] * 50, answers
    assert len({cart_id for _, cart_id in answers}) == 1
    assert count(runtime, Cart) == 1
    assert count(runtime, Job, Job.kind == "cart build") == 1
    told_most = Counter(person.email for person, _, _ in told).most_common(3)
    assert len(requests) == 50, f"{len(requests)} notifications; told most: {told_most}"
    zip_name = f"{md5_name([FOO, BAR])}.zip"
    assert sorted(told, key=lambda item: int(item[0].id or -1)) == [
        (person, zip_name, [BAR, FOO]) for person in people
    ]
    assert count(runtime, CartRequester, CartRequester.notified_at.is_(None)) == 0
    assert count(runtime, Job, Job.kind == "cart notify", Job.state != "succeeded") == 0


def test_a_notifier_answering_500_is_told_after_a_retry(
    make_runtime: Callable[..., Runtime],
) -> None:
    with running_receiver() as receiver:
        runtime = make_runtime(motrpac_notify_url=f"{receiver.url}/notify")
        receiver.fail_next(1, status=500)
        with TestClient(create_app(runtime=runtime)) as client:
            ingest(client)
            answer = post_raw(client, message(ANN, (FOO, 4)))
            assert answer.status_code == 202, answer.text
        assert [r.status for r in receiver.requests] == [500]
        with runtime.db.session() as session:
            [job] = session.scalars(select(Job).where(Job.kind == "cart notify")).all()
            assert (job.state, job.attempts) == ("queued", 1)
            assert "answered 500" in job.error
        assert retry_now(runtime, job.id) == 1
        assert [r.status for r in receiver.requests] == [500, 204]
        first, second = receiver.requests
        told = notifications(receiver)
    assert first.body == second.body
    assert told == [(ANN, f"{md5_name([FOO])}.zip", [FOO])]
    with runtime.db.session() as session:
        done = session.get(Job, job.id)
        assert done is not None
        assert (done.state, done.attempts) == ("succeeded", 2)


def test_a_failed_zip_sends_no_notification(make_runtime: Callable[..., Runtime]) -> None:
    with running_receiver() as receiver:
        runtime = make_runtime(motrpac_notify_url=f"{receiver.url}/notify")
        with TestClient(create_app(runtime=runtime)) as client:
            job = ingest(client)
            files = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()["files"]
            [bar] = [f for f in files if f["name"] == "bar.txt"]
            runtime.archive.delete(bar["sha256"])
            answer = post_raw(client, message(ANN, (BAR, 4)))
            assert answer.status_code == 202, answer.text
            cart = client.get(f"/api/v1/carts/{answer.json()['cart']}").json()
        assert cart["status"] == "error"
        assert cart["error"].startswith("1 of 1 files failed; first: a/b/bar.txt: ")
        assert receiver.requests == []
    assert runtime.bundles.size(f"{md5_name([BAR])}.zip") is None


BAD_REQUESTS: list[tuple[str, str, bytes, str]] = [
    (
        "garbage",
        "application/octet-stream",
        b"not a protobuf message",
        "not a FileDownloadMessage: ",
    ),
    (
        "no files",
        "application/octet-stream",
        message(ANN),
        "the FileDownloadMessage names no files",
    ),
    (
        "no email",
        "application/octet-stream",
        message(Requester("", "Nobody"), (FOO, 4)),
        "the FileDownloadMessage names no requester email",
    ),
    ("empty body", "application/octet-stream", b"", "the FileDownloadMessage names no requester"),
    (
        "envelope without message",
        "application/json",
        json.dumps({"subscription": "s"}).encode(),
        "not a Pub/Sub push envelope",
    ),
    ("envelope not json", "application/json", b"{nope", "not a Pub/Sub push envelope"),
    (
        "data not base64",
        "application/json",
        json.dumps({"message": {"data": "%%% not base64 %%%"}}).encode(),
        "message.data of the Pub/Sub push envelope is not base64",
    ),
    (
        "all missing",
        "application/octet-stream",
        message(ANN, (ABSENT, 1), ("x/y.txt", 2)),
        "none of the 2 objects asked for is in the archive",
    ),
    (
        "dot-dot path",
        "application/octet-stream",
        message(ANN, (FOO, 4), ("a/../../etc/passwd", 1)),
        "object 'a/../../etc/passwd': path 'a/../../etc/passwd' contains '..'",
    ),
]


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_are_refused_with_a_reason(
    client: TestClient, runtime: Runtime, content_type: str, body: bytes, detail: str
) -> None:
    ingest(client)
    answer = client.post("/motrpac/download", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith(detail), answer.json()
    assert "Traceback" not in answer.text
    assert count(runtime, Cart) == 0
    assert count(runtime, Job) == 1  # the ingest


def test_the_project_setting_narrows_the_lookup(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    # "other" holds a newer a/b/foo.txt and an object nobody else has.
    other = other_project_tar({FOO: b"newer foo\n", "x/only-other.txt": b"other\n"})
    request = message(ANN, (FOO, 4), ("x/only-other.txt", 6))
    zip_name = f"{md5_name([FOO, 'x/only-other.txt'])}.zip"
    runs: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
    for project in ("1234a", ""):
        runtime = make_runtime(
            data_dir=tmp_path / f"data-{project or 'all'}", motrpac_project=project
        )
        with TestClient(create_app(runtime=runtime)) as client:
            ingest(client)
            ingest(client, other)
            answer = post_raw(client, request)
            assert answer.status_code == 202, answer.text
        with zipfile.ZipFile(io.BytesIO(zip_bytes(runtime, zip_name))) as archive:
            members = {name: archive.read(name) for name in archive.namelist() if name != MANIFEST}
        runs[project] = (answer.json(), members)
    narrowed, everywhere = runs["1234a"], runs[""]
    assert narrowed[0]["missing"] == ["x/only-other.txt"]
    assert narrowed[1] == {FOO: b"foo\n"}
    assert everywhere[0]["missing"] == []
    assert everywhere[1] == {FOO: b"newer foo\n", "x/only-other.txt": b"other\n"}


# -- AMQP -------------------------------------------------------------------------------


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A fresh queue name on the machine's RabbitMQ; it and its dead-letter queue go after."""
    require_tcp("RabbitMQ", "127.0.0.1", 5672)
    name = f"conveyor-test-motrpac-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(BROKER) as connection:
        channel: Any = connection.default_channel
        for queue in (name, f"{name}.dead"):
            channel.queue_delete(queue)


def consume_with_watchdog(runtime: Runtime, name: str, limit: int) -> int:
    """Run the consumer here until ``limit`` messages are recorded (at most 30 s)."""
    stop = threading.Event()
    watchdog = threading.Timer(30.0, stop.set)
    watchdog.start()
    try:
        return consume(runtime, BROKER, name, stop, limit=limit)
    finally:
        watchdog.cancel()


@pytest.mark.integration
def test_amqp_requests_are_recorded_acknowledged_and_garbage_dead_lettered(
    client: TestClient, runtime: Runtime, queue_name: str
) -> None:
    ingest(client)
    garbage = b"\xff\xfe not a FileDownloadMessage"
    first = message(ANN, (FOO, 4), (ABSENT, 1))
    second = message(BEN, (BAR, 4))
    publish(queue_name, first, garbage, second)
    assert consume_with_watchdog(runtime, queue_name, limit=2) == 2
    assert waiting(queue_name) == (0, 1)
    zips = {f"{md5_name([FOO, ABSENT])}.zip", f"{md5_name([BAR])}.zip"}
    with runtime.db.session() as session:
        carts = session.scalars(select(Cart).order_by(Cart.id)).all()
        assert {cart.bundle_key for cart in carts} == zips
        assert [(cart.state, cart.owner) for cart in carts] == [("ready", "motrpac")] * 2
        users = sorted(session.scalars(select(CartRequester.user)).all())
        assert users == ["motrpac:ann@example.org", "motrpac:ben@example.org"]
    for key in zips:
        assert runtime.bundles.size(key)
    _live, dead = dead_lettered(queue_name)
    with Connection(BROKER) as connection:
        rejected: Any = dead.bind(connection.default_channel).get(no_ack=True)
        assert rejected is not None
        assert rejected.body == garbage
        [death] = rejected.headers["x-death"]
        assert (death["reason"], death["queue"]) == ("rejected", queue_name)


class _Failures(logging.Handler):
    """Counts the consumer's "could not record" reports and flags the first."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.first = threading.Event()

        self.causes: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if "could not record" in record.getMessage():
            self.count += 1
            if record.exc_info and record.exc_info[0] is not None:
                self.causes.add(record.exc_info[0].__name__)
            self.first.set()


@pytest.mark.integration
def test_amqp_request_is_requeued_while_the_database_is_away(
    make_runtime: Callable[..., Runtime], queue_name: str
) -> None:
    """The database really refuses connections for a while (PostgreSQL ALLOW_CONNECTIONS)."""
    with scratch_database("postgresql") as url:
        database = url.rsplit("/", 1)[-1]
        runtime = make_runtime(database_url=url)
        with TestClient(create_app(runtime=runtime)) as client:
            ingest(client)
        publish(queue_name, message(ANN, (FOO, 4)))
        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        failures = _Failures()
        logger = logging.getLogger("conveyor.carts.motrpac_queue")
        logger.addHandler(failures)

        def allow(allowed: bool) -> None:
            with admin.connect() as connection:
                connection.execute(
                    text(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allowed).lower()}")
                )
                if not allowed:
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": database},
                    )

        def come_back() -> None:
            failures.first.wait(20)
            allow(True)

        allow(False)
        helper = threading.Thread(target=come_back, daemon=True)
        helper.start()
        try:
            handled = consume_with_watchdog(runtime, queue_name, limit=1)
        finally:
            helper.join(25)
            allow(True)
            logger.removeHandler(failures)
            admin.dispose()
        assert failures.count >= 1
        assert failures.causes == {"OperationalError"}  # refused by the database, nothing else
        assert handled == 1
        assert waiting(queue_name) == (0, 0)
        with runtime.db.session() as session:
            [cart] = session.scalars(select(Cart)).all()
            assert (cart.state, cart.bundle_key) == ("ready", f"{md5_name([FOO])}.zip")
        runtime.close()
