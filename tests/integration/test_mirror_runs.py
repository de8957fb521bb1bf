"""Mirror runs end to end through the API: list, release, download, publish, reuse."""

from __future__ import annotations

import gzip
import hashlib
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.runtime import Runtime
from tests.support.banks import (
    ALU_BANK,
    QUICK_RETRIES,
    QUICK_STOP,
    QUICK_WAIT,
    add_bank,
    content,
    failed_task,
    published,
    run_files,
    run_mirror,
    spy_on_transfers,
    write_alu_tree,
)
from tests.support.mirror_servers import ServerInfo, http_server


def _define_http(client: TestClient, server: ServerInfo, name: str, **fields: Any) -> None:
    """Define mirror ``name`` over the loopback HTTP ``server``, with more ``fields``."""
    source = {"protocol": "http", "server": f"{server.host}:{server.port}"}
    answer = client.post("/api/v1/mirrors", json={"name": name, "source": source, **fields})
    assert answer.status_code == 201, answer.text


def _add(client: TestClient, root: Path, extra: str = "") -> dict[str, Any]:
    return add_bank(client, ALU_BANK.format(name="alu", root=root) + extra)


def test_a_bank_file_is_mirrored_and_published(client: TestClient, tmp_path: Path) -> None:
    root = tmp_path / "remote"
    write_alu_tree(root)
    added = _add(client, root)
    assert added["origin"] == "biomaj"
    run = run_mirror(client, "alu")
    assert run["state"] == "published", run
    assert run["release"] == "2023-11-14"
    assert run["files_total"] == 3
    assert run["files_done"] == 3
    transaction = client.get(f"/api/v1/transactions/{run['transaction_id']}").json()
    paths = sorted(
        f"{f['subdir']}/{f['name']}" if f["subdir"] else f["name"] for f in transaction["files"]
    )
    # The capture group saves sub/notes.txt as notes.txt.
    assert paths == ["alu.a.gz", "alu.n.gz", "notes.txt"]
    sources = {f["name"]: f["source"] for f in transaction["files"]}
    assert sources["notes.txt"] == f"local://{root}/sub/notes.txt"
    content = client.get(f"/api/v1/files/{transaction['files'][0]['id']}/content")
    assert content.status_code == 200
    # The release is a new transaction, told in the form Pacifica consumers filter on.
    created = client.get("/api/v1/events", params={"type": "org.pacifica.metadata.ingest"})
    [event] = created.json()["events"]
    assert event["subject"] == f"transactions/{run['transaction_id']}"
    files = [entry for entry in event["data"] if entry["destinationTable"] == "Files"]
    assert sorted(entry["name"] for entry in files) == ["alu.a.gz", "alu.n.gz", "notes.txt"]
    published = client.get(
        "/api/v1/events", params={"type": "org.conveyor.mirror.release.published"}
    )
    assert published.json()["events"][0]["data"]["release"] == "2023-11-14"


def test_an_unchanged_bank_is_up_to_date(client: TestClient, tmp_path: Path) -> None:
    root = tmp_path / "remote"
    write_alu_tree(root)
    _add(client, root)
    first = run_mirror(client, "alu")
    second = run_mirror(client, "alu")
    assert second["state"] == "up_to_date"
    assert second["transaction_id"] is None
    assert first["release"] == second["release"]


def test_a_new_release_reuses_unchanged_files(client: TestClient, tmp_path: Path) -> None:
    root = tmp_path / "remote"
    write_alu_tree(root)
    _add(client, root)
    run_mirror(client, "alu")
    (root / "alu.n.gz").write_bytes(gzip.compress(b">alu\nTTTT\n"))
    os.utime(root / "alu.n.gz", (1_800_000_000, 1_800_000_000))
    run = run_mirror(client, "alu")
    assert run["state"] == "published", run
    assert run["files_done"] == 1
    assert run["files_reused"] == 2
    assert run["release"] == "2027-1-15"


