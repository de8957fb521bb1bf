"""Carts on the embedded default: stream mode, tar and zip, Range, one cart per request."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.auth.tokens import create_token
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import GOOD_MEMBERS, JAPANESE_NAME, good_tar
from tests.support.services import require_command


def ingest(client: TestClient, headers: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    job = client.post("/api/v1/ingest", content=good_tar(), headers=headers).json()
    assert job["state"] == "succeeded", job
    return client.get(f"/api/v1/transactions/{job['transaction_id']}", headers=headers).json()  # type: ignore[no-any-return]


def bundle(client: TestClient, cart: dict, headers: dict[str, str] | None = None) -> bytes:  # type: ignore[type-arg]
    response = client.get(cart["bundle"], headers=headers)
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content) == cart["bytes_total"]
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{cart["etag"]}"'
    return response.content


EXPECTED = {name.removeprefix("data/"): data for name, data in GOOD_MEMBERS.items()}


def test_tar_cart_of_a_transaction(client: TestClient, tmp_path: Path) -> None:
    transaction = ingest(client)
    made = client.post("/api/v1/carts", json={"transactions": [transaction["id"]]})
    assert made.status_code == 201, made.text
    cart = made.json()
    assert (cart["status"], cart["format"], cart["file_count"]) == ("ready", "tar", 3)
    data = bundle(client, cart)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    for path, content in EXPECTED.items():
        assert files[path] == content
    tar_command = require_command("tar")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar_command, "-xf", "-", "-C", str(out)], input=data, check=True)
    assert (out / "a" / "c" / JAPANESE_NAME).read_bytes() == EXPECTED[f"a/c/{JAPANESE_NAME}"]


def test_zip_cart_with_chosen_paths(client: TestClient, tmp_path: Path) -> None:
    transaction = ingest(client)
    files = [{"id": f["id"], "path": f"renamed/{f['name']}"} for f in transaction["files"]]
    cart = client.post("/api/v1/carts", json={"files": files, "format": "zip"}).json()
    data = bundle(client, cart)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert {"renamed/foo.txt", "renamed/bar.txt", f"renamed/{JAPANESE_NAME}"} <= names
        assert archive.read("renamed/bar.txt") == EXPECTED["a/b/bar.txt"]
    unzip = require_command("unzip")
    path = tmp_path / "cart.zip"
    path.write_bytes(data)
    result = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_ranges_resume_to_identical_bytes(client: TestClient, fmt: str) -> None:
    transaction = ingest(client)
    cart = client.post(
        "/api/v1/carts", json={"transactions": [transaction["id"]], "format": fmt}
    ).json()
    whole = bundle(client, cart)
    size = len(whole)
    for start in (0, 1, 511, 512, 513, size // 2, size - 1):
        part = client.get(cart["bundle"], headers={"Range": f"bytes={start}-"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {start}-{size - 1}/{size}"
        assert whole[:start] + part.content == whole
    tail = client.get(cart["bundle"], headers={"Range": "bytes=-100"})
    assert tail.content == whole[-100:]
    stale = client.get(cart["bundle"], headers={"Range": "bytes=10-", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, whole)
    outside = client.get(cart["bundle"], headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416


def test_identical_requests_share_one_cart(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    with runtime.db.session() as session:
        admin = create_token(session, "root", admin=True).secret
        alice = create_token(session, "alice").secret
        bob = create_token(session, "bob").secret
    as_admin = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(runtime=runtime)) as client:
        transaction = ingest(client, as_admin)
        request = {"transactions": [transaction["id"]]}
        first = client.post("/api/v1/carts", json=request, headers=as_admin)
        assert first.status_code == 201
        files = [{"id": f["id"]} for f in reversed(transaction["files"])]
        again = client.post("/api/v1/carts", json={"files": files}, headers=as_admin)
        assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
        # another user cannot bundle files they may not read
        denied = client.post(
            "/api/v1/carts", json=request, headers={"Authorization": f"Bearer {alice}"}
        )
        assert denied.status_code == 404
        assert (
            client.get(
                f"/api/v1/carts/{first.json()['id']}", headers={"Authorization": f"Bearer {bob}"}
            ).status_code
            == 404
        )
        keyed = {**request, "format": "zip", "idempotency_key": "k1"}
        made = client.post("/api/v1/carts", json=keyed, headers=as_admin)
        replay = client.post("/api/v1/carts", json=keyed, headers=as_admin)
        assert (made.status_code, replay.status_code) == (201, 200)
        assert made.json()["id"] == replay.json()["id"]
        gone = client.delete(f"/api/v1/carts/{made.json()['id']}", headers=as_admin)
        assert gone.status_code == 204
        assert client.get(f"/api/v1/carts/{made.json()['id']}", headers=as_admin).status_code == 404


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../escape.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a/../../b", "'..'"),
        ("", "empty"),
        ("x\\y", "backslash"),
        ("conveyor-manifest.json", "reserved"),
    ],
)
def test_paths_that_could_escape_are_refused(client: TestClient, path: str, words: str) -> None:
    transaction = ingest(client)
    file_id = transaction["files"][0]["id"]
    answer = client.post("/api/v1/carts", json={"files": [{"id": file_id, "path": path}]})
    assert answer.status_code == 400
    assert words in answer.json()["detail"]


def test_duplicate_and_clashing_paths_are_refused(client: TestClient) -> None:
    transaction = ingest(client)
    one, two = transaction["files"][0]["id"], transaction["files"][1]["id"]
    twice = client.post(
        "/api/v1/carts", json={"files": [{"id": one, "path": "x"}, {"id": two, "path": "./x"}]}
    )
    assert twice.status_code == 400
    assert "twice" in twice.json()["detail"]
    clash = client.post(
        "/api/v1/carts", json={"files": [{"id": one, "path": "x"}, {"id": two, "path": "x/y"}]}
    )
    assert clash.status_code == 400
    assert "also a folder" in clash.json()["detail"]
    assert client.post("/api/v1/carts", json={"files": []}).status_code == 400
    assert client.post("/api/v1/carts", json={"files": [{"id": 999}]}).status_code == 404
    assert (
        client.post("/api/v1/carts", json={"format": "rar", "files": [{"id": one}]}).status_code
        == 422
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_concurrent_identical_requests_make_one_cart(
    make_runtime: Callable[..., Runtime], backend: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    from tests.support.databases import scratch_database

    with ExitStack() as stack:
        overrides = {}
        if backend != "sqlite":
            overrides["database_url"] = stack.enter_context(scratch_database(backend))
        runtime = make_runtime(**overrides)
        with TestClient(create_app(runtime=runtime)) as client:
            transaction = ingest(client)
            request = {"transactions": [transaction["id"]], "format": "zip"}
            with ThreadPoolExecutor(10) as pool:
                answers = list(
                    pool.map(lambda _: client.post("/api/v1/carts", json=request), range(30))
                )
            assert {answer.status_code for answer in answers} <= {200, 201}, [
                a.text for a in answers
            ]
            assert [answer.status_code for answer in answers].count(201) == 1
            assert len({answer.json()["id"] for answer in answers}) == 1
            cart = answers[0].json()
            assert len(client.get(cart["bundle"]).content) == cart["bytes_total"]
        runtime.close()
