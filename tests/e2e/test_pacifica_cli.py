"""The published client ``pacifica-cli`` 0.5.2, run unchanged against a real ``conveyor serve``.

``pacifica-cli upload`` first resolves every field of its ``uploader.json`` through the
policy service (``POST /pacifica/policy/uploader``: who ``--logon`` names, the instruments,
the projects of that instrument, the members of that project, the project for the folder
prefix), then bundles the files twice (once to learn the length), posts the bundle to
``/pacifica/ingest/upload`` and polls ``/get_state`` until the job is done, printing the
final state JSON. Its endpoints come from ``~/.pacifica_cli/config.ini``, as its own
``configure`` command writes it; ``HOME`` is a temporary folder.

The server runs the strict (Pacifica) policy, once with authentication off (``--logon``
is trusted, as in Pacifica) and once with API tokens, which the client sends as the
password of Basic auth. Projects P and Q, instrument I of P and user alice, a member of P,
are registered beforehand with ``conveyor admin``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.bundles import UPLOADER_JSON
from tests.support.server import run_conveyor, running_server
from tests.support.services import require_command

pytestmark = pytest.mark.integration

UNICODE_NAME = "données/データ ファイル (1).txt"
FILES = {
    "plain.txt": b"hello from pacifica-cli\n",
    UNICODE_NAME: "température 27 °C\n".encode(),
    "bin/blob.bin": bytes(range(256)) * 1200,
    "bin/empty.dat": b"",
}
# Variables that would override config.ini or the endpoints pacifica-cli derives from it.
CLIENT_VARIABLES = ("AUTHENTICATION_", "UPLOAD", "DOWNLOAD_", "INGEST_", "POLICY_", "PACIFICA_")


@dataclass(frozen=True)
class Server:
    """A running server and how the client authenticates to it."""

    url: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@pytest.fixture(scope="module")
def cli() -> str:
    """The pacifica-cli executable (from this virtualenv, else from PATH)."""
    return require_command("pacifica-cli")


@pytest.fixture(scope="module", params=["none", "token"], ids=["auth-none", "auth-token"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A strict-policy server knowing projects P (alice) and Q, and instrument I of P."""
    data_dir = tmp_path_factory.mktemp(f"cli-server-{request.param}")
    settings = {"policy": "strict", "auth": request.param}
    run_conveyor(data_dir, settings, ["admin", "project", "add", "P", "--title", "Project P"])
    commands = [
        ["admin", "project", "add", "Q"],  # alice is no member of Q
        ["admin", "instrument", "add", "I", "--project", "P"],
        ["admin", "user", "add", "alice", "--project", "P"],
    ]
    if request.param == "token":
        commands.append(["admin", "token", "create", "--user", "alice"])
    outputs = run_conveyor(data_dir, settings, *commands)
    token = json.loads(outputs[-1])["token"] if request.param == "token" else None
    with running_server(data_dir, **settings) as url:
        yield Server(url, token)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the client runs in, holding the files to upload."""
    root = tmp_path_factory.mktemp("cli-files")
    for relative, data in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def client_home(tmp_path: Path, server: Server) -> dict[str, str]:
    """A HOME with pacifica-cli's config.ini pointing every endpoint at the server."""
    home = tmp_path / "home"
    (home / ".pacifica_cli").mkdir(parents=True)
    uploader_json = home / "uploader.json"
    uploader_json.write_text(json.dumps(UPLOADER_JSON, indent=2))
    base = server.url
    auth = (
        f"type = basic\nusername = alice\npassword = {server.token}\n"
        if server.token
        else "type = None\nusername =\npassword =\n"
    )
    (home / ".pacifica_cli" / "config.ini").write_text(
        "[globals]\ninteractive = False\n\n"
        "[endpoints]\n"
        f"upload_url = {base}/pacifica/ingest/upload\n"
        f"upload_status_url = {base}/pacifica/ingest/get_state\n"
        f"upload_policy_url = {base}/pacifica/policy/uploader\n"
        f"upload_validation_url = {base}/pacifica/policy/ingest\n"
        f"download_url = {base}/pacifica/cartd\n"
        f"download_policy_url = {base}/pacifica/policy/status/transactions/by_id\n"
        "ca_bundle = True\n\n"
        f"[authentication]\n{auth}cert =\nkey =\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_VARIABLES)}
    env.update(HOME=str(home), UPLOADER_CONFIG=str(uploader_json), PYTHONIOENCODING="utf-8")
    return env


def run_cli(
    cli: str, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def final_state(stdout: str) -> dict[str, Any]:
    """The state JSON pacifica-cli prints last (after its progress output)."""
    start = stdout.rfind("\n{\n")
    assert start >= 0, stdout
    state: dict[str, Any] = json.loads(stdout[start + 1 :])
    return state


def test_upload_with_values_given_as_flags(
    cli: str, server: Server, files: Path, tmp_path: Path
) -> None:
    env = client_home(tmp_path, server)
    done = run_cli(
        cli,
        env,
        files,
        "upload",
        "--logon",
        "alice",
        "--project",
        "P",
        "--instrument",
        "I",
        "plain.txt",
        UNICODE_NAME,
        "bin",  # a folder: the client walks it
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for meta_id, value in [
        ("logon", "alice"),
        ("instrument", "I"),
        ("project", "P"),
        ("user-of-record", "alice"),
        ("directory-project", "P"),
    ]:
        assert f"Setting {meta_id} to {value}." in done.stdout
    state = final_state(done.stdout)
    assert (state["state"], state["task"], int(float(state["task_percent"]))) == (
        "OK",
        "ingest metadata",
        100,
    ), state
    assert state["complete"] is True and state["exception"] == ""

    job = httpx.get(
        f"{server.url}/api/v1/jobs/{state['job_id']}", headers=server.headers, timeout=10
    ).json()
    assert job["state"] == "succeeded", job
    txn = httpx.get(
        f"{server.url}/api/v1/transactions/{job['transaction_id']}",
        headers=server.headers,
        timeout=10,
    ).json()
    assert (txn["submitter"], txn["project"], txn["instrument"]) == ("alice", "P", "I")
    assert txn["key_values"] == [{"key": "User of Record", "value": "alice"}]
    # the directory-project entry puts every file under "Project ID P/"
    rows = {f"{row['subdir']}/{row['name']}": row for row in txn["files"]}
    assert set(rows) == {f"Project ID P/{relative}" for relative in FILES}
    for relative, data in FILES.items():
        row = rows[f"Project ID P/{relative}"]
        assert row["size"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert (row["hashtype"], row["hashsum"]) == ("sha1", hashlib.sha1(data).hexdigest())
        content = httpx.get(
            f"{server.url}/api/v1/files/{row['id']}/content", headers=server.headers, timeout=10
        )
        assert content.status_code == 200
        assert content.content == data, relative


def jobs(server: Server) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/jobs", headers=server.headers, timeout=10)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["jobs"]
    return listed


def test_project_of_which_the_user_is_no_member_stops_the_client_before_it_uploads(
    cli: str, server: Server, files: Path, tmp_path: Path
) -> None:
    before = jobs(server)
    done = run_cli(
        cli,
        client_home(tmp_path, server),
        files,
        "upload",
        "--logon",
        "alice",
        "--project",
        "Q",
        "--instrument",
        "I",
        "plain.txt",
    )
    # Policy lists no members of Q to alice, so the client cannot fill "User of Record".
    assert done.returncode != 0, done.stdout
    assert "Could not find value for user-of-record" in done.stderr
    assert jobs(server) == before
