"""Events benchmark: 10,000 events, 100 JSONPath subscriptions, one local webhook receiver.

Conveyor runs on the embedded default (`conveyor serve`: SQLite, in-process dispatcher).
100 subscriptions each take one group of events, so every event is delivered once; three
sets of filters: RFC 9535 equalities, the same with one in ten in jsonpath2 (both matched
through the server's equality index), and RFC 9535 ranges (the query read once per event,
then each range compared). Three measurements:

- throughput: 10,000 events committed to the outbox in 10 commits (by a second process, as
  a busy producer would), timed until the receiver has every one: deliveries/s;
- latency: 1,000 events posted one by one to `/pacifica/notifications/receive` at 100/s,
  each timed from its commit (the event's time) to its arrival: p50 and p99;
- the floor: the same 10,000 signed bodies POSTed by 16 threads of one httpx client
  straight to the receiver (no database, no matching): what this machine allows.

    .venv/bin/python bench/events/run.py [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import bench_arguments, start_server, wait_until_answering

from conveyor.db.engine import Database
from conveyor.events.outbox import Event, record_event
from conveyor.events.shapes import encode
from conveyor.events.sinks.base import Outgoing
from conveyor.events.sinks.webhook import WebhookSink
from conveyor.events.subscriptions import new_secret

EVENTS = 10_000
SUBSCRIPTIONS = 100
LATENCY_EVENTS = 1_000
LATENCY_RATE = 100.0
SERVER_PORT = 18650
RECEIVER_PORT = 18651
RECEIVER = f"http://127.0.0.1:{RECEIVER_PORT}"


def start_receiver() -> subprocess.Popen[bytes]:
    """The lean receiver in its own process (uvicorn, one worker)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "receiver:app",
            "--app-dir",
            str(Path(__file__).parent),
            "--port",
            str(RECEIVER_PORT),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
    )
    wait_until_answering(f"{RECEIVER}/stats", "the receiver")
    return process


def stats() -> dict[str, Any]:
    return httpx.get(f"{RECEIVER}/stats", timeout=30).json()  # type: ignore[no-any-return]


def reset() -> None:
    httpx.delete(f"{RECEIVER}/stats", timeout=10)


def wait_for(count: int, timeout: float = 600.0) -> float:
    """Seconds until the receiver has ``count`` distinct events."""
    started = time.monotonic()
    while stats()["distinct"] < count:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {stats()['distinct']} of {count} arrived")
        time.sleep(0.05)
    return time.monotonic() - started


def equality(group: int) -> dict[str, str]:
    """An RFC 9535 equality filter: matched through the server's index of equalities."""
    return {"filter": f"$[?$.data.group == {group}]"}


def pacifica_equality(group: int) -> dict[str, str]:
    """One in ten in the jsonpath2 dialect of Pacifica's eventmatch (also indexed)."""
    if group % 10 == 9:
        return {"dialect": "jsonpath2", "filter": f'$[?(@["data"]["group"] = {group})]'}
    return equality(group)


def open_range(group: int) -> dict[str, str]:
    """A range of one query: the query is read once, then every range compared to it."""
    return {"filter": f"$[?$.data.group > {group - 1} && $.data.group < {group + 1}]"}


def subscribe(server: str, spec_of: Callable[[int], dict[str, str]]) -> None:
    """SUBSCRIPTIONS subscriptions, one per group, with the filters ``spec_of`` gives."""
    with httpx.Client(base_url=server, timeout=30) as client:
        for existing in client.get("/api/v1/subscriptions").json()["subscriptions"]:
            client.delete(f"/api/v1/subscriptions/{existing['id']}").raise_for_status()
        for group in range(SUBSCRIPTIONS):
            spec = spec_of(group)
            answer = client.post(
                "/api/v1/subscriptions",
                json={"name": f"g{group}", "target": f"{RECEIVER}/hook", **spec},
            )
            answer.raise_for_status()


