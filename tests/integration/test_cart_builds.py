"""Built carts: staged, written once to the bundle store, served with Range, shared by all."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conveyor.auth.tokens import create_token
from conveyor.carts.build import expire_carts
from conveyor.carts.events import CART_READY
from conveyor.db.models import Cart, Job, OutboxEvent
from conveyor.db.types import utcnow
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import GOOD_MEMBERS, good_tar
from tests.support.databases import scratch_database
from tests.support.executors import HeldExecutor
from tests.support.filesystems import small_filesystem
from tests.support.services import require_command

EXPECTED = {name.removeprefix("data/"): data for name, data in GOOD_MEMBERS.items()}


def ingest(client: TestClient, headers: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    job = client.post("/api/v1/ingest", content=good_tar(), headers=headers).json()
    assert job["state"] == "succeeded", job
    return client.get(f"/api/v1/transactions/{job['transaction_id']}", headers=headers).json()  # type: ignore[no-any-return]


def download(client: TestClient, cart: dict, **headers: str) -> bytes:  # type: ignore[type-arg]
    answer = client.get(cart["bundle"], headers=headers)
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["content-length"]) == len(answer.content) == cart["bytes_total"]
    assert answer.headers["etag"] == f'"{cart["etag"]}"'
    return answer.content


def test_built_tar_is_the_stream_tar_and_resumes(client: TestClient, tmp_path: Path) -> None:
    transaction = ingest(client)
    request = {"transactions": [transaction["id"]]}
    streamed = client.post("/api/v1/carts", json=request).json()
    built = client.post("/api/v1/carts", json={**request, "mode": "build"}).json()
    assert built["id"] != streamed["id"]
    assert (built["mode"], built["status"], built["bytes_done"]) == (
        "build",
        "ready",
        built["bytes_total"],
    )
    assert built["expires_at"] is not None and built["job_id"] is not None
    whole = download(client, built)
    # One layout: the built tar is byte for byte what the stream cart sends.
    assert whole == download(client, streamed)
    assert built["etag"] == streamed["etag"]
    size = len(whole)
    for start in (0, 1, 512, 513, size // 3, size - 1):
        part = client.get(built["bundle"], headers={"Range": f"bytes={start}-"})
        assert part.status_code == 206
        assert whole[:start] + part.content == whole
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([require_command("tar"), "-xf", "-", "-C", str(out)], input=whole, check=True)
    for path, data in EXPECTED.items():
        assert (out / path).read_bytes() == data
    assert (out / "conveyor-manifest.json").is_file()


def test_deflated_zip_is_built_and_valid(client: TestClient, tmp_path: Path) -> None:
    transaction = ingest(client)
    request = {"transactions": [transaction["id"]], "format": "zip", "compression": "deflate"}
    cart = client.post("/api/v1/carts", json=request).json()
    assert (cart["mode"], cart["compression"], cart["status"]) == ("build", "deflate", "ready")
    data = download(client, cart)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert infos[0].filename == "conveyor-manifest.json"
        assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}
        for path, content in EXPECTED.items():
            assert archive.read(path) == content
    path = tmp_path / "cart.zip"
    path.write_bytes(data)
    tested = subprocess.run(
        [require_command("unzip"), "-t", str(path)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    refused = client.post("/api/v1/carts", json={**request, "format": "tar"})
    assert refused.status_code == 400
    assert "zip" in refused.json()["detail"]
    streamed = client.post("/api/v1/carts", json={**request, "mode": "stream"})
    assert streamed.status_code == 400
    assert "build" in streamed.json()["detail"]


def test_states_while_building(runtime: Runtime) -> None:
    held = HeldExecutor(runtime)
    with TestClient(create_app(runtime=runtime)) as client:
        transaction = ingest(client)
        runtime.executor = held
        made = client.post(
            "/api/v1/carts", json={"transactions": [transaction["id"]], "mode": "build"}
        )
        assert made.status_code == 201
        cart = made.json()
        assert (cart["status"], cart["bytes_done"]) == ("waiting", 0)
        early = client.get(cart["bundle"])
        assert early.status_code == 409
        assert early.headers["retry-after"]
        assert "not ready" in early.json()["detail"]
        job = client.get(f"/api/v1/jobs/{cart['job_id']}").json()
        assert (job["kind"], job["state"]) == ("cart build", "queued")
        assert held.run_held() == [cart["job_id"]]
        ready = client.get(f"/api/v1/carts/{cart['id']}").json()
        assert ready["status"] == "ready"
        assert len(download(client, ready)) == ready["bytes_total"]
        job = client.get(f"/api/v1/jobs/{cart['job_id']}").json()
        assert (job["state"], job["task"], job["task_percent"]) == ("succeeded", "ready", 100.0)


def test_missing_blob_fails_the_cart_then_an_identical_request_rebuilds(
    client: TestClient, runtime: Runtime
) -> None:
    transaction = ingest(client)
    victim = transaction["files"][0]
    runtime.archive.delete(victim["sha256"])
    request = {"transactions": [transaction["id"]], "mode": "build"}
    failed = client.post("/api/v1/carts", json=request).json()
    assert failed["status"] == "error"
    sharing = [f["id"] for f in transaction["files"] if f["sha256"] == victim["sha256"]]
    assert f"{len(sharing)} of 3 files failed" in failed["error"]
    assert [problem["file_id"] for problem in failed["item_errors"]] == sharing
    assert all("does not hold" in problem["error"] for problem in failed["item_errors"])
    job = client.get(f"/api/v1/jobs/{failed['job_id']}").json()
    assert (job["state"], job["task"]) == ("failed", "stage files")
    assert job["item_errors"] == failed["item_errors"]
    assert client.get(failed["bundle"]).status_code == 409
    ingest(client)  # the same bytes come back into the archive
    again = client.post("/api/v1/carts", json=request)
    assert again.status_code == 200
    rebuilt = again.json()
    assert (rebuilt["id"], rebuilt["status"], rebuilt["error"]) == (failed["id"], "ready", "")
    assert rebuilt["job_id"] != failed["job_id"]
    assert len(download(client, rebuilt)) == rebuilt["bytes_total"]


def test_delete_and_expiry_remove_the_built_bundle(client: TestClient, runtime: Runtime) -> None:
    transaction = ingest(client)
    request = {"transactions": [transaction["id"]], "mode": "build"}
    cart = client.post("/api/v1/carts", json=request).json()
    with runtime.db.session() as session:
        key = session.get(Cart, cart["id"]).bundle_key  # type: ignore[union-attr]
    assert key is not None and runtime.bundles.size(key) == cart["bytes_total"]
    assert client.delete(f"/api/v1/carts/{cart['id']}").status_code == 204
    assert runtime.bundles.size(key) is None
    cart = client.post("/api/v1/carts", json=request).json()
    assert expire_carts(runtime) == 0
    with runtime.db.session() as session:
        row = session.get(Cart, cart["id"])
        assert row is not None
        row.expires_at = utcnow()
    assert expire_carts(runtime) == 1
    assert client.get(f"/api/v1/carts/{cart['id']}").status_code == 404
    assert runtime.bundles.size(key) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_fifty_identical_requests_build_once_for_every_requester(
    make_runtime: Callable[..., Runtime], backend: str
) -> None:
    with ExitStack() as stack:
        overrides = {"auth": "token"}
        if backend != "sqlite":
            overrides["database_url"] = stack.enter_context(scratch_database(backend))
        runtime = make_runtime(**overrides)
        with runtime.db.session() as session:
            tokens = [create_token(session, f"user{n}", admin=True).secret for n in range(50)]
        held = HeldExecutor(runtime)
        with TestClient(create_app(runtime=runtime)) as client:
            transaction = ingest(client, {"Authorization": f"Bearer {tokens[0]}"})
            runtime.executor = held
            request = {"transactions": [transaction["id"]], "mode": "build", "format": "zip"}

            def ask(token: str) -> tuple[int, int]:
                answer = client.post(
                    "/api/v1/carts", json=request, headers={"Authorization": f"Bearer {token}"}
                )
                return answer.status_code, answer.json().get("id", -1)

            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(ask, tokens))
            assert sorted(code for code, _ in answers) == [200] * 49 + [201], answers
            assert len({cart_id for _, cart_id in answers}) == 1
            held.run_held()
        with runtime.db.session() as session:
            builds = session.scalar(
                select(func.count()).select_from(Job).where(Job.kind == "cart build")
            )
            [event] = session.scalars(select(OutboxEvent).where(OutboxEvent.type == CART_READY))
            assert builds == 1
            assert sorted(event.data["requesters"]) == sorted(f"user{n}" for n in range(50))
            assert event.data["status"] == "ready"
        runtime.close()


def test_a_full_bundle_store_fails_that_cart_only(
    make_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "small", "1m") as small:
        runtime = make_runtime(cart_store_url=f"file://{small}")
        with TestClient(create_app(runtime=runtime)) as client:
            files = [{"id": 101}, {"id": 102}]
            for file, size in zip(files, (700 * 1024, 600 * 1024), strict=True):
                answer = client.put(f"/pacifica/archive/{file['id']}", content=os.urandom(size))
                assert answer.status_code == 201
            big = client.post("/api/v1/carts", json={"files": files, "mode": "build"}).json()
            assert big["status"] == "error"
            assert big["error"].startswith("No Space Available")
            job = client.get(f"/api/v1/jobs/{big['job_id']}").json()
            assert (job["state"], job["task"]) == ("failed", "write bundle")
            assert list(small.rglob("*.tar")) == []
            assert [p for p in small.rglob("*") if p.is_file()] == []
            one = client.post("/api/v1/carts", json={"files": files[1:], "mode": "build"}).json()
            assert one["status"] == "ready"
            assert len(download(client, one)) == one["bytes_total"]


def test_metrics_count_cart_outcomes_and_built_bytes(client: TestClient) -> None:
    def sample(text: str, name: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(name)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    ready = 'conveyor_carts_finished_total{mode="build",status="ready"}'
    before = client.get("/metrics").text
    transaction = ingest(client)
    cart = client.post(
        "/api/v1/carts", json={"transactions": [transaction["id"]], "mode": "build"}
    ).json()
    after = client.get("/metrics").text
    assert sample(after, ready) == sample(before, ready) + 1
    built = "conveyor_cart_bundle_bytes_total"
    assert sample(after, built) == sample(before, built) + cart["bytes_total"]
