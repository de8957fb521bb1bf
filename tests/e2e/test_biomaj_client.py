"""BioMAJ's published download client, ``biomaj-download`` 3.2.12, used unchanged against us.

The client cannot share Conveyor's virtualenv (it pins protobuf 3.20 and pika 0.13), so the
test builds one for it, once per session, from ``requirements/biomaj-client.lock``. It then
runs a real ``conveyor serve`` (the ``/api/download`` API) and ``conveyor biomaj consume``
(the queue), both on the machine's Redis under a key prefix of this test's own, and a
loopback FTP server holding a bank's files.

In the client's virtualenv a script does what BioMAJ's ``wf_download`` does in remote mode:
it lists the FTP server with the downloader the client's ``get_handler`` gives, keeps the
files the bank's patterns match (plus one that is not there), opens a session at Conveyor,
sends one Operation per file with ``DownloadClient.download_remote_files``, waits with
``wait_for_download`` (which polls the status every 10 s and, on errors, reads them from
Conveyor) and cleans the session. The only help it gets: pika 0.13 needs the
``collections.Callable`` alias that Python 3.10 removed (see the script).

The client hard-codes the queue ``biomajdownload`` on the default exchange. Parallel runs are
kept apart by a RabbitMQ virtual host of the test's own, made with ``rabbitmqctl`` and deleted
after. Where ``rabbitmqctl`` cannot be run (a broker on another machine) the test falls back
to the default vhost and purges ``biomajdownload`` before and after (deleting it after when
the test made it). Its limits there: two runs at once on one broker would take each other's
messages, and an existing ``biomajdownload`` declared without Conveyor's dead-letter
arguments makes the consumer fail to declare it.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from tests.support.biomaj import REDIS_URL, drop_keys, rabbitmq_vhost, redis_prefix
from tests.support.mirror_servers import ServerInfo, ftp_server
from tests.support.server import CONVEYOR, conveyor_env, running_server, stop
from tests.support.services import missing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "biomaj-client.lock"
QUEUE = "biomajdownload"
# A remote date well in the past: the FTP listing then shows the year, so the day BioMAJ
# reads back (and Conveyor stamps the download with) does not depend on today's date.
REMOTE_TIME = datetime(2023, 5, 17, 12, 0, tzinfo=UTC).timestamp()
BANK_FILES: dict[str, bytes] = {
    "alu.fa": b">alu\nGGCCGGGCGCGGTGGCTCACGCCTGTAATCCCAGCA\n" * 200,
    "alu.fa.gz": gzip.compress(b">alu\nACGT\n" * 500, mtime=0),  # Conveyor checks gzip files
    "db.bin": random.Random(5).randbytes(300_000),
    "README": b"not wanted by the bank's pattern\n",
}
MISSING = "gone.fa"
CLIENT_SECONDS = 240

WANTED = sorted(name for name in BANK_FILES if name != "README")

CLIENT_SCRIPT = '''\
"""Run by the test in the biomaj-download virtualenv: BioMAJ's remote download, as is."""
import collections
import collections.abc
import json
import logging
import os
import sys

# pika 0.13.0, which biomaj-download 3.2.12 pins, still calls collections.Callable, gone
# since Python 3.10: give it back the alias older Pythons had. The client is otherwise as
# published.
collections.Callable = collections.abc.Callable

from biomaj_download.downloadclient import DownloadClient

config = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")

client = DownloadClient(
    rabbitmq_host="127.0.0.1",
    rabbitmq_port=5672,
    rabbitmq_vhost=config["vhost"],
    rabbitmq_user="guest",
    rabbitmq_password="guest",
)
# What a bank's update does first: get a downloader for the bank's protocol, list the
# remote dir and match the bank's patterns (biomaj's workflow, wf_download).
lister = client.get_handler(
    "ftp",
    config["server"],
    config["remote_dir"],
    credentials=config["credentials"],
    http_method="GET",
)
files, dirs = lister.list()
lister.match(config["patterns"], files, dirs)
wanted = list(lister.files_to_download)
lister.close()
# A file the listing had, gone before its download (match() sets save_as to the name).
name = config["missing"]
missing = dict(wanted[0], name=name, save_as=name, hash="", size=0)
lister.files_to_download = wanted + [missing]

