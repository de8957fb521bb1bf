"""Mirror runs whose small files are fetched by transfer worker processes
(``mirror_processes``): real spawned workers against loopback FTP and HTTP servers."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.banks import (
    QUICK_STOP,
    QUICK_WAIT,
    content,
    published,
    run_files,
    run_mirror,
    spy_on_transfers,
)
from tests.support.mirror_servers import ServerInfo, ftp_server, http_server

SERVERS: dict[str, Callable[[Path], AbstractContextManager[ServerInfo]]] = {
    "ftp": ftp_server,
    "http": lambda root: http_server(root, index_style="nginx"),
}


@pytest.fixture
def workers_runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    """An inline runtime with two transfer workers."""
    return make_runtime(mirror_processes=2)


@pytest.fixture
def client(workers_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=workers_runtime)) as test_client:
        yield test_client


def _define(client: TestClient, server: ServerInfo, name: str, **fields: Any) -> None:
    source: dict[str, Any] = {"protocol": server.scheme, "server": f"{server.host}:{server.port}"}
    if server.user:
        source["credentials"] = {"user": server.user, "password": server.password}
    answer = client.post("/api/v1/mirrors", json={"name": name, "source": source, **fields})
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("protocol", ["ftp", "http"])
def test_small_files_are_fetched_by_the_workers_and_large_ones_here(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """Every small file reaches the workers (its sidecar's digest with it), the sidecar and
    the large file are fetched in the run's process; every file is published whole, and a
    connection cut in a worker is resumed there."""
    on_loop, in_threads = spy_on_transfers(monkeypatch, loop_max_bytes=100_000)
    root = tmp_path / "remote"
    (root / "sub").mkdir(parents=True)
    files = {f"sub/f{index:03d}.bin": os.urandom(500 + 97 * index) for index in range(120)}
    files["seq.gz"] = gzip.compress(b">s\nACGT\n" * 3000)
    files["small.txt"] = b"small\n" * 100
    files["small.txt.sha256"] = f"{hashlib.sha256(files['small.txt']).hexdigest()}\n".encode()
    files["large.bin"] = os.urandom(300_000)
    for name, data in files.items():
        (root / name).write_bytes(data)
    with SERVERS[protocol](root) as server:
        server.faults.cut_after["sub/f050.bin"] = 3000
        _define(client, server, "pooled", remote_files=["**/*"], threads=4)
        run = run_mirror(client, "pooled")
        assert server.faults.cut_after == {}
        again = run_mirror(client, "pooled")
    release = published(client, run)
    assert {name: content(client, release[name]) for name in release} == files
    assert release["seq.gz"]["sha256"] == hashlib.sha256(files["seq.gz"]).hexdigest()
    assert on_loop == ["small.txt.sha256"]  # the sidecar pass
    assert in_threads == ["large.bin"]
    assert again["state"] == "up_to_date", again


def test_a_file_failing_in_a_worker_fails_with_its_reason(
    client: TestClient, tmp_path: Path
) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    (root / "good.txt").write_bytes(b"fine\n")
    (root / "bad.gz").write_bytes(b"not gzip at all")
    with SERVERS["http"](root) as server:
        quick = {"stop_condition": QUICK_STOP, "wait_policy": QUICK_WAIT}
        _define(client, server, "corrupt", **quick)
        run = run_mirror(client, "corrupt")
    assert run["state"] == "failed", run
    (failed,) = run_files(client, run, "failed")
    assert failed["save_as"] == "bad.gz"
    assert "not a valid archive" in failed["error"] and failed["attempts"] == 2
    (done,) = run_files(client, run, "done")
    assert done["save_as"] == "good.txt"


@pytest.mark.timeout(120)
def test_files_of_a_worker_that_died_are_fetched_by_the_run_itself(
    client: TestClient, tmp_path: Path
) -> None:
    """Both workers are killed while one of their files stalls: the pool breaks, the
    files of its lost tasks stay pending and the run's own transfers fetch them after; the
    next batch goes to new workers. The release is whole."""
    root = tmp_path / "remote"
    root.mkdir()
    files = {f"f{index:03d}.bin": os.urandom(500 + index) for index in range(260)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    with SERVERS["http"](root) as server:
        server.faults.stall_after["f040.bin"] = 100
        killer = threading.Thread(target=_kill_workers_when_asked_for, args=(server, "f040"))
        killer.start()
        _define(client, server, "survivor", threads=2)
        run = run_mirror(client, "survivor")
        killer.join()
        asked = [entry for entry in server.faults.requests if entry.startswith("GET /f040.bin")]
    release = published(client, run)
    assert {name: content(client, release[name]) for name in release} == files
    assert run["files_done"] == 260
    assert len(asked) == 2  # the worker's, cut short, then the run's own


def _kill_workers_when_asked_for(server: ServerInfo, name: str) -> None:
    deadline = time.monotonic() + 60
    while not any(f"/{name}" in entry for entry in server.faults.requests):
        assert time.monotonic() < deadline, "the stalled file was never asked for"
        time.sleep(0.01)
    workers = [
        pid
        for pid in _children(os.getpid())
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    ]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_workers_end_with_a_service_killed_without_shutting_them_down() -> None:
    """A service killed by a signal never shuts its pool down: its workers see it gone
    and exit rather than live on as orphans."""
    service = subprocess.Popen(
        [sys.executable, "-c", KEEPS_TWO_WORKERS], stdout=subprocess.PIPE, text=True
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline().strip() == "ready"
        workers = _children(service.pid)
        assert len(workers) >= 2
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


KEEPS_TWO_WORKERS = """
import time
from conveyor.mirror.workers import TransferWorkers

workers = TransferWorkers(2)
workers.warm()
time.sleep(5)  # both have started (each imports the mirror's code in about a second)
print("ready", flush=True)
time.sleep(60)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found