def test_a_corrupt_archive_fails_the_run_with_its_reason(
    client: TestClient, tmp_path: Path
) -> None:
    root = tmp_path / "remote"
    write_alu_tree(root)
    (root / "alu.a.gz").write_bytes(b"not gzip at all")
    _add(client, root, QUICK_RETRIES)
    run = run_mirror(client, "alu")
    assert run["state"] == "failed"
    assert "alu.a.gz" in run["error"]
    failed = client.get(f"/api/v1/mirror-runs/{run['id']}/files?state=failed").json()["files"]
    assert [f["save_as"] for f in failed] == ["alu.a.gz"]
    assert "not a valid archive" in failed[0]["error"]
    assert failed[0]["attempts"] == 2
    assert client.get("/api/v1/mirrors/alu").json()["last_release"] is None


def test_bad_definitions_are_refused_with_the_reason(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/mirrors",
        content="[GENERAL]\ndb.name=x\nprotocol=ftp\nserver=h\nremote.dir=/\n"
        "options.names=stop_condition\noptions.stop_condition=stop_after_attempt(5) & 1\n",
        headers={"Content-Type": "text/plain"},
    )
    assert answer.status_code == 400
    assert "stop_condition" in answer.json()["detail"]
    answer = client.post("/api/v1/mirrors", json={"name": "../x", "source": {"protocol": "ftp"}})
    assert answer.status_code == 400
    assert client.post("/api/v1/mirrors/nothing/runs").status_code == 404


def test_credentials_never_come_back(client: TestClient, tmp_path: Path) -> None:
    definition = {
        "name": "secret-bank",
        "source": {
            "protocol": "ftp",
            "server": "127.0.0.1:1",
            "remote_dir": "/pub/",
            "credentials": {"user": "anna", "password": "hunter2"},
        },
    }
    created = client.post("/api/v1/mirrors", json=definition)
    assert created.status_code == 201, created.text
    for answer in (
        created,
        client.get("/api/v1/mirrors/secret-bank"),
        client.get("/api/v1/mirrors"),
    ):
        assert "hunter2" not in answer.text
        assert "anna" in answer.text


