"""A consumer's virtualenv: init.sh, requirements (the stand-ins included), and failures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from conveyor.client.api import ConveyorClient
from conveyor.client.bundler import BundleStream, collect, metadata_fields
from conveyor.consumers.environments import ConsumerSetupError, build_environment, shim_wheelhouse
from conveyor.consumers.provenance import CONSUMER, DERIVED_FROM, LINEAGE
from tests.support.server import running_server

# The requirements.txt of the consumer document's example, as published.
SEED_REQUIREMENTS = "jsonpath2\npacifica-notifications-consumer\npromises\n"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in wheels, built once for the module."""
    return shim_wheelhouse(tmp_path_factory.mktemp("wheels"))


def consumer_code(root: Path, requirements: str, init: str = "exit 0\n") -> Path:
    root.mkdir(parents=True)
    (root / "__main__.py").write_text("print('hello')\n")
    (root / "requirements.txt").write_text(requirements)
    (root / "init.sh").write_text(f"#!/usr/bin/env sh\n{init}")
    return root


def test_the_published_example_requirements_install_as_written(
    tmp_path: Path, wheelhouse: Path
) -> None:
    built = sorted(path.name.split("-")[0] for path in wheelhouse.glob("*.whl"))
    assert built == ["pacifica_notifications_consumer", "promises"]
    code = consumer_code(
        tmp_path / "code", SEED_REQUIREMENTS, init='touch "$VIRTUAL_ENV/init-ran"\n'
    )
    environment = build_environment(code, tmp_path / "venv", wheelhouse)
    assert (environment.path / "init-ran").exists(), "init.sh runs inside the new venv"
    probe = (
        "from jsonpath2 import Path\n"
        "from pacifica_notifications_consumer import download, upload\n"
        "from promise import Promise\n"
        "print(Path.parse_str('$[*]').match([1]).__class__.__name__)\n"
    )
    done = subprocess.run(
        [str(environment.python), "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "venv.part").exists()


def test_a_failing_init_script_says_so_with_its_output(tmp_path: Path, wheelhouse: Path) -> None:
    code = consumer_code(tmp_path / "code", "", init="echo 'no compiler here' >&2\nexit 3\n")
    with pytest.raises(ConsumerSetupError, match="no compiler here") as raised:
        build_environment(code, tmp_path / "venv", wheelhouse)
    assert raised.value.step == "run init.sh"
    assert "exit status 3" in str(raised.value)
    assert not (tmp_path / "venv").exists()


def test_an_unknown_requirement_fails_the_install_step(tmp_path: Path, wheelhouse: Path) -> None:
    code = consumer_code(tmp_path / "code", "conveyor-no-such-distribution-xyz==1.0\n")
    with pytest.raises(ConsumerSetupError) as raised:
        build_environment(code, tmp_path / "venv", wheelhouse)
    assert raised.value.step == "install requirements.txt"
    assert "conveyor-no-such-distribution-xyz" in str(raised.value)


def test_the_stand_in_library_downloads_and_uploads_through_a_server(
    tmp_path: Path, wheelhouse: Path
) -> None:
    code = consumer_code(tmp_path / "code", "pacifica-notifications-consumer\n")
    environment = build_environment(code, tmp_path / "venv", wheelhouse)
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "downloads").mkdir(parents=True)
    (src / "notification.json").write_text(json.dumps({"eventID": "e-1", "data": []}))
    (dst / "uploads" / "a" / "b").mkdir(parents=True)
    (dst / "uploads" / "a" / "b" / "upper.txt").write_text("HELLO\n")
    (dst / "uploads" / "top.csv").write_text("x,y\n")
    script = (
        "import json, sys\n"
        "from pacifica_notifications_consumer import download, upload\n"
        "event = download(sys.argv[1]).get()\n"
        "attributes = {'Transactions.submitter': 'alice', 'Transactions.proposal': 'p1'}\n"
        "job = upload(sys.argv[2], attributes, {'Transactions._id': event['eventID']}).get()\n"
        "print(json.dumps(job))\n"
    )

    def run(url: str, provenance: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(environment.python), "-c", script, str(src), str(dst)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "CONVEYOR_URL": url, "CONVEYOR_PROVENANCE": json.dumps(provenance)},
        )

    with running_server(tmp_path / "server") as url:
        stream = BundleStream(
            collect([src / "notification.json"]), metadata_fields("p1", None, [], None)
        )
        with ConveyorClient(url) as client:
            made = client.wait(int(client.upload(stream.chunks(), stream.length())["id"]))
        # what a run of `consumer serve` sends: the server computes the lineage itself
        sent = {CONSUMER: "upper", DERIVED_FROM: str(made["transaction_id"]), LINEAGE: "[]"}
        done = run(url, sent)
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["state"] == "succeeded"
        transaction = httpx.get(f"{url}/api/v1/transactions/{job['transaction_id']}").json()
        # an input that is not there is refused, and the error says why
        refused = run(url, {CONSUMER: "upper", DERIVED_FROM: "999999"})
    assert refused.returncode == 1
    assert (
        "POST /api/v1/ingest: 400 conveyor.derived_from '999999' is not a transaction you may"
        in refused.stderr
    )
    assert transaction["project"] == "p1"
    paths = sorted(f"{f['subdir']}/{f['name']}".lstrip("/") for f in transaction["files"])
    assert paths == ["a/b/upper.txt", "top.csv"]
    key_values = {kv["key"]: kv["value"] for kv in transaction["key_values"]}
    assert key_values == {
        "Transactions._id": "e-1",
        CONSUMER: "upper",
        DERIVED_FROM: str(made["transaction_id"]),
        LINEAGE: '["upper"]',
    }
