"""A webhook receiver that is down for minutes gets every event once when it comes back.

Real time, a real server with the default retry schedule (only the breaker's cool-down and its
cap are shortened, so the backlog arrives within seconds of the receiver's return rather than
after the default cap of an hour): events keep coming while nothing listens on the receiver's
port, and the connection is refused.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.receivers import running_receiver
from tests.support.server import running_server
from tests.support.services import free_port

OUTAGE_SECONDS = 180.0
EVENT_EVERY_SECONDS = 10.0
RECOVERY_DEADLINE_SECONDS = 60.0


def post_event(url: str, number: int) -> str:
    event = {"type": "org.test.outage", "source": "/tests/outage", "id": f"outage-{number}"}
    answer = httpx.post(f"{url}/pacifica/notifications/receive", json=event, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.text


# Three minutes down, then up to a minute to catch up: past the suite's usual limit.
@pytest.mark.timeout(OUTAGE_SECONDS + RECOVERY_DEADLINE_SECONDS + 120)
def test_a_receiver_down_for_minutes_gets_every_event_once_when_it_returns(
    tmp_path: Path,
) -> None:
    port = free_port()
    with running_server(
        tmp_path / "data", breaker_cooldown_seconds="10", breaker_max_cooldown_seconds="20"
    ) as url:
        created = httpx.post(
            f"{url}/api/v1/subscriptions",
            json={
                "name": "outage",
                "target": f"http://127.0.0.1:{port}/hook",
                "types": ["org.test.outage"],
            },
            timeout=10,
        )
        assert created.status_code == 201, created.text
        ids: list[str] = []
        down_until = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < down_until:
            ids.append(post_event(url, len(ids)))
            time.sleep(EVENT_EVERY_SECONDS)
        deliveries = httpx.get(f"{url}/api/v1/deliveries", params={"limit": 100}).json()
        waiting = deliveries["deliveries"]
        assert all(d["state"] in ("pending", "delivering") for d in waiting), waiting
        assert max(d["attempts"] for d in waiting) >= 3, waiting
        assert any("refused" in d["last_error"].lower() for d in waiting), waiting
        with running_receiver(port) as receiver:
            ids.extend(post_event(url, len(ids)) for _ in range(3))
            deadline = time.monotonic() + RECOVERY_DEADLINE_SECONDS
            while {r.headers["webhook-id"] for r in receiver.delivered} != set(ids):
                assert time.monotonic() < deadline, (
                    f"{len(receiver.delivered)} of {len(ids)} events arrived after the return"
                )
                time.sleep(0.5)
            time.sleep(2)  # anything sent twice would arrive by now
            counts = Counter(r.headers["webhook-id"] for r in receiver.requests)
        assert set(counts) == set(ids)
        assert all(count == 1 for count in counts.values()), counts
        final = httpx.get(f"{url}/api/v1/deliveries", params={"limit": 100}).json()
        assert {d["state"] for d in final["deliveries"]} == {"delivered"}