def test_a_cancelled_run_stops_and_the_next_one_reuses_its_files(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    """A run cancelled mid-download ends "cancelled" without a release; the next run takes
    the files the cancelled one fetched from the archive instead of downloading them again.
    (Over loopback HTTP, with one transfer stalled so that the run is surely still
    downloading when the cancel arrives.)"""
    from conveyor.web.app import create_app

    root = tmp_path / "remote"
    root.mkdir()
    for index in range(400):
        (root / f"f{index:03d}.bin").write_bytes(os.urandom(256 * 1024))
    runtime = make_runtime(inline=False)
    runtime.executor.start()
    with (
        http_server(root, index_style="nginx") as server,
        TestClient(create_app(runtime=runtime)) as client,
    ):
        # The second batch of 200 stalls on f250.bin for 4 s: the run is cancelled there.
        server.faults.stall_seconds = 4
        server.faults.stall_after["f250.bin"] = 1000
        _define_http(client, server, "big", threads=1)
        run = client.post("/api/v1/mirrors/big/runs").json()
        deadline = time.monotonic() + 60
        while run["files_done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
            run = client.get(f"/api/v1/mirror-runs/{run['id']}").json()
        assert client.post(f"/api/v1/mirror-runs/{run['id']}/cancel").status_code == 200
        while (
            run["state"] not in ("cancelled", "failed", "published") and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            run = client.get(f"/api/v1/mirror-runs/{run['id']}").json()
        assert run["state"] == "cancelled", run
        assert run["transaction_id"] is None
        fetched = run["files_done"]
        assert 0 < fetched < 400
        assert client.post(f"/api/v1/mirror-runs/{run['id']}/cancel").status_code == 409
        again = client.post("/api/v1/mirrors/big/runs").json()
        while (
            again["state"] not in ("cancelled", "failed", "published")
            and time.monotonic() < deadline + 60
        ):
            time.sleep(0.05)
            again = client.get(f"/api/v1/mirror-runs/{again['id']}").json()
        assert again["state"] == "published", again
        assert again["files_reused"] >= fetched
        assert again["files_reused"] + again["files_done"] == 400


def test_a_changed_secret_key_is_said_not_crashed(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    """Passwords sealed with one key cannot be opened with another: a readable 409."""
    from cryptography.fernet import Fernet

    from conveyor.web.app import create_app

    first = make_runtime(secret_key=Fernet.generate_key().decode())
    with TestClient(create_app(runtime=first)) as client:
        definition = {
            "name": "sealed",
            "source": {
                "protocol": "ftp",
                "server": "127.0.0.1:1",
                "credentials": {"user": "anna", "password": "hunter2"},
            },
        }
        assert client.post("/api/v1/mirrors", json=definition).status_code == 201
    other = make_runtime(secret_key=Fernet.generate_key().decode())
    with TestClient(create_app(runtime=other)) as client:
        answer = client.get("/api/v1/mirrors/sealed")
        assert answer.status_code == 409
        assert "CONVEYOR_SECRET_KEY" in answer.json()["detail"]
        assert "hunter2" not in answer.text


def test_an_http_run_takes_small_files_on_the_loop_and_large_ones_in_threads(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One HTTP run, both engines: files up to LOOP_MAX_BYTES are tasks of the run's event
    loop, larger ones go to transfer threads; every file arrives whole, and a sidecar
    checks the file it describes on either path."""
    on_loop, in_threads = spy_on_transfers(monkeypatch, loop_max_bytes=100_000)
    root = tmp_path / "remote"
    (root / "sub").mkdir(parents=True)
    files = {
        "small.txt": b"small\n" * 100,
        "sub/seq.gz": gzip.compress(b">s\nACGT\n" * 2000),
        "large.bin": os.urandom(300_000),
        "sub/large.dat": os.urandom(150_000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    files["large.bin.md5"] = f"{hashlib.md5(files['large.bin']).hexdigest()}  large.bin\n".encode()
    files["small.txt.sha256"] = f"{hashlib.sha256(files['small.txt']).hexdigest()}\n".encode()
    for name in ("large.bin.md5", "small.txt.sha256"):
        (root / name).write_bytes(files[name])
    with http_server(root, index_style="nginx") as server:
        _define_http(client, server, "mixed", remote_files=["**/*"], threads=2)
        run = run_mirror(client, "mixed")
    release = published(client, run)
    assert {name: content(client, release[name]) for name in release} == files
    assert sorted(on_loop) == ["large.bin.md5", "small.txt", "small.txt.sha256", "sub/seq.gz"]
    assert sorted(in_threads) == ["large.bin", "sub/large.dat"]


@pytest.mark.parametrize("threads", [False, True], ids=["loop", "threads"])
def test_a_part_left_by_an_earlier_run_is_resumed_by_the_next(
    client: TestClient,
    runtime: Runtime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: bool,
) -> None:
    """A run looks for parts once, before it downloads; one found is resumed, not fetched
    again from its first byte, and the file published is whole."""
    from conveyor.mirror import downloads

    if threads:
        monkeypatch.setattr(downloads, "LOOP_MAX_BYTES", 0)
    data = os.urandom(200_000)
    root = tmp_path / "remote"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.bin").write_bytes(data)
    (root / "g.bin").write_bytes(data[:1000])
    assert runtime.settings.mirror_dir is not None
    left = runtime.settings.mirror_dir / "resumed" / "sub" / "f.bin.part"
    left.parent.mkdir(parents=True)
    left.write_bytes(data[:120_000])
    with http_server(root, index_style="nginx") as server:
        _define_http(client, server, "resumed", remote_files=["**/*"])
        run = run_mirror(client, "resumed")
        gets = [entry for entry in server.faults.requests if entry.startswith("GET /sub/f.bin")]
    release = published(client, run)
    assert content(client, release["sub/f.bin"]) == data
    assert release["sub/f.bin"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert gets == ["GET /sub/f.bin bytes=120000-"]
    assert not left.exists()


def test_a_release_is_not_published_when_its_files_cannot_be_flushed(
    client: TestClient, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush runs beside the release's rows; the commit waits for it, and a failed
    flush leaves no release behind."""
    root = tmp_path / "remote"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(10_000))

    def failing_flush() -> None:
        time.sleep(0.2)  # the rows are written by then
        raise OSError("the disk went away")

    monkeypatch.setattr(runtime.archive, "sync", failing_flush)
    with http_server(root, index_style="nginx") as server:
        _define_http(client, server, "unflushed", remote_files=["**/*"])
        run = run_mirror(client, "unflushed")
    assert run["state"] == "failed", run
    assert "the disk went away" in run["error"]
    assert run["transaction_id"] is None
    mirror = client.get("/api/v1/mirrors/unflushed").json()
    assert mirror["last_release"] is None
    assert client.get("/api/v1/transactions").json()["transactions"] == []


def test_a_sidecar_that_disagrees_fails_the_file_on_the_loop(
    client: TestClient, tmp_path: Path
) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    (root / "a.txt").write_bytes(b"the real bytes\n")
    (root / "a.txt.md5").write_bytes(f"{hashlib.md5(b'other').hexdigest()}  a.txt\n".encode())
    with http_server(root, index_style="nginx") as server:
        quick = {"stop_condition": QUICK_STOP, "wait_policy": QUICK_WAIT}
        _define_http(client, server, "sidecar", **quick)
        run = run_mirror(client, "sidecar")
    assert run["state"] == "failed", run
    (failed,) = run_files(client, run, "failed")
    assert failed["save_as"] == "a.txt"
    assert "sidecar" in failed["error"] and failed["attempts"] == 2


@pytest.mark.timeout(60)
def test_an_unexpected_error_on_the_loop_fails_the_run_and_stops_the_rest(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a transfer error (those fail one file): the run fails at its download step with
    the reason, the other transfers end, and nothing is published."""
    from conveyor.mirror import downloads

    monkeypatch.setattr(downloads, "LOOP_MAX_BYTES", 100_000)
    real_store = downloads.Downloader._store

    def store(self: downloads.Downloader, fetched: Any) -> None:
        if fetched.path.name.startswith("f007"):
            raise RuntimeError("the archive disk is on fire")
        real_store(self, fetched)

    monkeypatch.setattr(downloads.Downloader, "_store", store)
    root = tmp_path / "remote"
    root.mkdir()
    for index in range(40):
        (root / f"f{index:03d}.bin").write_bytes(os.urandom(1000))
    (root / "large.bin").write_bytes(os.urandom(200_000))
    with http_server(root, index_style="nginx") as server:
        _define_http(client, server, "fire", threads=3)
        run = run_mirror(client, "fire")
    assert run["state"] == "failed", run
    assert "the archive disk is on fire" in run["error"]
    assert run["transaction_id"] is None
    assert failed_task(client, run) == "download files"


@pytest.mark.parametrize("engine", ["loop", "threads"])
def test_a_file_that_cannot_be_written_here_stops_the_run_and_is_named(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """A local write failure is no transfer error: retrying that file or the next cannot
    help. The run fails at its download step naming the file and the reason, without a
    traceback for a reason. The failure is the kernel's own: a limit on the size of any
    file this process writes (RLIMIT_FSIZE) makes the part's write fail with EFBIG."""
    from conveyor.mirror import downloads

    # Both engines: a 6 MiB file goes to the loop under a raised limit, to a thread otherwise.
    monkeypatch.setattr(downloads, "LOOP_MAX_BYTES", 16 * 2**20 if engine == "loop" else 2**20)
    root = tmp_path / "remote"
    root.mkdir()
    (root / "a-small.bin").write_bytes(os.urandom(1000))
    (root / "huge.bin").write_bytes(os.urandom(6 * 2**20))
    with http_server(root, index_style="nginx") as server:
        _define_http(client, server, "full", threads=2)
        with _file_size_limit(4 * 2**20):
            run = run_mirror(client, "full")
        again = run_mirror(client, "full")  # room again: the next run resumes and publishes
    assert run["state"] == "failed", run
    assert run["error"].startswith("huge.bin: could not be written here: [Errno 27]"), run
    assert "Traceback" not in run["error"]
    assert run["transaction_id"] is None
    assert failed_task(client, run) == "download files"
    assert again["state"] == "published", again
    assert again["files_done"] + again["files_reused"] == 2


@contextmanager
def _file_size_limit(size: int) -> Iterator[None]:
    """Limit every file this process writes to ``size`` bytes; a write past it fails with
    EFBIG instead of the signal that would end the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
