"""``conveyor serve --processes N``: several server processes on one port, one database."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.bundles import GOOD_MEMBERS, good_tar
from tests.support.server import running_server, wait_job


def _server_processes(pid: int) -> list[int]:
    """Children of ``pid`` that are spawned server processes (not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in command and port.encode() in command:
                return int(entry.name)
    raise AssertionError(f"no conveyor serve process on port {port}")


def test_two_processes_serve_uploads_jobs_and_carts(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", serve_args=("--processes", "2")) as url:
        deadline = time.monotonic() + 30
        supervisor = _server_pid(url)
        while len(_server_processes(supervisor)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_server_processes(supervisor)) == 2
        answers = [
            httpx.post(
                f"{url}/api/v1/ingest",
                content=good_tar(),
                headers={"Content-Type": "application/x-tar"},
                timeout=30,
            ).json()
            for _ in range(4)
        ]
        jobs = [wait_job(url, answer["id"]) for answer in answers]
        assert {job["state"] for job in jobs} == {"succeeded"}, jobs
        assert len({job["transaction_id"] for job in jobs}) == 4
        cart = httpx.post(
            f"{url}/api/v1/carts",
            json={"transactions": [jobs[0]["transaction_id"]], "mode": "build"},
            timeout=30,
        ).json()
        for _ in range(200):
            if cart["status"] in ("ready", "error"):
                break
            time.sleep(0.05)
            cart = httpx.get(f"{url}/api/v1/carts/{cart['id']}", timeout=10).json()
        assert cart["status"] == "ready", cart
        body = httpx.get(f"{url}{cart['bundle']}", timeout=30).content
        assert len(body) == cart["bytes_total"]
        assert GOOD_MEMBERS["data/a/b/foo.txt"] in body
