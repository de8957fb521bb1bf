"""``conveyor consumer serve``: Pacifica's example consumer fed by a producer over webhooks.

One real producer (``conveyor serve``, auth off) for the module; the test of a consumer
that leaves publishing to the runner has its own, with token auth. The example consumer
is installed once and shared by every test's work dir (its venv takes seconds to build),
each test getting its own spool and records. Where a test must sign a delivery itself it
reads the consumer's subscription secret, which nothing public exposes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from conveyor.client.api import ConveyorClient
from conveyor.client.bundler import BundleStream, collect, metadata_fields
from conveyor.consumers.installed import installed
from conveyor.consumers.package import read_package
from conveyor.consumers.provenance import CONSUMER, DERIVED_FROM, LINEAGE, RUN, VERSION
from conveyor.consumers.remote import RemoteConsumer, RemoteOptions
from tests.support.consumers import make_zip
from tests.support.server import CONVEYOR, conveyor_env, run_conveyor, running_server
from tests.support.services import free_port
from tests.support.waiting import eventually

SEED = Path(__file__).parents[1] / "support" / "seed_consumer"
SEED_FILES = ("__main__.py", "init.sh", "jsonpath2.txt", "requirements.txt")
WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def producer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The producing Conveyor (auth off, loopback), with quick retries."""
    with running_server(
        tmp_path_factory.mktemp("producer"),
        delivery_backoff_seconds="0.2",
        delivery_backoff_max_seconds="1",
    ) as url:
        yield url


@pytest.fixture(scope="module")
def seed_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published example, zipped with its files at the top."""
    folder = tmp_path_factory.mktemp("seed")
    return make_zip(folder / "upper.zip", {name: (SEED / name).read_bytes() for name in SEED_FILES})


@pytest.fixture(scope="module")
def seed_installed(tmp_path_factory: pytest.TempPathFactory, seed_zip: Path) -> Path:
    """An ``installed`` folder holding the example's code and venv, built once."""
    base = tmp_path_factory.mktemp("installed") / "installed"
    package = read_package(seed_zip)

    def write(target: Path) -> None:
        target.write_bytes(seed_zip.read_bytes())

    installed(base, package.sha256, write)
    return base


@pytest.fixture
def work(tmp_path: Path, seed_installed: Path) -> Path:
    """A fresh work dir whose ``installed`` is the shared, ready one."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "installed").symlink_to(seed_installed, target_is_directory=True)
    return folder


def options(url: str, work: Path, name: str = "upper") -> RemoteOptions:
    return RemoteOptions(
        producer_url=url, token=None, work_dir=work, name=name, timeout_seconds=120
    )


@contextmanager
def serving(package: Path, url: str, work: Path) -> Iterator[RemoteConsumer]:
    consumer = RemoteConsumer(package, options(url, work))
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop()


def upload(url: str, folder: Path, instrument: str = "i1", token: str | None = None) -> int:
    """Publish ``folder`` on the producer (project p1); the new transaction's id."""
    stream = BundleStream(collect([folder]), metadata_fields("p1", instrument, [], None))
    with ConveyorClient(url, token) as client:
        job = client.wait(int(client.upload(stream.chunks(), stream.length())["id"]), timeout=60)
    assert job["state"] == "succeeded", job
    return int(job["transaction_id"])


def notes(root: Path, text: str) -> Path:
    """A folder ``notes`` with one text file (the example's input) and one binary file."""
    folder = root / "notes"
    folder.mkdir(parents=True)
    (folder / "hello.txt").write_text(text)
    (folder / "raw.bin").write_bytes(bytes(range(256)))
    return folder


