"""Finding the real services a test needs: skip with a reason locally, fail under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip the test, or fail it when CI promised every service would be there."""
    if IN_CI:
        pytest.fail(f"required service missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_tcp(name: str, host: str, port: int) -> None:
    """Skip or fail unless ``name`` listens at host:port."""
    if not tcp_open(host, port):
        missing(f"{name} is not listening on {host}:{port}")


def require_command(name: str) -> str:
    """An executable from this virtualenv (often not on PATH), else from PATH, else skip/fail."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    assert path is not None
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    argv: Sequence[str], port: int, log: Path, env: dict[str, str], timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start a server with its output in ``log`` and wait until its port accepts connections.

    Output goes to a file, never an unread pipe: chatty servers (the emulators log every
    request) would block once a pipe's 64 KiB buffer filled.
    """
    with log.open("ab") as sink:
        process = subprocess.Popen(
            list(argv), env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"{argv[0]} exited with {process.returncode}: {output}")
        if tcp_open("127.0.0.1", port, timeout=0.2):
            return process
        time.sleep(0.1)
    stop_server(process)
    pytest.fail(f"{argv[0]} did not listen on port {port} within {timeout:.0f} s (log: {log})")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server started by :func:`start_server` and reap it."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
