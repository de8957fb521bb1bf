"""Running real ``conveyor`` processes (server, worker) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


def conveyor_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment for a conveyor process: a data dir plus CONVEYOR_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(data_dir)
    for key, value in settings.items():
        env[f"CONVEYOR_{key.upper()}"] = value
    return env


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextmanager
def running_server(
    data_dir: Path, *, serve_args: tuple[str, ...] = (), **settings: str
) -> Iterator[str]:
    """``conveyor serve`` on a free loopback port; yields its base URL once it is ready."""
    port = free_port()
    log_path = data_dir / f"serve-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*CONVEYOR, "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args],
            env=conveyor_env(data_dir, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"conveyor serve exited {process.returncode}: {_log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"conveyor serve not ready in 60 s: {_log_tail(log_path)}")
            time.sleep(0.1)
        yield url
    finally:
        stop(process)


@contextmanager
def running_worker(
    data_dir: Path, *, worker_args: tuple[str, ...] = (), **settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``conveyor worker [worker_args]``; yields the process (tests may kill it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"worker-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*CONVEYOR, "worker", *worker_args],
            env=conveyor_env(data_dir, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process politely, then firmly."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_job(
    url: str, job_id: int, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> dict:  # type: ignore[type-arg]
    """Poll the native job API until the job finishes."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if job.get("complete"):
            return job  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} not finished in {timeout} s: {job}")
        time.sleep(0.1)


def run_conveyor(data_dir: Path, settings: dict[str, str], *commands: list[str]) -> list[str]:
    """Run ``conveyor`` commands one after the other with a server's environment; outputs.

    Sequential on purpose: admin commands racing on one fresh database (two registering
    the same user) fail for reasons no test is about.
    """
    env = conveyor_env(data_dir, **settings)
    outputs = []
    for command in commands:
        done = subprocess.run(
            [*CONVEYOR, *command], env=env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"conveyor {command}: {done.stdout!r} {done.stderr!r}"
        outputs.append(done.stdout.decode())
    return outputs