def get(url: str, path: str, **params: Any) -> Any:
    answer = httpx.get(f"{url}{path}", params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()


def subscriptions(url: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in get(url, "/api/v1/subscriptions")["subscriptions"]}


def transaction(url: str, transaction_id: int) -> dict[str, Any]:
    found: dict[str, Any] = get(url, f"/api/v1/transactions/{transaction_id}")
    found["kv"] = {row["key"]: row["value"] for row in found["key_values"]}
    return found


def ingest_event(url: str, transaction_id: int) -> dict[str, Any]:
    """The producer's event for a new transaction, in the Pacifica shape it delivers."""
    after = None
    while True:
        params = {"type": "org.pacifica.metadata.ingest", **({"after": after} if after else {})}
        page = get(url, "/api/v1/events", **params)
        for event in page["events"]:
            if event.get("subject") == f"transactions/{transaction_id}":
                return {
                    "cloudEventsVersion": "0.1",
                    "eventType": event["type"],
                    "source": event["source"],
                    "eventID": event["id"],
                    "eventTime": event["time"],
                    "extensions": {},
                    "contentType": "application/json",
                    "data": event["data"],
                }
        after = page["next_after"]
        assert after, f"no ingest event for transaction {transaction_id}"


def test_the_published_example_serves_remotely_once_per_event(
    producer: str, seed_zip: Path, work: Path, tmp_path: Path
) -> None:
    with serving(seed_zip, producer, work) as consumer:
        # subscribed with the package's filter, for Pacifica-shaped events
        assert consumer.subscription_id is not None
        subscription = subscriptions(producer)[consumer.subscription_id]
        assert subscription["target"] == consumer.callback_url
        assert consumer.callback_url.startswith("http://127.0.0.1:")
        assert consumer.callback_url.endswith("/events")
        assert subscription["shape"] == "pacifica"
        assert subscription["dialect"] == "jsonpath2"
        assert subscription["filter"] == (SEED / "jsonpath2.txt").read_text().strip()

        original = upload(producer, notes(tmp_path / "input", "Hello, consumer!\n"))
        eventually(lambda: len(consumer.runs) >= 2, "the run and the skip of its output")
        ran, skipped = consumer.runs
        assert ran["state"] == "succeeded", ran
        derived = ran["transaction_id"]
        assert derived > original
        assert get(producer, f"/api/v1/events/{ran['event']}")["subject"] == (
            f"transactions/{original}"
        )

        # the output: the text file upper-cased, linked to its input
        output = transaction(producer, derived)
        assert [(f["subdir"], f["name"]) for f in output["files"]] == [("notes", "hello.txt")]
        content = httpx.get(f"{producer}/api/v1/files/{output['files'][0]['id']}/content")
        assert content.content == b"HELLO, CONSUMER!\n"
        assert output["project"] == "p1"
        assert output["instrument"] == "i1"
        assert output["kv"][CONSUMER] == "upper"
        assert json.loads(output["kv"][LINEAGE]) == ["upper"]
        assert output["kv"][DERIVED_FROM] == str(original)
        assert output["kv"][RUN] == f"remote:{ran['event']}"
        assert output["kv"][VERSION] == read_package(seed_zip).version
        assert output["kv"]["Transactions._id"] == str(original)  # the example's own key

        # the output's own event reached the consumer, which would not run on it
        assert skipped["state"] == "skipped", skipped
        assert get(producer, f"/api/v1/events/{skipped['event']}")["subject"] == (
            f"transactions/{derived}"
        )
        assert "consumer 'upper' made this data" in skipped["error"]
        assert sorted(path.name for path in (work / "done").iterdir()) == sorted(
            [ran["event"], skipped["event"]]
        )
        assert json.loads((work / "done" / ran["event"]).read_text()) == ran
        assert list((work / "spool").iterdir()) == []
        assert list((work / "runs").iterdir()) == []

        # the producer delivers the input's event again: accepted, not run again
        replayed = httpx.post(f"{producer}/api/v1/events/{ran['event']}/replay", timeout=10)
        assert replayed.status_code == 202, replayed.text
        delivery_ids = replayed.json()["deliveries"]
        assert len(delivery_ids) == 1

        def delivered_again() -> dict[str, Any] | None:
            delivery: dict[str, Any] = get(producer, f"/api/v1/deliveries/{delivery_ids[0]}")
            done = delivery["state"] == "delivered" and len(delivery["history"]) == 2
            return delivery if done else None

        delivery = eventually(delivered_again, "the replayed delivery")
        assert delivery["subscription"] == consumer.subscription_id
        assert [attempt["status"] for attempt in delivery["history"]] == [204, 204]
        assert consumer.runs == [ran, skipped]
        assert list((work / "spool").iterdir()) == []
        assert get(producer, "/api/v1/transactions", after=derived)["transactions"] == []


def test_the_same_signed_delivery_twice_is_spooled_once(
    producer: str, seed_zip: Path, work: Path, tmp_path: Path
) -> None:
    consumer = RemoteConsumer(seed_zip, options(producer, work))
    consumer.start()
    consumer.stop()  # the worker is gone: what is accepted now stays spooled
    original = upload(producer, notes(tmp_path / "input", "twice\n"))
    event = ingest_event(producer, original)
    body = json.dumps(event).encode()
    # signed as the producer signs (the secret was the subscription's)
    signer = Webhook(consumer._secret)
    headers = {
        "webhook-id": event["eventID"],
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signer.sign(event["eventID"], datetime.now(UTC), body.decode()),
    }
    assert consumer.accept(body, headers) == HTTPStatus.NO_CONTENT
    spooled = work / "spool" / f"{event['eventID']}.json"
    assert spooled.read_bytes() == body
    first_write = spooled.stat().st_mtime_ns
    assert consumer.accept(body, headers) == HTTPStatus.NO_CONTENT
    assert [path.name for path in (work / "spool").iterdir()] == [spooled.name]
    assert spooled.stat().st_mtime_ns == first_write
    assert consumer.runs == []


def test_an_event_spooled_before_a_stop_runs_after_the_restart(
    producer: str, seed_zip: Path, work: Path, tmp_path: Path
) -> None:
    first = RemoteConsumer(seed_zip, options(producer, work))
    first.start()
    first.stop()
    # accepted (answered 204) but never run: what a crash right after the answer leaves
    original = upload(producer, notes(tmp_path / "input", "after the restart\n"))
    event = ingest_event(producer, original)
    body = json.dumps(event).encode()
    headers = {
        "webhook-id": event["eventID"],
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": Webhook(first._secret).sign(
            event["eventID"], datetime.now(UTC), body.decode()
        ),
    }
    assert first.accept(body, headers) == HTTPStatus.NO_CONTENT
    assert (work / "spool" / f"{event['eventID']}.json").exists()
    assert first.runs == []

    with serving(seed_zip, producer, work) as second:
        assert second.subscription_id != first.subscription_id
        eventually(lambda: len(second.runs) >= 2, "the spooled event's run and its output's skip")
        ran, skipped = second.runs
    assert ran["event"] == event["eventID"]
    assert ran["state"] == "succeeded", ran
    assert skipped["state"] == "skipped"
    output = transaction(producer, ran["transaction_id"])
    assert output["kv"][DERIVED_FROM] == str(original)
    content = httpx.get(f"{producer}/api/v1/files/{output['files'][0]['id']}/content")
    assert content.content == b"AFTER THE RESTART\n"
    assert list((work / "spool").iterdir()) == []
    assert (work / "done" / event["eventID"]).exists()
    # and it was run once
    assert get(producer, "/api/v1/transactions", after=ran["transaction_id"])["transactions"] == []


