"""``conveyor consumer add|list|show|remove`` against a running server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.client.api import ConveyorClient
from conveyor.client.bundler import BundleStream, collect, metadata_fields
from tests.support.consumers import make_zip
from tests.support.server import CONVEYOR, conveyor_env, running_server, wait_job

# Writes nothing: enough to be installed, subscribed, listed and removed.
TINY = {
    "__main__.py": b"import sys\nprint(sys.argv[1:])\n",
    "jsonpath2.txt": b'$[?(@["eventType"] = "org.example.never")]\n',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One producer for the module (auth off, loopback)."""
    with running_server(tmp_path_factory.mktemp("producer")) as url:
        yield url


def conveyor(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONVEYOR, *args],
        env=conveyor_env(Path("/nonexistent-conveyor-data")),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def subscriptions(url: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{url}/api/v1/subscriptions", params={"all": "true"}, timeout=10)
    answer.raise_for_status()
    return answer.json()["subscriptions"]  # type: ignore[no-any-return]


def consumer_names(url: str) -> dict[str, str]:
    answer = httpx.get(f"{url}/api/v1/consumers", timeout=10)
    answer.raise_for_status()
    return {row["name"]: row["state"] for row in answer.json()["consumers"]}


def test_add_list_show_and_remove_a_consumer(server: str, tmp_path: Path) -> None:
    package = make_zip(tmp_path / "tiny.zip", TINY)
    added = conveyor("consumer", "add", str(package), "--max-depth", "3", "--url", server)
    assert added.returncode == 0, added.stderr
    assert "consumer tiny: setting up" in added.stderr
    shown = json.loads(added.stdout)
    assert shown["name"] == "tiny"  # named after the zip
    assert shown["state"] == "ready"
    assert shown["error"] == ""
    assert shown["max_depth"] == 3
    assert shown["allow_self"] is False
    assert shown["filter"] == TINY["jsonpath2.txt"].decode().strip()
    assert shown["subscription_id"]
    feeding = [row for row in subscriptions(server) if row["id"] == shown["subscription_id"]]
    assert len(feeding) == 1
    assert feeding[0]["target"] == "consumer://tiny"

    listed = conveyor("consumer", "list", "--url", server)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"]: row for row in json.loads(listed.stdout)["consumers"]}
    assert names["tiny"]["state"] == "ready"
    assert names["tiny"]["sha256"] == shown["sha256"]

    again = conveyor("consumer", "show", "tiny", "--url", server)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == shown

    removed = conveyor("consumer", "remove", "tiny", "--url", server)
    assert removed.returncode == 0, removed.stderr
    assert "consumer tiny removed" in removed.stderr
    assert all(row["id"] != shown["subscription_id"] for row in subscriptions(server))
    assert "tiny" not in consumer_names(server)
    missing = conveyor("consumer", "remove", "tiny", "--url", server)
    assert missing.returncode == 1
    assert "no consumer 'tiny'" in missing.stderr


def test_add_without_waiting_answers_at_once(server: str, tmp_path: Path) -> None:
    # consumer.zip names nothing: --name does
    package = make_zip(tmp_path / "consumer.zip", TINY)
    added = conveyor(
        "consumer", "add", str(package), "--no-wait", "--name", "quick", "--url", server
    )
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["name"] == "quick"
    assert created["state"] == "installing"
    job = wait_job(server, int(created["job_id"]), timeout=170)
    assert job["state"] == "succeeded", job
    assert consumer_names(server)["quick"] == "ready"
    assert httpx.delete(f"{server}/api/v1/consumers/quick", timeout=10).status_code == 204


def test_add_of_a_package_whose_init_fails_names_the_step(server: str, tmp_path: Path) -> None:
    package = make_zip(
        tmp_path / "broken.zip",
        {
            "__main__.py": b"print('never run')\n",
            "init.sh": b"#!/usr/bin/env sh\necho 'no compiler here' >&2\nexit 1\n",
        },
    )
    added = conveyor("consumer", "add", str(package), "--url", server)
    assert added.returncode == 1, (added.stdout, added.stderr)
    shown = json.loads(added.stdout)
    assert shown["name"] == "broken"
    assert shown["state"] == "failed"
    assert shown["subscription_id"] is None
    assert "run init.sh" in shown["error"]
    assert "exit status 1" in shown["error"]
    assert "no compiler here" in shown["error"]
    last = added.stderr.strip().splitlines()[-1]
    assert last.startswith("error: consumer broken is failed: install consumer: run init.sh")
    assert "no compiler here" in last
    # it stays listed, failed, until removed
    assert consumer_names(server)["broken"] == "failed"
    assert httpx.delete(f"{server}/api/v1/consumers/broken", timeout=10).status_code == 204


def test_add_takes_a_memory_limit_as_a_size(server: str, tmp_path: Path) -> None:
    package = make_zip(tmp_path / "sized.zip", TINY)
    added = conveyor("consumer", "add", str(package), "--memory", "512MiB", "--url", server)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["memory_bytes"] == 512 * 1024**2
    try:
        # a new limit applies at once, the version ready keeps running
        for size, expected in (("4GiB", 4 * 1024**3), ("2G", 2 * 10**9), ("134217728", 2**27)):
            again = conveyor(
                "consumer", "add", str(package), "--memory", size, "--no-wait", "--url", server
            )
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["memory_bytes"] == expected, size
            wait_job(server, int(json.loads(again.stdout)["job_id"]), timeout=170)
    finally:
        assert httpx.delete(f"{server}/api/v1/consumers/sized", timeout=10).status_code == 204


@pytest.mark.parametrize(
    ("size", "why"),
    [
        ("lots", "'lots' is not a size: give bytes or a number with a unit"),
        ("4 parsecs", "'4 parsecs' is not a size"),
        ("-1GiB", "'-1GiB' is not a size"),
        ("1MiB", "'1MiB' is less than the least a run may have, 64MiB"),
    ],
)
def test_a_bad_memory_size_is_a_usage_error(
    server: str, tmp_path: Path, size: str, why: str
) -> None:
    package = make_zip(tmp_path / "badsize.zip", TINY)
    for command in (
        ("add", str(package), "--url", server),
        ("serve", str(package), "--producer", server, "--work-dir", str(tmp_path / "work")),
    ):
        refused = conveyor("consumer", *command, "--memory", size)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "Invalid value for '--memory'" in refused.stderr
        assert why in " ".join(refused.stderr.replace("│", " ").split()), refused.stderr
        assert "Traceback" not in refused.stderr
    assert "badsize" not in consumer_names(server)
    assert not (tmp_path / "work").exists()  # serve stopped before doing anything


def test_add_refuses_what_is_not_a_package(server: str, tmp_path: Path) -> None:
    not_zip = tmp_path / "junk.zip"
    not_zip.write_bytes(b"not a zip at all")
    refused = conveyor("consumer", "add", str(not_zip), "--url", server)
    assert refused.returncode == 1
    assert "not a zip archive" in refused.stderr
    missing = conveyor("consumer", "add", str(tmp_path / "absent.zip"), "--url", server)
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
    assert "junk" not in consumer_names(server)


def version_package(path: Path, version: str, init: bytes | None = None) -> Path:
    """A consumer writing ``uploads/version.txt`` for new transactions of project p-upgrade."""
    members = {
        "__main__.py": (
            "import pathlib, sys\n"
            f"(pathlib.Path(sys.argv[2]) / 'uploads' / 'version.txt').write_text('{version}')\n"
        ).encode(),
        "jsonpath2.txt": (
            b'$[?(@["eventType"] = "org.pacifica.metadata.ingest")]["data"][*]'
            b'[?((@["destinationTable"] = "Transactions.project") and (@["value"] = "p-upgrade"))]'
        ),
    }
    if init is not None:
        members["init.sh"] = init
    return make_zip(path, members)


def test_a_failed_upgrade_leaves_the_old_version_running(server: str, tmp_path: Path) -> None:
    zipped = {"Content-Type": "application/zip"}

    def install(package: Path) -> Any:
        added = httpx.post(
            f"{server}/api/v1/consumers",
            params={"name": "versioned"},
            content=package.read_bytes(),
            headers=zipped,
            timeout=30,
        )
        assert added.status_code == 202, added.text
        wait_job(server, int(added.json()["job_id"]), timeout=170)
        return httpx.get(f"{server}/api/v1/consumers/versioned", timeout=10).json()

    first = install(version_package(tmp_path / "v1.zip", "v1"))
    assert first["state"] == "ready"
    broken = version_package(tmp_path / "v2.zip", "v2", init=b"#!/usr/bin/env sh\nexit 1\n")
    try:
        after = install(broken)
        assert after["state"] == "ready", after
        assert after["version"] == first["version"]
        assert after["pending_version"] is None
        assert "was not installed: install consumer: run init.sh" in after["error"]
        payload = tmp_path / "payload"
        payload.mkdir()
        (payload / "in.txt").write_text("input\n")
        stream = BundleStream(collect([payload]), metadata_fields("p-upgrade", None, [], None))
        with ConveyorClient(server) as client:
            job = client.wait(int(client.upload(stream.chunks(), stream.length())["id"]))
        assert job["state"] == "succeeded", job

        def finished_run() -> Any:
            jobs = httpx.get(
                f"{server}/api/v1/jobs", params={"kind": "consumer.run"}, timeout=10
            ).json()["jobs"]
            return next((job for job in jobs if job["complete"]), None)

        deadline = time.monotonic() + 120
        while (run := finished_run()) is None:
            assert time.monotonic() < deadline, "no consumer run finished"
            time.sleep(0.1)
        assert run["state"] == "succeeded", run
        output = httpx.get(f"{server}/api/v1/transactions/{run['transaction_id']}").json()
        content = httpx.get(f"{server}/api/v1/files/{output['files'][0]['id']}/content")
        assert content.content == b"v1"
    finally:
        httpx.delete(f"{server}/api/v1/consumers/versioned", timeout=10)
