"""A server killed (SIGKILL) in the middle of sending events loses none of them."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.receivers import running_receiver
from tests.support.server import CONVEYOR, conveyor_env, stop
from tests.support.services import free_port

SETTINGS = {
    "lease_seconds": "1",
    "sweep_seconds": "0.5",
    "delivery_timeout_seconds": "1",
    "delivery_backoff_seconds": "0.2",
    "delivery_backoff_max_seconds": "0.5",
}


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``conveyor serve`` on a free port, ready; the process and its URL."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / f"serve-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [*CONVEYOR, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=conveyor_env(data_dir, **SETTINGS),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"conveyor serve exited {process.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("conveyor serve not ready in 60 s")
        time.sleep(0.1)


def test_a_killed_server_loses_no_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_receiver() as receiver:
        first, url = start_server(data_dir)
        try:
            created = httpx.post(
                f"{url}/api/v1/subscriptions",
                json={"name": "all", "target": f"{receiver.url}/hook", "types": ["org.test"]},
                timeout=10,
            )
            assert created.status_code == 201, created.text
            receiver.hold()
            ids = []
            for number in range(20):
                event = {"type": "org.test", "source": "/tests", "id": f"kill-{number}"}
                answer = httpx.post(f"{url}/pacifica/notifications/receive", json=event)
                assert answer.status_code == 200, answer.text
                ids.append(answer.text)
            receiver.wait_for(1, timeout=20)
            first.kill()
            first.wait(timeout=10)
        finally:
            receiver.release()
            stop(first)
        sent_before = len(receiver.requests)
        second, _ = start_server(data_dir)
        try:
            deadline = time.monotonic() + 60
            # None of the first server's sends was answered before it died, so the second
            # server must send every event: at least once, as promised.
            while {r.headers["webhook-id"] for r in receiver.requests[sent_before:]} != set(ids):
                assert time.monotonic() < deadline, (
                    f"not every event was sent after the restart: {receiver.requests[sent_before:]}"
                )
                time.sleep(0.1)
        finally:
            stop(second)
    assert sent_before >= 1, "the first server was killed while it was sending"
    after = Counter(r.headers["webhook-id"] for r in receiver.requests[sent_before:])
    assert set(after) == set(ids)