def throughput(data_dir: Path, offset: int) -> float:
    """Deliveries per second for EVENTS events committed in 10 batches."""
    reset()
    database = Database(f"sqlite:///{data_dir / 'conveyor.db'}")
    started = time.monotonic()
    for batch in range(10):
        with database.session() as session:
            for number in range(EVENTS // 10):
                n = offset + batch * (EVENTS // 10) + number
                record_event(
                    session,
                    Event(type="org.bench", source="/bench", data={"n": n, "group": n % 100}),
                )
    database.dispose()
    wait_for(EVENTS)
    return EVENTS / (time.monotonic() - started)


def latency(server: str) -> tuple[float, float]:
    """p50 and p99 seconds from commit to arrival, at LATENCY_RATE events a second."""
    reset()
    with httpx.Client(base_url=server, timeout=30) as client:
        started = time.monotonic()
        for number in range(LATENCY_EVENTS):
            due = started + number / LATENCY_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            event = {"type": "org.bench", "source": "/bench", "data": {"group": number % 100}}
            client.post("/pacifica/notifications/receive", json=event).raise_for_status()
    wait_for(LATENCY_EVENTS)
    latencies = sorted(httpx.get(f"{RECEIVER}/latencies", timeout=30).json())
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def floor() -> float:
    """Deliveries per second of 16 threads POSTing signed bodies straight to the receiver."""
    reset()
    sink = WebhookSink(10.0)
    secret = new_secret()

    def send(number: int) -> None:
        doc = {
            "specversion": "1.0",
            "id": f"floor-{number}",
            "type": "org.bench",
            "source": "/bench",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {"n": number, "group": number % 100},
        }
        outgoing = Outgoing(
            doc["id"],
            "org.bench",
            f"{RECEIVER}/hook",
            encode(doc, "cloudevents", "structured"),
            secret=secret,
        )
        assert sink.send(outgoing).delivered

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(EVENTS)))
    wait_for(EVENTS)
    elapsed = time.monotonic() - started
    sink.close()
    return EVENTS / elapsed


def measure(server: str, data_dir: Path, repeat: int, offset: int) -> dict[str, float]:
    """Medians of ``repeat`` runs: deliveries/s, the floor, and latency p50/p99 (ms)."""
    rates, floors, p50s, p99s = [], [], [], []
    for run in range(repeat):
        rates.append(throughput(data_dir, offset + run * EVENTS))
        floors.append(floor())
        p50, p99 = latency(server)
        p50s.append(p50 * 1000)
        p99s.append(p99 * 1000)
        print(
            f"  run {run + 1}: {rates[-1]:,.0f} deliveries/s (floor {floors[-1]:,.0f}/s), "
            f"latency p50 {p50s[-1]:.0f} ms, p99 {p99s[-1]:.0f} ms",
            flush=True,
        )
    return {
        "rate": statistics.median(rates),
        "floor": statistics.median(floors),
        "p50": statistics.median(p50s),
        "p99": statistics.median(p99s),
    }


def main() -> None:
    work, repeat = bench_arguments(__doc__)
    receiver = start_receiver()
    data_dir = work / "data"
    server_process = start_server(data_dir, SERVER_PORT)
    server = f"http://127.0.0.1:{SERVER_PORT}"
    configurations = {
        "100 RFC 9535 equalities": equality,
        "90 RFC 9535 + 10 jsonpath2 equalities": pacifica_equality,
        "100 RFC 9535 ranges": open_range,
    }
    results = {}
    try:
        for number, (name, spec_of) in enumerate(configurations.items()):
            print(f"{name}:", flush=True)
            subscribe(server, spec_of)
            results[name] = measure(server, data_dir, repeat, number * repeat * EVENTS)
    finally:
        server_process.terminate()
        server_process.wait()
        receiver.terminate()
        receiver.wait()
    print(f"\n{EVENTS:,} events x {SUBSCRIPTIONS} subscriptions, medians of {repeat}:")
    print("| filters | deliveries/s | floor/s | ratio | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, got in results.items():
        print(
            f"| {name} | {got['rate']:,.0f} | {got['floor']:,.0f} | "
            f"{got['rate'] / got['floor']:.2f} | {got['p50']:.0f} | {got['p99']:.0f} |"
        )


if __name__ == "__main__":
    main()
