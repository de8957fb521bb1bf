"""Authentication modes and who sees what."""

from __future__ import annotations

import base64
from collections.abc import Callable

from fastapi.testclient import TestClient

from conveyor.auth.tokens import create_token
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import good_tar


def issue(runtime: Runtime, user: str, admin: bool = False) -> str:
    with runtime.db.session() as session:
        return create_token(session, user, admin).secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_mode(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    admin = issue(runtime, "root", admin=True)
    alice = issue(runtime, "alice")
    with TestClient(create_app(runtime=runtime)) as client:
        missing = client.get("/api/v1/jobs")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert "API token" in missing.json()["detail"]
        assert client.get("/api/v1/jobs", headers=bearer("cvy_wrong")).status_code == 401

        job = client.post("/api/v1/ingest", content=good_tar(), headers=bearer(alice)).json()
        assert job["owner"] == "alice"
        done = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(alice)).json()
        txn = client.get(
            f"/api/v1/transactions/{done['transaction_id']}", headers=bearer(alice)
        ).json()
        # with auth on, the submitter is the authenticated user, not metadata's "10"
        assert txn["submitter"] == "alice"

        # Basic auth carrying the token as password works for clients that only know that
        basic = base64.b64encode(f"anyone:{alice}".encode()).decode()
        assert (
            client.get(
                f"/api/v1/jobs/{job['id']}", headers={"Authorization": f"Basic {basic}"}
            ).status_code
            == 200
        )

        bob = issue(runtime, "bob")
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(bob)).status_code == 404
        assert (
            client.get(f"/api/v1/transactions/{txn['id']}", headers=bearer(bob)).status_code == 404
        )
        assert client.get("/api/v1/jobs", headers=bearer(bob)).json()["jobs"] == []
        assert len(client.get("/api/v1/jobs", headers=bearer(admin)).json()["jobs"]) == 1

        # only admins issue tokens; revoked tokens stop working at once
        assert (
            client.post("/api/v1/tokens", json={"user": "eve"}, headers=bearer(bob)).status_code
            == 403
        )
        made = client.post("/api/v1/tokens", json={"user": "eve"}, headers=bearer(admin)).json()
        assert client.get("/api/v1/jobs", headers=bearer(made["token"])).status_code == 200
        assert (
            client.delete(f"/api/v1/tokens/{made['id']}", headers=bearer(admin)).status_code == 204
        )
        assert client.get("/api/v1/jobs", headers=bearer(made["token"])).status_code == 401
        listed = client.get("/api/v1/tokens", headers=bearer(admin)).json()["tokens"]
        assert all("token" not in row for row in listed)


def test_proxy_header_mode(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="proxy-header", trusted_proxies=["10.0.0.0/8"], admin_users=["ops"])
    app = create_app(runtime=runtime)
    with TestClient(app, client=("10.1.2.3", 4000)) as via_proxy:
        assert via_proxy.get("/api/v1/jobs").status_code == 401
        headers = {"X-Http-Authed-User": "carol"}
        job = via_proxy.post("/api/v1/ingest", content=good_tar(), headers=headers).json()
        assert job["owner"] == "carol"
        assert (
            via_proxy.post("/api/v1/tokens", json={"user": "x"}, headers=headers).status_code == 403
        )
        ops = {"X-Http-Authed-User": "ops"}
        assert via_proxy.post("/api/v1/tokens", json={"user": "x"}, headers=ops).status_code == 201
    with TestClient(app, client=("192.168.9.9", 4000)) as direct:
        refused = direct.get("/api/v1/jobs", headers={"X-Http-Authed-User": "ops"})
        assert refused.status_code == 401
        assert "trusted proxy" in refused.json()["detail"]


def test_errors_are_problem_details_without_tracebacks(client: TestClient) -> None:
    bad = client.get("/api/v1/jobs/not-a-number")
    assert bad.status_code == 422
    body = bad.json()
    assert body["status"] == 422
    assert "job_id" in body["detail"]
    assert "Traceback" not in bad.text
    assert client.get("/api/v1/files/999/content").json()["detail"] == "file 999 does not exist"
    assert client.post("/api/v1/ingest/move", content=b"[1]").status_code == 400
    pacifica = client.get("/pacifica/ingest/get_state/abc")
    assert pacifica.status_code == 400
    assert set(pacifica.json()) == {"status", "message", "traceback", "version"}
    assert pacifica.json()["traceback"] == ""


def test_openapi_documents_every_route(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    for path in (
        "/api/v1/ingest",
        "/api/v1/ingest/move",
        "/api/v1/jobs/{job_id}",
        "/api/v1/transactions/{transaction_id}",
        "/api/v1/files/{file_id}/content",
        "/pacifica/ingest/upload",
        "/pacifica/ingest/get_state",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert "application/x-tar" in spec["paths"]["/api/v1/ingest"]["post"]["requestBody"]["content"]
