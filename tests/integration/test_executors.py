"""The same jobs under every executor: the in-process pool, and Celery over RabbitMQ or Redis.

Real processes: ``conveyor serve`` and ``conveyor worker`` on PostgreSQL with a shared local
archive folder. The last tests kill a worker mid-job and check that the job's lease runs out,
a second worker finishes it, and exactly one transaction (or one built cart) comes of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text, update

from conveyor.auth.principal import Principal
from conveyor.config import Settings
from conveyor.db.models import Mirror, MirrorRun
from conveyor.mirror.definition import parse_definition
from conveyor.mirror.service import save_mirror
from conveyor.runtime import Runtime
from tests.support.bundles import GOOD_MEMBERS, good_tar, move_metadata
from tests.support.databases import scratch_database
from tests.support.server import running_server, running_worker, wait_job
from tests.support.services import require_tcp

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
# Redis databases this module may take; it locks one with a key so parallel runs differ.
REDIS_DBS = range(15, 7, -1)
REDIS_LOCK = "conveyor-test:lock"

JobView = dict[str, Any]


# --- brokers ------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    path = shutil.which("rabbitmqctl")
    if path is None:
        return False
    try:
        done = subprocess.run([path, "-q", *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """A private RabbitMQ vhost when ``rabbitmqctl`` may make one, else the default vhost.

    Conveyor's Celery queue name is fixed, so parallel runs on one vhost would take each
    other's messages; a vhost of our own keeps this run's jobs to this run's workers.
    """
    require_tcp("RabbitMQ", "127.0.0.1", 5672)
    vhost = f"conveyor-test-{uuid.uuid4().hex[:10]}"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
        "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
    ):
        try:
            yield f"{RABBITMQ}/{vhost}"
        finally:
            _rabbitmqctl("delete_vhost", vhost)
    else:
        _rabbitmqctl("delete_vhost", vhost)
        yield f"{RABBITMQ}//"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis database number this run holds alone (locked by a key), flushed afterwards."""
    require_tcp("Redis", "127.0.0.1", 6379)
    import redis

    token = uuid.uuid4().hex
    for number in REDIS_DBS:
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.set(REDIS_LOCK, token, nx=True, ex=900):
            try:
                yield f"redis://127.0.0.1:6379/{number}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    pytest.fail(f"every Redis database in {list(REDIS_DBS)} is locked by another test run")


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker in turn."""
    name = "amqp_url" if request.param == "rabbitmq" else "redis_url"
    return str(request.getfixturevalue(name))


# --- helpers ------------------------------------------------------------------------------


def _logs(*dirs: Path) -> str:
    parts = []
    for directory in dirs:
        for path in sorted(directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def _poll(check: Callable[[], JobView | None], timeout: float, what: str) -> JobView:
    """Call ``check`` until it returns a value, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _job(url: str, job_id: int) -> JobView:
    response = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _upload(url: str, body: bytes) -> int:
    response = httpx.post(
        f"{url}/api/v1/ingest",
        content=body,
        headers={"Content-Type": "application/x-tar"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _move(url: str, metadata: list[dict[str, Any]]) -> int:
    response = httpx.post(f"{url}/api/v1/ingest/move", json=metadata, timeout=30)
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _finished(url: str, job_id: int, logs: tuple[Path, ...], timeout: float = 90) -> JobView:
    try:
        return wait_job(url, job_id, timeout=timeout)
    except pytest.fail.Exception as exc:
        raise AssertionError(f"{exc}\n{_logs(*logs)}") from None


def _file_hashes(url: str, transaction_id: int) -> dict[str, str]:
    """``subdir/name`` -> sha256 of every file of the transaction, from the API."""
    txn = httpx.get(f"{url}/api/v1/transactions/{transaction_id}", timeout=10).json()
    return {f"{f['subdir']}/{f['name']}": f["sha256"] for f in txn["files"]}


def _transactions_of(database_url: str, job_id: int) -> int:
    """How many transactions the database holds for the job."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM transactions WHERE job_id = :job"), {"job": job_id}
            ).scalar_one()
    finally:
        engine.dispose()
    return int(count)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _settings(
    tmp_path: Path, database_url: str, broker_url: str, incoming: Path, **extra: str
) -> dict[str, str]:
    return {
        "database_url": database_url,
        "archive_url": f"file://{tmp_path / 'archive'}",
        "cart_store_url": f"file://{tmp_path / 'bundles'}",
        "broker_url": broker_url,
        "move_roots": json.dumps([str(incoming)]),
        "db_connect_attempts": "5",
        "db_connect_wait": "1",
        **extra,
    }


# --- tests --------------------------------------------------------------------------------


def test_local_pool_runs_an_upload(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as url:
        job_id = _upload(url, good_tar())
        job = _finished(url, job_id, (data,))
        assert job["state"] == "succeeded", str(job)
        hashes = _file_hashes(url, job["transaction_id"])
    assert hashes == {
        key.removeprefix("data/"): hashlib.sha256(body).hexdigest()
        for key, body in GOOD_MEMBERS.items()
    }


def test_celery_runs_upload_and_move(broker_url: str, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sources = {str(incoming / f"file-{n}.txt"): f"moved {n}\n".encode() for n in range(3)}
    for path, body in sources.items():
        Path(path).write_bytes(body)
    server_dir, worker_dir = tmp_path / "server", tmp_path / "worker"
    with scratch_database("postgresql") as database_url:
        settings = _settings(tmp_path, database_url, broker_url, incoming, sweep_seconds="2")
        with running_server(server_dir, **settings) as url, running_worker(worker_dir, **settings):
            upload_id = _upload(url, good_tar())
            move_id = _move(url, move_metadata(sources, subdir="data/moved"))
            upload = _finished(url, upload_id, (server_dir, worker_dir))
            move = _finished(url, move_id, (server_dir, worker_dir))
            assert upload["state"] == "succeeded", str(upload)
            assert move["state"] == "succeeded", str(move)
            assert len(_file_hashes(url, upload["transaction_id"])) == 3
            moved = _file_hashes(url, move["transaction_id"])
    assert moved == {
        f"moved/{Path(path).name}": hashlib.sha256(body).hexdigest()
        for path, body in sources.items()
    }


def _zero_files(incoming: Path, sizes: list[int]) -> dict[str, tuple[int, str, str]]:
    """Sparse all-zero files of the given (distinct) sizes: path -> (size, sha256, md5)."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    block, done, out = bytes(MiB), 0, {}
    for number, size in enumerate(sorted(sizes)):
        while done < size:
            step = min(MiB, size - done)
            sha.update(block[:step])
            md5.update(block[:step])
            done += step
        path = incoming / f"zeros-{number}.bin"
        with path.open("wb") as handle:
            handle.truncate(size)
        out[str(path)] = (size, sha.copy().hexdigest(), md5.copy().hexdigest())
    return out


def _md5_metadata(files: dict[str, tuple[int, str, str]]) -> list[dict[str, Any]]:
    entries = move_metadata({}, subdir="data/big")
    for path, (size, _sha256, md5) in files.items():
        entries.append(
            {
                "destinationTable": "Files",
                "name": Path(path).name,
                "subdir": "data/big",
                "size": size,
                "hashtype": "md5",
                "hashsum": md5,
                "mimetype": "application/octet-stream",
                "source": path,
            }
        )
    return entries


def test_killed_worker_loses_no_work(amqp_url: str, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # About 520 MB to copy, hash twice (sha256 and the declared md5) and write: several
    # seconds of work for one worker thread. Sizes differ, so no two files share a blob.
    files = _zero_files(incoming, [128 * MiB + n * MiB for n in range(4)])
    server_dir, first_dir, second_dir = (tmp_path / name for name in ("server", "w1", "w2"))
    dirs = (server_dir, first_dir, second_dir)
    try:
        with scratch_database("postgresql") as database_url:
            settings = _settings(
                tmp_path, database_url, amqp_url, incoming, lease_seconds="3", sweep_seconds="1"
            )
            with running_server(server_dir, **settings) as url:
                with running_worker(first_dir, **settings) as first:
                    job_id = _move(url, _md5_metadata(files))

                    def copying() -> JobView | None:
                        job = _job(url, job_id)
                        assert not job["complete"], f"finished before the kill: {job}"
                        assert first.poll() is None, f"worker 1 died: {_logs(first_dir)}"
                        running = job["state"] == "running" and job["task"] == "move files"
                        return job if running else None

                    _poll(copying, 60, f"job {job_id} running on worker 1")
                    victims = [first.pid, *_children(first.pid)]
                    for pid in victims:
                        os.kill(pid, signal.SIGKILL)
                    first.wait(timeout=10)

                job = _job(url, job_id)
                assert (job["state"], job["transaction_id"]) == ("running", None), job
                assert job["attempts"] == 1, job
                assert _transactions_of(database_url, job_id) == 0
                listed = httpx.get(f"{url}/api/v1/transactions", timeout=10).json()
                assert all(t["job_id"] != job_id for t in listed["transactions"])

                with running_worker(second_dir, **settings):
                    job = _finished(url, job_id, dirs, timeout=120)
                assert job["state"] == "succeeded", str(job)
                assert job["attempts"] >= 2, job
                assert _transactions_of(database_url, job_id) == 1
                hashes = _file_hashes(url, job["transaction_id"])
        assert hashes == {f"big/{Path(path).name}": sha for path, (_, sha, _) in files.items()}
    finally:
        shutil.rmtree(tmp_path / "archive", ignore_errors=True)


def _put_random(url: str, archive_id: int, size: int) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(size // MiB):
            yield os.urandom(MiB)

    answer = httpx.put(f"{url}/pacifica/archive/{archive_id}", content=chunks(), timeout=120)
    assert answer.status_code == 201, answer.text


def test_killed_worker_mid_build_resumes(amqp_url: str, tmp_path: Path) -> None:
    # Random bytes deflate slowly (tens of MB/s): several seconds of bundling to interrupt.
    ids = [201, 202, 203, 204]
    server_dir, first_dir, second_dir = (tmp_path / name for name in ("server", "w1", "w2"))
    dirs = (server_dir, first_dir, second_dir)
    try:
        with scratch_database("postgresql") as database_url:
            settings = _settings(
                tmp_path, database_url, amqp_url, tmp_path, lease_seconds="3", sweep_seconds="1"
            )
            with running_server(server_dir, **settings) as url:
                for archive_id in ids:
                    _put_random(url, archive_id, 64 * MiB)
                request = {
                    "files": [{"id": archive_id} for archive_id in ids],
                    "format": "zip",
                    "compression": "deflate",
                }
                with running_worker(first_dir, **settings) as first:
                    made = httpx.post(f"{url}/api/v1/carts", json=request, timeout=30)
                    assert made.status_code == 201, made.text
                    cart_url = f"{url}/api/v1/carts/{made.json()['id']}"

                    def bundling() -> JobView | None:
                        cart = httpx.get(cart_url, timeout=10).json()
                        assert cart["status"] != "ready", f"built before the kill: {cart}"
                        assert first.poll() is None, f"worker 1 died: {_logs(first_dir)}"
                        return cart if cart["status"] == "bundling" else None

                    cart = _poll(bundling, 60, "the cart bundling on worker 1")
                    for pid in [first.pid, *_children(first.pid)]:
                        os.kill(pid, signal.SIGKILL)
                    first.wait(timeout=10)
                assert httpx.get(f"{url}/api/v1/carts/{cart['id']}/bundle").status_code == 409

                with running_worker(second_dir, **settings):
                    job = _finished(url, cart["job_id"], dirs, timeout=180)
                assert job["state"] == "succeeded", str(job)
                assert job["attempts"] >= 2, job
                cart = httpx.get(cart_url, timeout=10).json()
                assert cart["status"] == "ready", cart
                target = tmp_path / "cart.zip"
                with httpx.stream("GET", f"{cart_url}/bundle", timeout=60) as answer:
                    assert answer.status_code == 200
                    with target.open("wb") as out:
                        for chunk in answer.iter_bytes():
                            out.write(chunk)
        assert target.stat().st_size == cart["bytes_total"]
        with zipfile.ZipFile(target) as archive:
            assert archive.testzip() is None
            assert sorted(archive.namelist()) == sorted(
                ["conveyor-manifest.json", *(str(archive_id) for archive_id in ids)]
            )
        assert len(list((tmp_path / "bundles" / "bundles").rglob("*.zip"))) == 1
    finally:
        shutil.rmtree(tmp_path / "archive", ignore_errors=True)
        shutil.rmtree(tmp_path / "bundles", ignore_errors=True)


def _worker_log(directory: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in directory.glob("*.log"))


def _mirror_runs(runtime: Runtime) -> list[str]:
    with runtime.db.session() as session:
        return list(session.scalars(select(MirrorRun.state)))


def test_celery_beat_in_a_worker_starts_a_due_mirror_run_once(
    amqp_url: str, tmp_path: Path
) -> None:
    """A running beat (``conveyor worker --beat``) sends the schedule tick through the broker.

    The worker's own sweeper ticks when it starts (its interval is an hour here), before
    the mirror is due, so the run that starts can only come from beat's tick.
    """
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "a.txt").write_text("a\n")
    worker_dir = tmp_path / "worker"
    with scratch_database("postgresql") as database_url:
        settings = _settings(tmp_path, database_url, amqp_url, tmp_path, sweep_seconds="3600")
        runtime = Runtime.open(
            Settings(data_dir=tmp_path / "test-side", **_typed(settings)), inline=True
        )
        try:
            definition = parse_definition(
                {
                    "name": "beaten",
                    "source": {"protocol": "local", "remote_dir": str(bank)},
                    "schedule": "0 3 * * *",
                }
            )
            owner = Principal("conveyor", admin=True, authenticated=True)
            save_mirror(runtime, owner, definition, "native")
            with running_worker(worker_dir, worker_args=("--beat",), **settings):
                _poll(
                    lambda: {"ready": True} if " ready." in _worker_log(worker_dir) else None,
                    60,
                    "the worker and its beat up",
                )
                time.sleep(3)  # the worker's first sweep has ticked: nothing was due then
                assert _mirror_runs(runtime) == []
                with runtime.db.session() as session:
                    session.execute(
                        update(Mirror).values(next_run_at=datetime.now(UTC) - timedelta(seconds=1))
                    )
                _poll(
                    lambda: {"done": True} if _mirror_runs(runtime) == ["published"] else None,
                    90,
                    f"a published run ({_mirror_runs(runtime)})",
                )
                time.sleep(2)  # a second tick would have started a second run by now
                log = _worker_log(worker_dir)
            assert _mirror_runs(runtime) == ["published"]
            assert "Task conveyor.mirror_schedules[" in log, log[-3000:]
        finally:
            runtime.close()


def _typed(settings: dict[str, str]) -> dict[str, Any]:
    """The settings a test-side runtime needs (the worker reads the rest from its env)."""
    keep = ("database_url", "archive_url", "cart_store_url", "broker_url")
    return {key: settings[key] for key in keep}
