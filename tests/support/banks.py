"""BioMAJ bank files and the mirror runs they drive, through the native API.

Helpers for tests that write a bank ``.properties`` file, send it to ``POST /api/v1/mirrors``
as ``text/plain``, run it with ``POST /api/v1/mirrors/{name}/runs`` (the inline runtime
finishes the run before answering) and read what it published. Also: BioMAJ's own test bank
(``tests/bank`` of biomaj-download) and a hook that makes a loopback server act when a
request first arrives.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.support.mirror_servers import Faults

# Two attempts without waiting: failing runs end at once, and the tests stay fast.
QUICK_STOP = "stop_after_attempt(2)"
QUICK_WAIT = "wait_none"
ACTIVE_STATES = ("queued", "listing", "downloading", "publishing")

# A bank on the local disk: both alu gzip files and sub/notes.txt are selected (the capture
# group saves the last as notes.txt), other.gz is not; every file dated 2023-11-14.
ALU_BANK = """[GENERAL]
db.name={name}
protocol=local
server=
remote.dir={root}/
remote.files=^alu.*\\.gz$ ^sub/(.*\\.txt)$
local.files=**/*
release.file=
release.regexp=
"""
ALU_FILES: dict[str, bytes] = {
    "alu.n.gz": gzip.compress(b">alu\nACGT\n" * 1000, mtime=0),
    "alu.a.gz": gzip.compress(b">alu\nMKV\n" * 1000, mtime=0),
    "sub/notes.txt": b"hello",
}
# Two attempts without waiting, in bank-file form.
QUICK_RETRIES = """options.names=stop_condition,wait_policy
options.stop_condition=stop_after_attempt(2)
options.wait_policy=wait_none
"""


def write_alu_tree(root: Path) -> None:
    """ALU_FILES and the unselected other.gz under ``root``."""
    for relative, data in {**ALU_FILES, "other.gz": gzip.compress(b"x", mtime=0)}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in root.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))


# biomaj-download's tests/bank: a real gzip, a FASTA file and a text file.
BANK_FILES: dict[str, bytes] = {
    "test.fasta.gz": gzip.compress(b">seq1\nACGTACGTACGT\n>seq2\nTTGGCCAA\n", mtime=0),
    "test2.fasta": b">seq3\nMKVLAAGIV\n",
    "test_100.txt": b"".join(b"line %d\n" % n for n in range(100)),
}
BANK_MTIME = datetime(2013, 11, 12, 12, 0, tzinfo=UTC)


def bank_text(
    name: str,
    keys: Mapping[str, str],
    *,
    options: Mapping[str, str] | None = None,
    stop_condition: str = QUICK_STOP,
    wait_policy: str = QUICK_WAIT,
) -> str:
    """A bank file: ``[GENERAL]``, ``db.name``, ``keys`` in order, then ``options.*``.

    ``options`` are BioMAJ download options (``skip_check_uncompress``, ``ssl_*``, ...);
    they are listed in ``options.names`` after the retry options, which are always set.
    """
    lines = ["[GENERAL]", f"db.name={name}"]
    lines += [f"{key}={value}" for key, value in keys.items()]
    chosen = {"stop_condition": stop_condition, "wait_policy": wait_policy, **(options or {})}
    lines.append("options.names=" + ",".join(chosen))
    lines += [f"options.{option}={value}" for option, value in chosen.items()]
    return "\n".join(lines) + "\n"


def post_bank(client: TestClient, text: str) -> Any:
    """``POST /api/v1/mirrors`` with the bank file as ``text/plain``; the raw answer."""
    return client.post("/api/v1/mirrors", content=text, headers={"Content-Type": "text/plain"})


def add_bank(client: TestClient, text: str) -> dict[str, Any]:
    """Define the mirror a bank file describes; the mirror as the API shows it."""
    answer = post_bank(client, text)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def run_mirror(client: TestClient, name: str) -> dict[str, Any]:
    """Run a mirror now and return the finished run (the inline runtime runs it in place)."""
    started = client.post(f"/api/v1/mirrors/{name}/runs")
    assert started.status_code == 202, started.text
    run = client.get(f"/api/v1/mirror-runs/{started.json()['id']}").json()
    assert run["state"] not in ACTIVE_STATES, run
    return dict(run)


def mirror_bank(client: TestClient, text: str) -> dict[str, Any]:
    """Define the bank and run it once: the finished run."""
    return run_mirror(client, add_bank(client, text)["name"])


def run_files(
    client: TestClient, run: Mapping[str, Any], state: str | None = None
) -> list[dict[str, Any]]:
    """The run's file rows (path, save_as, size, mtime, state, attempts, error)."""
    query = f"?state={state}" if state else ""
    answer = client.get(f"/api/v1/mirror-runs/{run['id']}/files{query}")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["files"])


def failed_task(client: TestClient, run: Mapping[str, Any]) -> str:
    """The step a failed run's job stopped at (``list files``, ``download files``, ...)."""
    job = client.get(f"/api/v1/jobs/{run['job_id']}").json()
    assert job["state"] == "failed", job
    return str(job["task"])


def published(client: TestClient, run: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The files of the release a run published, by saved path (``subdir/name``)."""
    assert run["state"] == "published", f"run {run['state']}: {run['error']}"
    answer = client.get(f"/api/v1/transactions/{run['transaction_id']}")
    assert answer.status_code == 200, answer.text
    files = answer.json()["files"]
    return {f"{f['subdir']}/{f['name']}" if f["subdir"] else f["name"]: f for f in files}


def content(client: TestClient, file: Mapping[str, Any]) -> bytes:
    """The bytes of one published file."""
    answer = client.get(f"/api/v1/files/{file['id']}/content")
    assert answer.status_code == 200, answer.text
    return bytes(answer.content)


def set_mtime(path: Path, when: datetime) -> None:
    """Give ``path`` this modification (and access) time."""
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


def make_bank(folder: Path, when: datetime = BANK_MTIME) -> Path:
    """BioMAJ's test bank (``BANK_FILES``) in ``folder``, every file dated ``when``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in BANK_FILES.items():
        (folder / name).write_bytes(data)
        set_mtime(folder / name, when)
    return folder


@contextmanager
def on_request(faults: Faults, prefix: str, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once, when a loopback server first logs a request starting with
    ``prefix`` (``"GET /file.gz"``, ``"MLSD"``), before it answers that request.

    The servers log a request, then consume ``faults``: setting a fault counter in ``action``
    hits that very request, so a test can let a listing through and fail what follows.
    """
    original = faults._log  # the bound method of the class
    fired = False

    def hooked(entry: str) -> None:
        nonlocal fired
        original(entry)
        if not fired and entry.startswith(prefix):
            fired = True
            action()

    setattr(faults, "_log", hooked)  # noqa: B010 - an instance attribute over the method
    try:
        yield
    finally:
        vars(faults).pop("_log", None)


def spy_on_transfers(monkeypatch: Any, loop_max_bytes: int) -> tuple[list[str], list[str]]:
    """Files up to ``loop_max_bytes`` go to the run's event loop, larger ones to its
    transfer threads; the names of the files its own process fetches each way, noted as
    they are fetched (as usual)."""
    from conveyor.mirror import downloads
    from conveyor.mirror.transfer import fetch, fetch_async

    on_loop: list[str] = []
    in_threads: list[str] = []
    monkeypatch.setattr(downloads, "LOOP_MAX_BYTES", loop_max_bytes)

    async def fetch_async_spy(reader: Any, wanted: Any, *args: Any, **kwargs: Any) -> Any:
        on_loop.append(wanted.name)
        return await fetch_async(reader, wanted, *args, **kwargs)

    def fetch_spy(source: Any, wanted: Any, *args: Any, **kwargs: Any) -> Any:
        in_threads.append(wanted.name)
        return fetch(source, wanted, *args, **kwargs)

    monkeypatch.setattr(downloads, "fetch_async", fetch_async_spy)
    monkeypatch.setattr(downloads, "fetch", fetch_spy)
    return on_loop, in_threads
