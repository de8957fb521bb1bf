"""Cart status request rates: Conveyor's status endpoints beside the published cartd's HEAD.

`wrk` (Debian package `wrk`) drives each endpoint for a fixed time with a few keep-alive
connections from one thread, on the same machine:

- Conveyor `GET /api/v1/carts/{id}` and `HEAD /pacifica/cartd/{uid}` (`conveyor serve` on the
  embedded default: SQLite, one process; then again with `--processes 2`);
- the published `pacifica-cartd` `HEAD /{uid}` (CherryPy, SQLite through peewee), when its
  virtualenv is given with `--cartd-venv` (`python3 -m venv V && V/bin/pip install
  pacifica-cartd==0.7.0`); its POST queues a Celery task on the local RabbitMQ, and the cart
  row it writes answers HEAD while it stays `staging`.

    .venv/bin/python bench/carts/requests.py [--workdir DIR] [--seconds 10] [--cartd-venv V]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import start_server, wait_until_answering

CONNECTIONS = 8
CONVEYOR_PORT = 18110
CARTD_PORT = 18111
CONTENT = b"Writing content for first file"


def wrk(url: str, seconds: int, method: str, work: Path) -> tuple[float, float, int]:
    """(requests per second, p99 latency in ms, non-2xx answers) from one wrk run."""
    script = work / f"{method.lower()}.lua"
    script.write_text(f'wrk.method = "{method}"\n')
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    rate = float(_find(r"Requests/sec:\s+([\d.]+)", done.stdout)[0])
    value, unit = _find(r"99%\s+([\d.]+)(us|ms|s)", done.stdout)
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    return rate, p99, int(failed.group(1)) if failed else 0


def _find(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"wrk printed no {pattern!r}: {text}")
    return match.groups()


def conveyor_targets(url: str, label: str) -> list[tuple[str, str, str]]:
    """Make a ready native cart and a ready cartd uid; the endpoints to drive."""
    stored = httpx.put(f"{url}/pacifica/archive/foo.txt", content=CONTENT, timeout=30)
    stored.raise_for_status()
    cart = httpx.post(
        f"{url}/api/v1/carts", json={"files": [{"id": 1, "path": "a/foo.txt"}]}, timeout=30
    ).json()
    item = {
        "id": "foo.txt",
        "path": "1/2/3/foo.txt",
        "hashtype": "md5",
        "hashsum": hashlib.md5(CONTENT).hexdigest(),
    }
    httpx.post(f"{url}/pacifica/cartd/bench", json={"fileids": [item]}, timeout=30)
    for _ in range(100):
        if httpx.head(f"{url}/pacifica/cartd/bench").headers["x-pacifica-status"] == "ready":
            break
        time.sleep(0.1)
    return [
        (f"conveyor{label} GET /api/v1/carts/{{id}}", "GET", f"{url}/api/v1/carts/{cart['id']}"),
        (f"conveyor{label} HEAD /pacifica/cartd/{{uid}}", "HEAD", f"{url}/pacifica/cartd/bench"),
    ]


def start_cartd(venv: Path, work: Path) -> subprocess.Popen[bytes]:
    """The published cartd on SQLite in ``work``; it answers once its database exists."""
    env = {
        **os.environ,
        "PEEWEE_URL": f"sqlite:///{work / 'cartd.sqlite3'}",
        "VOLUME_PATH": f"{work / 'volume'}/",
        "BROKER_URL": "pyamqp://guest:guest@127.0.0.1:5672//",
        "CARTD_CONFIG": str(work / "cartd.ini"),
        "CARTD_CPCONFIG": str(work / "cpconfig.ini"),
    }
    (work / "volume").mkdir(parents=True, exist_ok=True)
    (work / "cartd.ini").write_text("")
    # The published service's CherryPy configuration (its docker image ships the same).
    (work / "cpconfig.ini").write_text(
        "[global]\nlog.screen: False\nengine.autoreload.on: False\n"
        "[/]\nrequest.dispatch: cherrypy.dispatch.MethodDispatcher()\n"
        "tools.response_headers.on: True\n"
        "tools.response_headers.headers: [('Content-Type', 'application/json')]\n"
    )
    subprocess.run([str(venv / "bin" / "pacifica-cartd-cmd"), "dbsync"], env=env, check=True)
    process = subprocess.Popen(
        [str(venv / "bin" / "pacifica-cartd"), "-p", str(CARTD_PORT), "-a", "127.0.0.1"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until_answering(f"http://127.0.0.1:{CARTD_PORT}/", "pacifica-cartd")
    return process


def cartd_target() -> tuple[str, str, str]:
    url = f"http://127.0.0.1:{CARTD_PORT}"
    item = {"id": "foo.txt", "path": "1/2/3/foo.txt", "hashtype": "md5", "hashsum": "0"}
    answer = httpx.post(f"{url}/bench", json={"fileids": [item]}, timeout=30)
    if answer.status_code != 201:
        raise RuntimeError(f"pacifica-cartd POST answered {answer.status_code}: {answer.text}")
    return ("pacifica-cartd HEAD /{uid}", "HEAD", f"{url}/bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/conveyor-request-bench"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--cartd-venv", type=Path, default=None)
    options = parser.parse_args()
    work: Path = options.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{'endpoint':42} {'req/s':>8} {'p99 ms':>8} {'non-2xx':>8}")
    runs: list[tuple[str, tuple[str, ...]]] = [("", ()), (" x2", ("--processes", "2"))]
    for label, args in runs:
        server = start_server(work / f"conveyor{len(args)}", CONVEYOR_PORT, args)
        try:
            targets = conveyor_targets(f"http://127.0.0.1:{CONVEYOR_PORT}", label)
            drive(targets, options.seconds, work)
        finally:
            server.terminate()
            server.wait()
    if options.cartd_venv is not None:
        server = start_cartd(options.cartd_venv, work / "cartd")
        try:
            drive([cartd_target()], options.seconds, work)
        finally:
            server.terminate()
            server.wait()


def drive(targets: list[tuple[str, str, str]], seconds: int, work: Path) -> None:
    """Warm each endpoint up, then measure it."""
    for label, method, url in targets:
        wrk(url, 2, method, work)
        rate, p99, failed = wrk(url, seconds, method, work)
        print(f"{label:42} {rate:8.0f} {p99:8.1f} {failed:8d}")


if __name__ == "__main__":
    main()
