"""The `conveyor` command: refusals at start-up, admin verbs, and the upload client."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.banks import ALU_BANK, ALU_FILES, QUICK_RETRIES, write_alu_tree
from tests.support.consumers import make_zip
from tests.support.receivers import running_receiver
from tests.support.server import CONVEYOR, conveyor_env, running_server
from tests.support.services import free_port


def run(
    data_dir: Path, *args: str, timeout: float = 60, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONVEYOR, *args],
        env=conveyor_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_auth_none_is_refused_off_loopback(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "only serves on loopback" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_configuration_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", auth="sometimes")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "CONVEYOR_AUTH" in lines[0]


def test_unreachable_database_is_waited_for_then_reported(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    result = run(
        tmp_path,
        "serve",
        database_url=f"postgresql://nobody@127.0.0.1:{port}/none",
        db_connect_attempts="3",
        db_connect_wait="0.5",
    )
    assert result.returncode == 2
    assert time.monotonic() - started >= 1.0  # two waits between three attempts
    assert "unreachable after 3 attempts" in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_verbs_and_upload_against_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = {"auth": "token", "policy": "strict"}
    assert run(data, "admin", "project", "add", "p1", **settings).returncode == 0
    assert (
        run(data, "admin", "instrument", "add", "i1", "--project", "p1", **settings).returncode == 0
    )
    assert run(data, "admin", "user", "add", "alice", "--project", "p1", **settings).returncode == 0
    orphan = run(data, "admin", "user", "add", "bob", "--project", "nope", **settings)
    assert orphan.returncode == 2
    assert "not registered" in orphan.stderr
    made = run(data, "admin", "token", "create", "--user", "alice", **settings)
    assert made.returncode == 0, made.stderr
    import json

    token = json.loads(made.stdout)["token"]
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "a.txt").write_text("alpha\n")
    (payload / "b.bin").write_bytes(bytes(range(256)) * 100)
    with running_server(data, **settings) as url:
        uploaded = run(
            data,
            "upload",
            str(payload),
            "--project",
            "p1",
            "--instrument",
            "i1",
            "--kv",
            "run=7",
            "--url",
            url,
            "--token",
            token,
        )
        assert uploaded.returncode == 0, uploaded.stderr
        transaction = json.loads(uploaded.stdout)
        assert transaction["submitter"] == "alice"
        assert {f["name"] for f in transaction["files"]} == {"a.txt", "b.bin"}
        refused = run(
            data, "upload", str(payload), "--project", "p2", "--url", url, "--token", token
        )
        assert refused.returncode == 1
        assert "Policy Validation" in refused.stderr
        listed = run(data, "job", "list", "--url", url, "--token", token)
        assert [job["state"] for job in json.loads(listed.stdout)] == ["failed", "succeeded"]
        denied = run(data, "job", "retry", "2", "--url", url, "--token", token)
        assert denied.returncode == 1
        assert "admin" in denied.stderr
        assert httpx.get(f"{url}/metrics").text.count("conveyor_transactions_total") >= 1


@pytest.mark.parametrize("verb", [["job", "show", "1"], ["job", "list"]])
def test_client_verbs_report_an_unreachable_server(tmp_path: Path, verb: list[str]) -> None:
    result = run(tmp_path, *verb, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_unreachable_broker_is_waited_for_then_reported(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        db_connect_attempts="2",
        db_connect_wait="0.2",
    )
    assert result.returncode == 2
    assert "broker amqp://guest:***@127.0.0.1" in result.stderr
    assert "unreachable after 2 attempts" in result.stderr


def test_json_logs_and_tracing_export_spans(tmp_path: Path) -> None:
    import http.server
    import json
    import threading

    received: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            received.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    log_path = tmp_path / "data"

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    try:
        with running_server(log_path, log_format="json", tracing="true") as url:
            assert httpx.get(f"{url}/api/v1/jobs").status_code == 200
            deadline = time.monotonic() + 20
            while "/v1/traces" not in received and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
        os.environ.pop("OTEL_BSP_SCHEDULE_DELAY")
        collector.shutdown()
    assert "/v1/traces" in received
    lines = [
        line
        for log in log_path.glob("serve-*.log")
        for line in log.read_text().splitlines()
        if line.strip()
    ]
    records = [json.loads(line) for line in lines]
    assert any(record["logger"] == "conveyor.cli.server" for record in records)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)


def test_events_verbs_subscribe_list_and_replay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_receiver() as receiver, running_server(data) as url:
        made = run(
            data,
            "events",
            "subscribe",
            "hook",
            f"{receiver.url}/in",
            "--type",
            "org.cli",
            "--url",
            url,
        )
        assert made.returncode == 0, made.stderr
        subscription = json.loads(made.stdout)
        assert subscription["secret"].startswith("whsec_")
        assert "not shown again" in made.stderr
        sent = httpx.post(
            f"{url}/pacifica/notifications/receive",
            json={"type": "org.cli", "source": "/cli", "id": "cli-1"},
        )
        assert sent.text == "cli-1"
        receiver.wait_for(1)
        listed = run(data, "events", "list", "--type", "org.cli", "--url", url)
        assert [event["id"] for event in json.loads(listed.stdout)["events"]] == ["cli-1"]
        shown = run(
            data, "events", "deliveries", "--subscription", subscription["id"], "--url", url
        )
        [delivery] = json.loads(shown.stdout)["deliveries"]
        assert delivery["state"] in ("delivering", "delivered")
        again = run(data, "events", "replay", "cli-1", "--url", url)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["deliveries"] == [delivery["id"]]
        receiver.wait_for(2)
        assert {r.headers["webhook-id"] for r in receiver.requests} == {"cli-1"}
        both = run(data, "events", "replay", "cli-1", "--delivery", "1", "--url", url)
        assert both.returncode == 2
        assert "not both" in both.stderr
        gone = run(data, "events", "unsubscribe", subscription["id"], "--url", url)
        assert gone.returncode == 0, gone.stderr
        listed = run(data, "events", "subscriptions", "--url", url)
        assert json.loads(listed.stdout) == {"subscriptions": []}


def test_consumer_check_builds_a_package_or_names_what_is_wrong(tmp_path: Path) -> None:
    good = make_zip(
        tmp_path / "consumer.zip",
        {
            "__main__.py": b"print('hi')\n",
            "requirements.txt": b"promises\n",
            "init.sh": b"#!/usr/bin/env sh\nexit 0\n",
            "jsonpath2.txt": b'$[?(@["eventType"] = "org.pacifica.metadata.ingest")]\n',
        },
    )
    kept = tmp_path / "kept"
    checked = run(tmp_path, "consumer", "check", str(good), "--into", str(kept), timeout=300)
    assert checked.returncode == 0, checked.stderr
    summary = json.loads(checked.stdout)
    assert (summary["init_sh"], summary["requirements"], summary["files"]) == (True, True, 4)
    probe = [summary["python"], "-c", "from promise import Promise"]
    assert subprocess.run(probe, check=False).returncode == 0
    bad_filter = make_zip(
        tmp_path / "bad-filter.zip", {"__main__.py": b"", "jsonpath2.txt": b"$[?(@.a =="}
    )
    refused = run(tmp_path, "consumer", "check", str(bad_filter))
    assert refused.returncode == 1
    assert "jsonpath2.txt: not a jsonpath2 query" in refused.stderr
    escaping = make_zip(tmp_path / "escaping.zip", {"__main__.py": b"", "../../outside.py": b""})
    refused = run(tmp_path, "consumer", "check", str(escaping))
    assert refused.returncode == 1
    assert "'..'" in refused.stderr
    assert not (tmp_path.parent / "outside.py").exists()


def _mirror_bank(tmp_path: Path, name: str, root: Path) -> Path:
    """The bank file of mirror ``name`` over ``root``, two quick attempts a file."""
    bank = tmp_path / f"{name}.properties"
    bank.write_text(ALU_BANK.format(name=name, root=root) + QUICK_RETRIES)
    return bank


def _added(data: Path, bank: Path, url: str) -> dict[str, Any]:
    """``conveyor mirror add`` of ``bank``: the mirror it printed."""
    added = run(data, "mirror", "add", str(bank), "--url", url)
    assert added.returncode == 0, added.stderr
    return dict(json.loads(added.stdout))


def _run_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The run a ``conveyor mirror run`` printed on stdout."""
    try:
        return dict(json.loads(result.stdout))
    except json.JSONDecodeError:
        pytest.fail(f"not JSON: {result.stdout!r}; stderr {result.stderr!r}")