def test_a_delivery_with_a_bad_signature_is_refused_and_not_spooled(
    producer: str, seed_zip: Path, work: Path
) -> None:
    body = json.dumps({"eventID": "forged-1", "eventType": "x", "data": []}).encode()
    now = datetime.now(UTC)
    stranger = Webhook("whsec_" + "c2VjcmV0LW9mLXNvbWVvbmUtZWxzZS0xMjM0NTY3OA==")
    forged = {
        "no signature": {"webhook-id": "forged-1", "webhook-timestamp": str(int(now.timestamp()))},
        "a made-up signature": {
            "webhook-id": "forged-1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        },
        "another secret's signature": {
            "webhook-id": "forged-1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": stranger.sign("forged-1", now, body.decode()),
        },
        "no headers": {},
    }
    with serving(seed_zip, producer, work) as consumer:
        for why, headers in forged.items():
            answer = httpx.post(consumer.callback_url, content=body, headers=headers, timeout=10)
            assert answer.status_code == HTTPStatus.UNAUTHORIZED, why
            assert consumer.accept(body, headers) == HTTPStatus.UNAUTHORIZED, why
        assert httpx.post(consumer.callback_url, content=b"", timeout=10).status_code == 400
        wrong_path = consumer.callback_url.replace("/events", "/other")
        assert httpx.post(wrong_path, content=body, timeout=10).status_code == 404
        assert list((work / "spool").iterdir()) == []
        assert list((work / "done").iterdir()) == []
        assert consumer.runs == []


def test_stop_removes_the_subscription(producer: str, seed_zip: Path, work: Path) -> None:
    consumer = RemoteConsumer(seed_zip, options(producer, work, name="stopping"))
    consumer.start()
    subscription_id = consumer.subscription_id
    callback = consumer.callback_url
    assert subscription_id in subscriptions(producer)
    assert subscriptions(producer)[subscription_id]["name"] == f"consumer stopping at {callback}"
    consumer.stop()
    assert consumer.subscription_id is None
    assert subscription_id not in subscriptions(producer)
    gone = httpx.get(f"{producer}/api/v1/subscriptions/{subscription_id}", timeout=10)
    assert gone.status_code == 404
    with pytest.raises(httpx.TransportError):
        httpx.post(callback, content=b"{}", timeout=5)


# A consumer without requirements that writes DST/uploads and leaves publishing to the runner.
REVERSE = b"""import json, os, pathlib, sys

src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
event = json.loads((src / "notification.json").read_text())
names = [e.get("name") for e in event["data"] if e.get("destinationTable") == "Files"]
if "fail.txt" in names:
    print("refusing fail.txt", file=sys.stderr)
    sys.exit(3)
downloads = src / "downloads"
for path in sorted(downloads.rglob("*")):
    if path.is_file():
        out = dst / "uploads" / path.relative_to(downloads).parent / f"{path.stem}.rev{path.suffix}"
        out.write_bytes(path.read_bytes()[::-1])
(dst / "uploads" / "summary").mkdir()
seen = {key: os.environ.get(key) for key in ("CONVEYOR_CONSUMER", "CONVEYOR_PROVENANCE")}
seen["settings"] = sorted(key for key in os.environ if key.startswith("CONVEYOR_"))
(dst / "uploads" / "summary" / "env.json").write_text(json.dumps(seen))
"""


def test_outputs_are_published_for_a_consumer_that_does_not_upload(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a setting of this machine's own Conveyor, which a consumer must not see
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", "not-for-consumers")
    data = tmp_path / "secure"
    settings = {"auth": "token"}
    made = run_conveyor(data, settings, ["admin", "token", "create", "--user", "alice"])
    token = json.loads(made[0])["token"]
    package = make_zip(tmp_path / "reverse.zip", {"__main__.py": REVERSE})
    with running_server(data, auth="token") as url:
        consumer = RemoteConsumer(
            package,
            RemoteOptions(producer_url=url, token=token, work_dir=work, timeout_seconds=120),
        )
        consumer.start()
        try:
            assert consumer.name == "reverse"  # named after the zip
            stream = BundleStream(
                collect([notes(tmp_path / "input", "abc\n")]),
                metadata_fields("p1", "i9", [("Tag", "in")], None),
            )
            with ConveyorClient(url, token) as client:
                job = client.wait(int(client.upload(stream.chunks(), stream.length())["id"]))
                failing = tmp_path / "failing" / "fail.txt"
                failing.parent.mkdir()
                failing.write_text("no\n")
                bad = BundleStream(collect([failing]), metadata_fields("p1", None, [], None))
                bad_job = client.wait(int(client.upload(bad.chunks(), bad.length())["id"]))
            original, refused = job["transaction_id"], bad_job["transaction_id"]
            eventually(lambda: len(consumer.runs) >= 3, "two runs and the skip of one output")
        finally:
            consumer.stop()
        by_input = {}
        for run in consumer.runs:
            headers = {"Authorization": f"Bearer {token}"}
            event = httpx.get(f"{url}/api/v1/events/{run['event']}", headers=headers).json()
            by_input[int(event["subject"].split("/")[1])] = run
        ran, failed = by_input[original], by_input[refused]
        assert ran["state"] == "succeeded", ran
        assert failed["state"] == "failed"
        assert "exit status 3" in failed["error"]
        assert "refusing fail.txt" in failed["error"]
        skipped = by_input[ran["transaction_id"]]
        assert skipped["state"] == "skipped"
        assert "consumer 'reverse' made this data" in skipped["error"]

        with ConveyorClient(url, token) as client:
            output = client.request("GET", f"/api/v1/transactions/{ran['transaction_id']}")
            files = {
                f"{row['subdir']}/{row['name']}": client.http.get(
                    f"/api/v1/files/{row['id']}/content"
                ).content
                for row in output["files"]
            }
            listed = client.request("GET", "/api/v1/transactions")
    # the failed run published nothing
    assert sorted(row["id"] for row in listed["transactions"]) == sorted(
        [original, refused, ran["transaction_id"]]
    )
    assert sorted(files) == ["notes/hello.rev.txt", "notes/raw.rev.bin", "summary/env.json"]
    assert files["notes/hello.rev.txt"] == b"\ncba"
    assert files["notes/raw.rev.bin"] == bytes(range(256))[::-1]
    seen = json.loads(files["summary/env.json"])
    assert seen["CONVEYOR_CONSUMER"] == "reverse"
    assert seen["settings"] == [
        "CONVEYOR_CONSUMER",
        "CONVEYOR_PROVENANCE",
        "CONVEYOR_RUN_RECORD",
        "CONVEYOR_TOKEN",
        "CONVEYOR_URL",
    ]
    # the input's project and instrument; the run's provenance; the token's user
    assert (output["project"], output["instrument"]) == ("p1", "i9")
    assert output["submitter"] == "alice"
    key_values = {row["key"]: row["value"] for row in output["key_values"]}
    assert json.loads(seen["CONVEYOR_PROVENANCE"]) == key_values
    assert key_values[DERIVED_FROM] == str(original)
    assert key_values[LINEAGE] == '["reverse"]'
    assert key_values[RUN] == f"remote:{ran['event']}"
    assert "Tag" not in key_values


def test_serve_refuses_a_bad_listen_address_and_an_unreachable_producer(
    seed_zip: Path, work: Path, tmp_path: Path
) -> None:
    env = conveyor_env(tmp_path / "cli-data")
    base = [*CONVEYOR, "consumer", "serve", str(seed_zip), "--work-dir", str(work)]

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    bad = serve("--producer", "http://127.0.0.1:9", "--listen", "nowhere")
    assert bad.returncode == 2
    assert "--listen takes host:port, not 'nowhere'" in bad.stderr
    unreachable = serve("--producer", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1
    assert "cannot reach http://127.0.0.1:" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr + bad.stderr


def read_lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@contextmanager
def serve_command(
    package: Path,
    url: str,
    work: Path,
    tmp_path: Path,
    name: str,
    options: tuple[str, ...] = (),
) -> Iterator[tuple[subprocess.Popen[str], str, Callable[[], str]]]:
    """``conveyor consumer serve [options]`` once it says it listens: the process, its
    callback URL, and a function giving all it wrote on stderr once it has ended."""
    command = [*CONVEYOR, "consumer", "serve", str(package), "--producer", url, *options]
    process = subprocess.Popen(
        [*command, "--work-dir", str(work), "--name", name],
        env=conveyor_env(tmp_path / "cli-data"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(process.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []

    def stderr() -> str:
        reader.join(timeout=30)
        while not lines.empty():
            line = lines.get_nowait()
            if line is not None:
                seen.append(line)
        return "".join(seen)

    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not any("listening at" in line for line in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"serve ended early: {''.join(seen)}"
            seen.append(line)
        listening = next(line for line in seen if "listening at" in line)
        assert listening.startswith(f"consumer {name} listening at http://127.0.0.1:")
        yield process, listening.split("listening at ", 1)[1].strip(), stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_the_serve_command_subscribes_then_unsubscribes_on_a_signal(
    producer: str, seed_zip: Path, work: Path, tmp_path: Path, stop_with: signal.Signals
) -> None:
    with serve_command(seed_zip, producer, work, tmp_path, "upper-cli") as (process, callback, log):
        assert callback.endswith("/events")
        mine = [row for row in subscriptions(producer).values() if row["target"] == callback]
        assert len(mine) == 1
        assert mine[0]["name"] == f"consumer upper-cli at {callback}"
        process.send_signal(stop_with)
        assert process.wait(timeout=60) == 0
    assert "stopping: removing the subscription" in log()
    assert "Traceback" not in log()
    assert all(row["target"] != callback for row in subscriptions(producer).values())


def test_serve_stopped_after_its_producer_says_so_in_one_line(
    seed_zip: Path, work: Path, tmp_path: Path
) -> None:
    with ExitStack() as producer_running:
        url = producer_running.enter_context(running_server(tmp_path / "short-lived"))
        with serve_command(seed_zip, url, work, tmp_path, "orphan") as (process, _, log):
            producer_running.close()  # the producer is gone, the consumer still serving
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
    assert code == 1
    assert "Traceback" not in log()
    assert "cannot reach" in log().strip().splitlines()[-1]


def test_an_event_recorded_done_is_not_run_again_when_its_spool_file_survived(
    producer: str, seed_zip: Path, work: Path
) -> None:
    made_by_upper = {
        "destinationTable": "TransactionKeyValue",
        "key": LINEAGE,
        "value": '["upper"]',
    }
    spool, done = work / "spool", work / "done"
    spool.mkdir()
    done.mkdir()
    record = {"event": "already-done", "state": "succeeded", "transaction_id": 1}
    (done / "already-done").write_text(json.dumps(record))
    for number, event_id in enumerate(("already-done", "fresh"), start=1):
        path = spool / f"{event_id}.json"
        path.write_text(json.dumps({"eventID": event_id, "data": [made_by_upper]}))
        os.utime(path, (number * 1000, number * 1000))  # the surviving one is older
    with serving(seed_zip, producer, work) as consumer:
        eventually(lambda: any(run["event"] == "fresh" for run in consumer.runs), "fresh's turn")
        assert [run["event"] for run in consumer.runs] == ["fresh"]
    assert json.loads((done / "already-done").read_text()) == record
    assert list(spool.iterdir()) == []


# A consumer that tries its CONVEYOR_TOKEN on the producer and writes down what it saw, and
# its memory limit, to a file outside the run (the secret is not published).
PROBE = """import json, os, pathlib, resource, urllib.error, urllib.request

url, token = os.environ["CONVEYOR_URL"], os.environ["CONVEYOR_TOKEN"]


def status(method, path, body=None):
    request = urllib.request.Request(
        url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


seen = {
    "token": token,
    "read": status("GET", "/api/v1/transactions"),
    "subscribe": status(
        "POST", "/api/v1/subscriptions", {"name": "x", "target": "http://127.0.0.1:9/hook"}
    ),
    "list tokens": status("GET", "/api/v1/tokens"),
    "another token": status("POST", "/api/v1/tokens/consumer-run", {}),
    "memory": resource.getrlimit(resource.RLIMIT_AS)[0],
}
pathlib.Path(RESULT).write_text(json.dumps(seen))
"""


def test_each_run_gets_a_scoped_token_of_its_own_revoked_after_it(
    work: Path, tmp_path: Path
) -> None:
    data = tmp_path / "secure"
    settings = {"auth": "token", "run_token_max_seconds": "7200"}
    made = run_conveyor(data, settings, ["admin", "token", "create", "--user", "alice"])
    operator = json.loads(made[0])["token"]
    result = tmp_path / "seen.json"
    package = make_zip(
        tmp_path / "probe.zip", {"__main__.py": PROBE.replace("RESULT", repr(str(result))).encode()}
    )
    with running_server(data, **settings) as url:
        # runs could get no token under this server's maximum: serve stops at once, saying so
        serve = [*CONVEYOR, "consumer", "serve", str(package), "--producer", url]
        too_slow = subprocess.run(
            [*serve, "--token", operator, "--timeout", "3601", "--work-dir", str(work)],
            env=conveyor_env(tmp_path / "cli-data"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert too_slow.returncode == 1, too_slow.stderr
        assert "expires_in_seconds may be at most 7200" in too_slow.stderr
        assert "Traceback" not in too_slow.stderr

        options = ("--token", operator, "--timeout", "120", "--memory", "768MiB")
        with serve_command(package, url, work, tmp_path, "probe", options) as (process, _, log):
            upload(url, notes(tmp_path / "input", "probe\n"), token=operator)
            eventually(lambda: list((work / "done").iterdir()), "the probe's run")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log()
        [record] = [json.loads(path.read_text()) for path in (work / "done").iterdir()]
        assert record["state"] == "succeeded", record
        seen = json.loads(result.read_text())
        run_token = seen["token"]
        # its own token, not the operator's, which may publish and read, nothing else
        assert run_token.startswith("cvy_")
        assert run_token != operator
        assert seen["read"] == 200
        assert seen["subscribe"] == 403
        assert seen["list tokens"] == 403
        assert seen["another token"] == 403
        assert seen["memory"] == 768 * 1024**2  # --memory reached the run
        # revoked once the run ended; the operator's token still works
        transactions = f"{url}/api/v1/transactions"
        assert httpx.get(transactions, headers=bearer(run_token), timeout=10).status_code == 401
        assert httpx.get(transactions, headers=bearer(operator), timeout=10).status_code == 200
        # what the endpoint itself refuses: a life past the maximum, a scoped caller
        mint = f"{url}/api/v1/tokens/consumer-run"
        too_long = httpx.post(
            mint, json={"expires_in_seconds": 7201}, headers=bearer(operator), timeout=10
        )
        assert too_long.status_code == 400
        assert "at most 7200" in too_long.json()["detail"]
        scoped = httpx.post(
            mint, json={"expires_in_seconds": 60}, headers=bearer(operator), timeout=10
        ).json()["token"]
        again = httpx.post(mint, json={}, headers=bearer(scoped), timeout=10)
        assert again.status_code == 403
        assert again.json()["detail"] == (
            "a consumer-run token may not POST /api/v1/tokens/consumer-run"
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
