"""Scoped tokens of consumer runs: publish and read, nothing else; never admin; they end.

A ``consumer-run`` token may only POST a bundle, follow a job and read transactions and
files; every other route answers 403 saying so. Expired and revoked ones answer 401. With
``CONVEYOR_AUTH=proxy-header`` a run calls the server directly, so its token works without
the proxy's header (and a full token still does not). Any caller but a scoped token may
issue itself one (``consumer serve`` does, per run), and revoke its own tokens.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from conveyor.auth.resolve import anonymous, authenticate
from conveyor.auth.scopes import CONSUMER_RUN, check_scope
from conveyor.auth.tokens import create_token, lookup, revoke_token
from conveyor.db.types import utcnow
from conveyor.errors import Forbidden
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import good_tar


def issue(runtime: Runtime, user: str, *, admin: bool = False, **scoped: object) -> str:
    with runtime.db.session() as session:
        return create_token(session, user, admin, **scoped).secret  # type: ignore[arg-type]


def run_token(runtime: Runtime, user: str, *, admin: bool = False, seconds: float = 3600) -> str:
    expires = utcnow() + timedelta(seconds=seconds)
    return issue(runtime, user, admin=admin, scope=CONSUMER_RUN, expires_at=expires)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ingest(client: TestClient, token: str) -> dict[str, int]:
    """Upload the published bundle as the token's user; the finished job's ids."""
    accepted = client.post("/api/v1/ingest", content=good_tar(), headers=bearer(token))
    assert accepted.status_code == 202, accepted.text
    job = client.get(f"/api/v1/jobs/{accepted.json()['id']}", headers=bearer(token)).json()
    assert job["state"] == "succeeded", job
    transaction = client.get(
        f"/api/v1/transactions/{job['transaction_id']}", headers=bearer(token)
    ).json()
    return {
        "job": job["id"],
        "transaction": transaction["id"],
        "file": transaction["files"][0]["id"],
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/ingest"),
        ("GET", "/api/v1/jobs/12"),
        ("HEAD", "/api/v1/jobs/12"),
        ("GET", "/api/v1/transactions"),
        ("GET", "/api/v1/transactions/3"),
        ("GET", "/api/v1/transactions/3/files"),
        ("GET", "/api/v1/files/4"),
        ("GET", "/api/v1/files/4/content"),
    ],
)
def test_the_consumer_run_scope_opens_publishing_and_reading(method: str, path: str) -> None:
    check_scope(CONSUMER_RUN, method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/ingest"),
        ("POST", "/api/v1/ingest/move"),
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs/12/retry"),
        ("POST", "/api/v1/jobs/12/state"),
        ("GET", "/api/v1/jobs/12/x"),
        ("DELETE", "/api/v1/transactions/3"),
        ("GET", "/api/v1/transactions/3/files/4"),
        ("GET", "/api/v1/transactions/abc"),
        ("GET", "/api/v1/files/4/content/x"),
        ("POST", "/api/v1/subscriptions"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/consumers"),
        ("POST", "/api/v1/tokens"),
        ("POST", "/pacifica/ingest/upload"),
        ("GET", "/api/v1/ingest/../jobs"),
    ],
)
def test_every_other_route_is_refused_by_the_scope(method: str, path: str) -> None:
    with pytest.raises(Forbidden, match=f"a consumer-run token may not {method} "):
        check_scope(CONSUMER_RUN, method, path)


def test_an_unknown_scope_opens_nothing() -> None:
    with pytest.raises(Forbidden, match="a mystery token may not GET /api/v1/transactions"):
        check_scope("mystery", "GET", "/api/v1/transactions")


def test_a_run_token_publishes_and_reads_but_does_nothing_else(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(auth="token")
    alice = issue(runtime, "alice")
    run = run_token(runtime, "alice")
    with TestClient(create_app(runtime=runtime)) as client:
        published = ingest(client, run)
        # what it published is its user's
        job = client.get(f"/api/v1/jobs/{published['job']}", headers=bearer(alice)).json()
        assert job["owner"] == "alice"
        transaction = client.get(
            f"/api/v1/transactions/{published['transaction']}", headers=bearer(run)
        ).json()
        assert transaction["submitter"] == "alice"
        for path in (
            "/api/v1/transactions",
            f"/api/v1/transactions/{published['transaction']}/files",
            f"/api/v1/files/{published['file']}",
        ):
            assert client.get(path, headers=bearer(run)).status_code == 200, path
        content = client.get(f"/api/v1/files/{published['file']}/content", headers=bearer(run))
        assert content.status_code == 200
        assert content.content == b"foo\n"

        refused = [
            client.get("/api/v1/jobs", headers=bearer(run)),
            client.post(
                "/api/v1/subscriptions",
                json={"name": "x", "target": "http://127.0.0.1:9/hook"},
                headers=bearer(run),
            ),
            client.get("/api/v1/subscriptions", headers=bearer(run)),
            client.get("/api/v1/events", headers=bearer(run)),
            client.get("/api/v1/consumers", headers=bearer(run)),
            client.post("/api/v1/tokens", json={"user": "eve"}, headers=bearer(run)),
            client.post(f"/api/v1/jobs/{published['job']}/retry", headers=bearer(run)),
            client.post("/api/v1/ingest/move", content=b"[]", headers=bearer(run)),
            client.post("/api/v1/carts", json={"files": [published["file"]]}, headers=bearer(run)),
        ]
        for answer in refused:
            assert answer.status_code == 403, (answer.request.url, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            detail = answer.json()["detail"]
            assert detail.startswith("a consumer-run token may not "), detail
            assert answer.request.url.path in detail
        # the Pacifica routes refuse it too, in their own error shape
        for answer in (
            client.post("/pacifica/ingest/upload", content=good_tar(), headers=bearer(run)),
            client.get(f"/pacifica/ingest/get_state/{published['job']}", headers=bearer(run)),
        ):
            assert answer.status_code == 403
            assert answer.json()["message"] == (
                f"a consumer-run token may not {answer.request.method} {answer.request.url.path}"
            )
        # the same routes answer the user's full token
        assert client.get("/api/v1/jobs", headers=bearer(alice)).status_code == 200
        assert client.get("/api/v1/subscriptions", headers=bearer(alice)).status_code == 200
        # only the one transaction, from the run's ingest: nothing refused had an effect
        listed = client.get("/api/v1/transactions", headers=bearer(alice)).json()
        assert [row["id"] for row in listed["transactions"]] == [published["transaction"]]


def test_a_run_token_in_basic_auth_is_still_scoped(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    run = run_token(runtime, "alice")
    basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{run}".encode()).decode()}
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/api/v1/transactions", headers=basic).status_code == 200
        refused = client.get("/api/v1/jobs", headers=basic)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "a consumer-run token may not GET /api/v1/jobs"


def test_a_run_token_of_an_admin_is_not_an_admins(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    alice = issue(runtime, "alice")
    root = issue(runtime, "root", admin=True)
    root_run = run_token(runtime, "root")
    # asking for an admin's scoped token does not give one either
    asked_admin = run_token(runtime, "ops", admin=True)
    with TestClient(create_app(runtime=runtime)) as client:
        theirs = ingest(client, alice)
        path = f"/api/v1/transactions/{theirs['transaction']}"
        assert client.get(path, headers=bearer(root)).status_code == 200
        for token in (root_run, asked_admin):
            assert client.get(path, headers=bearer(token)).status_code == 404
            assert client.get(
                f"/api/v1/jobs/{theirs['job']}", headers=bearer(token)
            ).status_code == (404)
            assert client.get("/api/v1/transactions", headers=bearer(token)).json() == {
                "transactions": [],
                "next_after": None,
            }
            assert (
                client.get(
                    f"/api/v1/files/{theirs['file']}/content", headers=bearer(token)
                ).status_code
                == 404
            )
            # an admin route on the scope's list of refusals, not an admin check
            tokens = client.get("/api/v1/tokens", headers=bearer(token))
            assert tokens.status_code == 403
            assert "consumer-run token" in tokens.json()["detail"]


def test_expired_and_revoked_run_tokens_are_refused(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    expired = run_token(runtime, "alice", seconds=-1)
    live = run_token(runtime, "alice")
    with runtime.db.session() as session:
        revoked = create_token(
            session,
            "alice",
            scope=CONSUMER_RUN,
            expires_at=utcnow() + timedelta(hours=1),
        )
        assert revoke_token(session, revoked.id)
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/api/v1/transactions", headers=bearer(live)).status_code == 200
        for token in (expired, revoked.secret):
            for answer in (
                client.get("/api/v1/transactions", headers=bearer(token)),
                client.post("/api/v1/ingest", content=good_tar(), headers=bearer(token)),
                client.get("/api/v1/jobs", headers=bearer(token)),
            ):
                assert answer.status_code == 401, answer.text
                assert "unknown or revoked" in answer.json()["detail"]
        # nothing was ingested with them
        assert client.get("/api/v1/transactions", headers=bearer(live)).json()["transactions"] == []


def test_a_full_token_that_expired_is_refused_too(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    ended = issue(runtime, "alice", expires_at=utcnow() - timedelta(seconds=1))
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/api/v1/jobs", headers=bearer(ended)).status_code == 401


PROXY = {"auth": "proxy-header", "trusted_proxies": ["10.0.0.0/8"], "admin_users": ["ops"]}


def test_behind_a_proxy_a_run_token_works_directly(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(**PROXY)
    run = run_token(runtime, "carol")
    full = issue(runtime, "carol")
    expired = run_token(runtime, "carol", seconds=-1)
    app = create_app(runtime=runtime)
    with TestClient(app, client=("192.168.9.9", 4000)) as direct:
        published = ingest(direct, run)
        transaction = direct.get(
            f"/api/v1/transactions/{published['transaction']}", headers=bearer(run)
        ).json()
        assert transaction["submitter"] == "carol"
        refused = direct.get("/api/v1/jobs", headers=bearer(run))
        assert refused.status_code == 403
        assert refused.json()["detail"] == "a consumer-run token may not GET /api/v1/jobs"
        # the proxy's header is no way around the scope: the token decides who and what
        as_ops = direct.get("/api/v1/jobs", headers={**bearer(run), "X-Http-Authed-User": "ops"})
        assert as_ops.status_code == 403
        # a full token is not a proxy's header: off the proxy it is refused
        unscoped = direct.get("/api/v1/transactions", headers=bearer(full))
        assert unscoped.status_code == 401
        assert "trusted proxy" in unscoped.json()["detail"]
        gone = direct.get("/api/v1/transactions", headers=bearer(expired))
        assert gone.status_code == 401
    with TestClient(app, client=("10.1.2.3", 4000)) as via_proxy:
        # through the proxy, a run token is still only a run token
        scoped = via_proxy.get(
            "/api/v1/jobs", headers={**bearer(run), "X-Http-Authed-User": "carol"}
        )
        assert scoped.status_code == 403
        # and the proxy's users are unaffected
        listed = via_proxy.get("/api/v1/jobs", headers={"X-Http-Authed-User": "carol"})
        assert listed.status_code == 200
        assert [job["id"] for job in listed.json()["jobs"]] == [published["job"]]


SELF_SERVICE = "/api/v1/tokens/consumer-run"


def test_any_user_issues_itself_a_run_token(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token", run_token_max_seconds=7200)
    alice = issue(runtime, "alice")
    root = issue(runtime, "root", admin=True)
    with TestClient(create_app(runtime=runtime)) as client:
        before = utcnow()
        asked = client.post(
            SELF_SERVICE, json={"expires_in_seconds": 600, "label": "mine"}, headers=bearer(alice)
        )
        assert asked.status_code == 201, asked.text
        made = asked.json()
        assert (made["user"], made["admin"], made["scope"]) == ("alice", False, CONSUMER_RUN)
        assert made["token"].startswith("cvy_")
        expires = datetime.fromisoformat(made["expires_at"])
        assert before + timedelta(seconds=599) < expires < utcnow() + timedelta(seconds=601)
        # without an expiry it gets the server's longest
        longest = client.post(SELF_SERVICE, json={}, headers=bearer(alice)).json()
        expires = datetime.fromisoformat(longest["expires_at"])
        assert before + timedelta(seconds=7199) < expires < utcnow() + timedelta(seconds=7201)
        # what it made is scoped: it reads, and may not administer or list jobs
        token = made["token"]
        assert client.get("/api/v1/transactions", headers=bearer(token)).status_code == 200
        assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 403
        # an admin's own is not an admin's
        admins = client.post(SELF_SERVICE, json={}, headers=bearer(root)).json()
        assert (admins["user"], admins["admin"]) == ("root", False)
        assert client.get("/api/v1/tokens", headers=bearer(admins["token"])).status_code == 403
        # nobody else may be named
        other = client.post(SELF_SERVICE, json={"user": "bob"}, headers=bearer(alice))
        assert other.status_code == 422
        assert other.json()["detail"] == "user: Extra inputs are not permitted"


def test_asking_for_a_run_token_is_checked(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token", run_token_max_seconds=7200)
    alice = issue(runtime, "alice")
    run = run_token(runtime, "alice")
    with TestClient(create_app(runtime=runtime)) as client:
        too_long = client.post(
            SELF_SERVICE, json={"expires_in_seconds": 7201}, headers=bearer(alice)
        )
        assert too_long.status_code == 400
        assert too_long.json()["detail"] == (
            "expires_in_seconds may be at most 7200 on this server "
            "(CONVEYOR_RUN_TOKEN_MAX_SECONDS), not 7201"
        )
        for bad in (0, -5, "soon"):
            refused = client.post(
                SELF_SERVICE, json={"expires_in_seconds": bad}, headers=bearer(alice)
            )
            assert refused.status_code == 422, bad
            assert refused.json()["detail"].startswith("expires_in_seconds: "), refused.text
        long_label = client.post(SELF_SERVICE, json={"label": "x" * 256}, headers=bearer(alice))
        assert long_label.status_code == 422
        # a scoped token gets no other token, of any kind
        for path, body in ((SELF_SERVICE, {}), ("/api/v1/tokens", {"user": "alice"})):
            answer = client.post(path, json=body, headers=bearer(run))
            assert answer.status_code == 403, answer.text
            assert answer.json()["detail"] == f"a consumer-run token may not POST {path}"
        assert client.post(SELF_SERVICE, json={}).status_code == 401


def test_a_user_revokes_its_own_tokens_only(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    alice, bob = issue(runtime, "alice"), issue(runtime, "bob")
    root = issue(runtime, "root", admin=True)
    with TestClient(create_app(runtime=runtime)) as client:

        def mint(token: str) -> dict[str, str]:
            made: dict[str, str] = client.post(SELF_SERVICE, json={}, headers=bearer(token)).json()
            return made

        alices, bobs, bobs_second = mint(alice), mint(bob), mint(bob)
        # another user's token is not found, and keeps working
        theirs = client.delete(f"/api/v1/tokens/{bobs['id']}", headers=bearer(alice))
        assert theirs.status_code == 404
        assert theirs.json()["detail"] == (
            f"token {bobs['id']} does not exist or is already revoked"
        )
        assert client.get("/api/v1/transactions", headers=bearer(bobs["token"])).status_code == 200
        # its own is revoked at once; a second time it is not found
        mine = client.delete(f"/api/v1/tokens/{alices['id']}", headers=bearer(alice))
        assert mine.status_code == 204
        assert client.get("/api/v1/transactions", headers=bearer(alices["token"])).status_code == (
            401
        )
        assert client.delete(
            f"/api/v1/tokens/{alices['id']}", headers=bearer(alice)
        ).status_code == (404)
        # a run token revokes nothing, not even itself
        itself = client.delete(f"/api/v1/tokens/{bobs['id']}", headers=bearer(bobs["token"]))
        assert itself.status_code == 403
        # an admin revokes anyone's
        assert client.delete(f"/api/v1/tokens/{bobs['id']}", headers=bearer(root)).status_code == (
            204
        )
        assert client.get("/api/v1/transactions", headers=bearer(bobs["token"])).status_code == 401
        assert client.get(
            "/api/v1/transactions", headers=bearer(bobs_second["token"])
        ).status_code == (200)


def test_with_auth_off_a_run_token_is_issued_for_the_default_user(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(auth="none", default_user="lab")
    with TestClient(create_app(runtime=runtime)) as client:
        made = client.post(SELF_SERVICE, json={"expires_in_seconds": 60})
        assert made.status_code == 201, made.text
        assert (made.json()["user"], made.json()["admin"]) == ("lab", False)
        token = made.json()["token"]
        with runtime.db.session() as session:
            row = lookup(session, token)
            assert row is not None
            assert (row.user_id, row.scope, row.admin) == ("lab", CONSUMER_RUN, False)
        # it resolves as a scoped token, with no run behind it: auth off, the default user
        principal = authenticate(runtime.settings, runtime.db, bearer(token), "127.0.0.1")
        assert principal == anonymous(runtime.settings)
        # the anonymous caller revokes it
        revoked = client.delete(f"/api/v1/tokens/{made.json()['id']}")
        assert revoked.status_code == 204
        with runtime.db.session() as session:
            assert lookup(session, token) is None