def test_mirror_add_and_run_publish_a_release_then_are_up_to_date(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_alu_tree(tmp_path / "remote")
    bank = _mirror_bank(tmp_path, "alu", tmp_path / "remote")
    with running_server(data) as url:
        mirror = _added(data, bank, url)
        assert mirror["name"] == "alu"
        assert mirror["origin"] == "biomaj"

        first = run(data, "mirror", "run", "alu", "--url", url)
        assert first.returncode == 0, (first.stdout, first.stderr)
        finished = _run_json(first)
        assert finished["state"] == "published", finished
        assert finished["files_done"] == len(ALU_FILES)
        assert finished["transaction_id"] is not None
        answer = httpx.get(f"{url}/api/v1/transactions/{finished['transaction_id']}", timeout=10)
        assert answer.status_code == 200, answer.text
        files = {
            f"{f['subdir']}/{f['name']}" if f["subdir"] else f["name"]: f
            for f in answer.json()["files"]
        }
        # The capture group saves sub/notes.txt as notes.txt.
        assert sorted(files) == ["alu.a.gz", "alu.n.gz", "notes.txt"]
        for relative, expected in ALU_FILES.items():
            got = httpx.get(
                f"{url}/api/v1/files/{files[Path(relative).name]['id']}/content", timeout=10
            )
            assert got.status_code == 200, got.text
            assert got.content == expected, relative

        second = run(data, "mirror", "run", "alu", "--url", url)
        assert second.returncode == 0, (second.stdout, second.stderr)
        again = _run_json(second)
        assert again["state"] == "up_to_date", again
        assert again["id"] != finished["id"]
        assert again["release"] == finished["release"]


def test_mirror_run_that_finds_nothing_exits_1_with_the_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = tmp_path / "no-such-folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "unrelated.txt").write_text("not selected\n")
    with running_server(data) as url:
        for name, root, reason in (
            ("gone", missing, f"folder {missing} does not exist"),
            ("empty", empty, "no file found matching"),
        ):
            _added(data, _mirror_bank(tmp_path, name, root), url)
            failed = run(data, "mirror", "run", name, "--url", url)
            assert failed.returncode == 1, (failed.stdout, failed.stderr)
            finished = _run_json(failed)
            assert finished["state"] == "failed", finished
            assert finished["transaction_id"] is None
            assert reason in finished["error"], finished
            assert reason in failed.stdout
            assert "Traceback" not in failed.stderr


def test_mirror_run_no_wait_prints_the_started_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_alu_tree(tmp_path / "remote")
    bank = _mirror_bank(tmp_path, "alu", tmp_path / "remote")
    with running_server(data) as url:
        _added(data, bank, url)
        started = run(data, "mirror", "run", "alu", "--no-wait", "--url", url)
        assert started.returncode == 0, (started.stdout, started.stderr)
        queued = _run_json(started)
        assert queued["state"] in (
            "queued",
            "listing",
            "downloading",
            "publishing",
            "published",
        ), queued
        # The run goes on without the command: the server finishes and publishes it.
        state = httpx.get(
            f"{url}/api/v1/mirror-runs/{queued['id']}", params={"wait": 60}, timeout=90
        ).json()
        assert state["state"] == "published", state
        assert state["files_done"] == len(ALU_FILES)
