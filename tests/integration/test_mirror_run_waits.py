"""Waiting for a mirror run through the API: ``GET /api/v1/mirror-runs/{id}?wait=SECONDS``
answers as the run ends (woken by the commit that ends it) or after the seconds, as it is."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from conveyor.db.models import MirrorRun
from conveyor.jobs.executors import JOBS_LANE, Executor
from conveyor.mirror import service
from conveyor.mirror.runs import _finish_failed
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.services import free_port
from tests.support.waiting import eventually


class _NoWorker(Executor):
    """Jobs queued and never taken, as with a broker whose workers are all busy."""

    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Leave the job queued."""


@pytest.fixture
def idle(make_runtime: Callable[..., Runtime]) -> Runtime:
    """A runtime that runs no job: a run stays queued until a test ends it."""
    runtime = make_runtime(inline=False)
    runtime.executor.shutdown()
    runtime.executor = _NoWorker(runtime)
    return runtime


@pytest.fixture
def api(idle: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=idle)) as client:
        yield client


def _queued_run(api: TestClient, root: Path) -> dict[str, Any]:
    root.mkdir(exist_ok=True)
    (root / "a.txt").write_text("alpha\n")
    definition = {"name": "bank", "source": {"protocol": "local", "remote_dir": str(root)}}
    assert api.post("/api/v1/mirrors", json=definition).status_code == 201
    run: dict[str, Any] = api.post("/api/v1/mirrors/bank/runs").json()
    assert run["state"] == "queued", run
    return run


def _wait_through(api: TestClient, run_id: int, action: Callable[[], None]) -> dict[str, Any]:
    """A 30-second wait for the run with ``action`` done 0.3 s into it: the answer, which
    must come well before the 30 seconds (not a speed limit: 0.3 s against 30)."""
    timer = threading.Timer(0.3, action)
    timer.start()
    started = time.monotonic()
    try:
        answer = api.get(f"/api/v1/mirror-runs/{run_id}", params={"wait": 30})
    finally:
        timer.join()
    assert time.monotonic() - started < 25, "the wait ran out before it saw the end"
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_wait_answers_after_its_seconds_with_the_run_as_it_is(
    api: TestClient, tmp_path: Path
) -> None:
    run = _queued_run(api, tmp_path / "remote")
    answer = api.get(f"/api/v1/mirror-runs/{run['id']}", params={"wait": 0.3})
    assert answer.status_code == 200
    assert answer.json()["state"] == "queued"
    assert answer.json()["files_done"] == 0


def test_a_run_ended_in_this_process_wakes_the_wait_at_its_commit(
    api: TestClient, idle: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the database looked at only once an hour, only the commit's wake-up can make
    the wait answer before its 30 seconds are up."""
    monkeypatch.setattr(service, "ENDED_RECHECK_SECONDS", 3600.0)
    run = _queued_run(api, tmp_path / "remote")
    ended = _wait_through(
        api, run["id"], lambda: _finish_failed(idle, run["id"], "stopped here", [], "failed")
    )
    assert ended["state"] == "failed", ended
    assert ended["error"] == "stopped here"


def test_a_run_ended_by_another_process_is_seen_at_the_next_look(
    api: TestClient, idle: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit made elsewhere (a Celery worker) wakes nothing here: the wait's own looks
    at the database find the end."""
    monkeypatch.setattr(service, "ENDED_RECHECK_SECONDS", 0.05)
    run = _queued_run(api, tmp_path / "remote")

    def end_elsewhere() -> None:
        # The same change a worker process commits, without this process's notice.
        with idle.db.sessions() as session, session.begin():
            session.execute(
                update(MirrorRun).where(MirrorRun.id == run["id"]).values(state="cancelled")
            )

    assert _wait_through(api, run["id"], end_elsewhere)["state"] == "cancelled"


def test_a_run_waited_for_is_published_by_the_running_executor(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    runtime = make_runtime(inline=False)
    runtime.executor.start()
    root = tmp_path / "remote"
    root.mkdir()
    for index in range(20):
        (root / f"f{index:02d}.txt").write_text(f"file {index}\n")
    with TestClient(create_app(runtime=runtime)) as client:
        definition = {"name": "bank", "source": {"protocol": "local", "remote_dir": str(root)}}
        assert client.post("/api/v1/mirrors", json=definition).status_code == 201
        run = client.post("/api/v1/mirrors/bank/runs").json()
        ended = client.get(f"/api/v1/mirror-runs/{run['id']}", params={"wait": 60}).json()
    assert ended["state"] == "published", ended
    assert ended["files_done"] == 20
    assert ended["transaction_id"] is not None


def test_a_wait_ends_at_its_next_look_once_the_client_has_hung_up(
    api: TestClient, idle: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real connection to uvicorn: after the client closes it, the wait stops
    looking at the database instead of going on for its 30 seconds."""
    monkeypatch.setattr(service, "ENDED_RECHECK_SECONDS", 0.1)
    run = _queued_run(api, tmp_path / "remote")
    looks: list[float] = []

    def count_looks(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "FROM mirror_runs" in statement:
            looks.append(time.monotonic())

    event.listen(idle.db.engine, "before_cursor_execute", count_looks)
    try:
        with _uvicorn(idle) as port:
            with socket.create_connection(("127.0.0.1", port)) as client:
                request = f"GET /api/v1/mirror-runs/{run['id']}?wait=30 HTTP/1.1\r\n"
                client.sendall(f"{request}Host: 127.0.0.1\r\n\r\n".encode())
                eventually(lambda: len(looks) >= 3, "the wait's looks at the run", 20)
            hung_up = time.monotonic()
            eventually(lambda: looks[-1] < time.monotonic() - 1.0, "the looks stopping", 20)
    finally:
        event.remove(idle.db.engine, "before_cursor_execute", count_looks)
    # Not a speed limit: the wait would otherwise have looked for 30 s, ten times a second.
    assert looks[-1] - hung_up < 10.0, "looks went on after the client had gone"


@contextmanager
def _uvicorn(runtime: Runtime) -> Iterator[int]:
    """The API served by uvicorn from a thread, on a free loopback port."""
    port = free_port()
    app = create_app(runtime=runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    try:
        eventually(lambda: server.started, "uvicorn started", 20)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_a_wait_out_of_range_is_refused_with_the_reason(
    api: TestClient, tmp_path: Path, wait: str
) -> None:
    run = _queued_run(api, tmp_path / "remote")
    answer = api.get(f"/api/v1/mirror-runs/{run['id']}", params={"wait": wait})
    assert answer.status_code == 422
    assert "wait" in answer.text


def test_waiting_for_an_unknown_run_is_not_found_at_once(api: TestClient) -> None:
    answer = api.get("/api/v1/mirror-runs/999", params={"wait": 30})
    assert answer.status_code == 404
    assert "no mirror run 999" in answer.text