session = client.create_session(config["bank"], proxy=config["proxy"])
bank_config = {"remote.dir": config["remote_dir"]}
client.download_remote_files(bank_config, [lister], config["local_dir"])
download_error = client.wait_for_download()
progress, errors = client.download_status()
client.clean()
print(json.dumps({
    "session": session,
    "download_error": download_error,
    "progress": progress,
    "errors": errors,
    "sent": [
        {key: entry.get(key) for key in ("name", "save_as", "size", "year", "month", "day")}
        for entry in lister.files_to_download
    ],
    "local_files": sorted(os.listdir(config["local_dir"])),
}))
'''


class Client(NamedTuple):
    """What the client script reported, and what it logged."""

    report: dict[str, Any]
    log: str


# -- the client's virtualenv -------------------------------------------------------------------


def _python311() -> str:
    """A Python 3.11, the version the lock was resolved for (pycurl's wheels are per version)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        missing("the biomaj-download lock is for Python 3.11, and no python3.11 is on PATH")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def biomaj_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a virtualenv with biomaj-download 3.2.12 from the hashed lock."""
    folder = tmp_path_factory.mktemp("biomaj-client")
    venv, log = folder / "venv", folder / "pip.log"
    subprocess.run([_python311(), "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    with log.open("wb") as sink:
        done = subprocess.run(
            [
                str(python),
                *("-m", "pip", "install", "--disable-pip-version-check", "--no-input"),
                *("--require-hashes", "-r", str(LOCK)),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    if done.returncode != 0:
        output = log.read_text(errors="replace")
        hint = " (libcurl headers missing?)" if "curl-config" in output else ""
        pytest.fail(f"installing {LOCK.name} failed{hint}: {output[-3000:]}")
    return python


# -- services ----------------------------------------------------------------------------------


@contextmanager
def biomaj_vhost() -> Iterator[str]:
    """A vhost for BioMAJ's fixed queue name: the test's own, else ``/`` purged around use."""
    with rabbitmq_vhost() as name:
        if name is not None:
            yield name
            return
        existed = queue_state("/") is not None
        settle_default_queues(delete=False)
        try:
            yield "/"
        finally:
            # Queues this test brought into being go; ones that were there are only emptied.
            settle_default_queues(delete=not existed)


def broker_url(vhost: str) -> str:
    """The AMQP URL of ``vhost`` on the machine's RabbitMQ as guest."""
    return "amqp://guest:guest@127.0.0.1:5672/" + ("/" if vhost == "/" else vhost)


def settle_default_queues(*, delete: bool) -> None:
    """Purge (or delete) ``biomajdownload`` and its dead-letter queue on ``/``, if there."""
    with Connection(broker_url("/")) as connection:
        for name in (QUEUE, f"{QUEUE}.dead"):
            channel: Any = connection.channel()
            try:
                if delete:
                    channel.queue_delete(name)
                else:
                    channel.queue_purge(name)
            except Exception:  # absent: the failed call closed this channel only
                pass
            finally:
                if channel.is_open:
                    channel.close()


def queue_state(vhost: str, name: str = QUEUE) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``, or None while it does not exist."""
    with Connection(broker_url(vhost)) as connection:
        channel: Any = connection.channel()
        try:
            _name, messages, consumers = channel.queue_declare(name, passive=True)
        except Exception:
            return None
        finally:
            if channel.is_open:
                channel.close()
        return int(messages), int(consumers)


@contextmanager
def running_consumer(
    data_dir: Path, vhost: str, prefix: str, metrics_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``conveyor biomaj consume`` on ``vhost``; yields once it consumes ``biomajdownload``.

    The client publishes without declaring the queue, so a message sent before the
    consumer declared it would be dropped by the broker.
    """
    log_path = data_dir / "consume.log"
    argv = [
        *CONVEYOR,
        *("biomaj", "consume", "--broker", broker_url(vhost), "--redis", REDIS_URL),
        *("--metrics-url", metrics_url, "--threads", "2"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=conveyor_env(data_dir, biomaj_redis_prefix=prefix),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while (state := queue_state(vhost)) is None or state[1] < 1:
            if process.poll() is not None:
                pytest.fail(f"consumer exited {process.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"consumer not consuming in 60 s: {log_path.read_text()}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)


@pytest.fixture
def bank_server(tmp_path: Path) -> Iterator[ServerInfo]:
    """The bank's files on a loopback FTP server (user:secret), dated in the past."""
    root = tmp_path / "remote"
    root.mkdir()
    for name, data in BANK_FILES.items():
        path = root / name
        path.write_bytes(data)
        os.utime(path, (REMOTE_TIME, REMOTE_TIME))
    with ftp_server(root, user="user", password="secret") as info:
        yield info


def run_client(python: Path, folder: Path, config: dict[str, Any]) -> Client:
    """Run the client script with ``config``; its JSON report and its log."""
    script = folder / "biomaj_client.py"
    script.write_text(CLIENT_SCRIPT)
    # A clean environment: nothing of Conveyor's settings or virtualenv leaks into the client.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [str(python), str(script), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=CLIENT_SECONDS,
        env=env,
        cwd=folder,
        check=False,
    )
    assert done.returncode == 0, f"client failed: {done.stderr[-4000:]}"
    return Client(json.loads(done.stdout.strip().splitlines()[-1]), done.stderr)


def bank_metrics(url: str, bank: str) -> dict[str, float]:
    """The server's ``biomaj_download*`` samples for ``bank``, summed over hosts, by name."""
    found: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("biomaj_download") and sample.labels.get("bank") == bank:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # the client's virtualenv is built in this test's setup
def test_the_published_client_downloads_a_bank_through_conveyor(
    biomaj_python: Path, bank_server: ServerInfo, tmp_path: Path
) -> None:
    bank = f"bank_{uuid.uuid4().hex[:10]}"
    local_dir = tmp_path / "offline"
    local_dir.mkdir()
    data_dir = tmp_path / "conveyor"
    with redis_prefix() as prefix, biomaj_vhost() as vhost:
        with (
            running_server(data_dir, biomaj_redis_url=REDIS_URL, biomaj_redis_prefix=prefix) as url,
            running_consumer(data_dir, vhost, prefix, url) as consumer,
        ):
            client = run_client(
                biomaj_python,
                tmp_path,
                {
                    "bank": bank,
                    "proxy": url,
                    "vhost": vhost,
                    "server": f"127.0.0.1:{bank_server.port}",
                    "remote_dir": "/",
                    "credentials": "user:secret",
                    "patterns": [r"^alu\.fa(\.gz)?$", r"^db\.bin$"],
                    "missing": MISSING,
                    "local_dir": str(local_dir),
                },
            )
            # The consumer posted these to the server's /api/download/metrics.
            counted = bank_metrics(url, bank)
            status = httpx.get(
                f"{url}/api/download/status/download/{bank}/{client.report['session']}",
                timeout=10,
            ).json()
            assert consumer.poll() is None
        # Unacknowledged messages would be back in the queue now that the consumer left.
        assert queue_state(vhost) == (0, 0)
        assert queue_state(vhost, f"{QUEUE}.dead") == (0, 0)
        assert "4 BioMAJ message(s) handled" in (data_dir / "consume.log").read_text()
        # The prefix is still ours here: the clean left nothing of the session behind.
        assert drop_keys(prefix) == 0

    report = client.report
    assert [(entry["name"], entry["save_as"]) for entry in report["sent"]] == [
        (name, name) for name in [*WANTED, MISSING]
    ]
    # Every message was counted: progress covers the failure too, as BioMAJ's service does.
    assert (report["progress"], report["errors"]) == (len(WANTED) + 1, 1)
    assert report["download_error"] is True
    # wait_for_download read the error from /api/download/error/... and logged it.
    logged = [
        line.split("Errors:Info:", 1)[1]
        for line in client.log.splitlines()
        if "RemoteDownload:Errors:Info:" in line
    ]
    assert len(logged) == 1, client.log[-3000:]
    assert logged[0].startswith(f"{MISSING}: "), logged
    assert status == {"progress": -1, "errors": -1}  # clean() cleared the session

    # A failed file may leave NAME.part for a resume (BioMAJ leaves NAME itself), no more.
    left = set(report["local_files"])
    assert set(WANTED) <= left
    assert left - set(WANTED) <= {f"{MISSING}.part"}, left
    for name in WANTED:
        path = local_dir / name
        assert path.read_bytes() == BANK_FILES[name], name
        # Stamped with the remote day, midnight local time, as BioMAJ's own download does.
        day = datetime.fromtimestamp(REMOTE_TIME, UTC)
        assert path.stat().st_mtime == datetime(day.year, day.month, day.day).timestamp()
    # The sizes sent are the listing's, and Conveyor checked each download against them.
    sizes = {entry["name"]: entry["size"] for entry in report["sent"]}
    assert {name: int(sizes[name]) for name in WANTED} == {
        name: len(BANK_FILES[name]) for name in WANTED
    }

    assert counted["biomaj_download_total"] == len(WANTED)
    assert counted["biomaj_download_errors_total"] == 1
    assert counted["biomaj_download_file_size_total"] == sum(
        len(BANK_FILES[name]) for name in WANTED
    )
