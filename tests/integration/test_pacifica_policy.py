"""``/pacifica/policy``: the uploader queries and ingest validation the Pacifica clients send.

The queries are the ones pacifica-uploader's ``PolicyQuery`` posts while pacifica-cli
resolves its ``uploader.json`` (see tests/e2e/test_pacifica_cli.py for the real client).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.auth.tokens import create_token
from conveyor.ingest import policy
from conveyor.runtime import Runtime
from conveyor.web.app import create_app

POLICY = "/pacifica/policy"
ERROR_FIELDS = {"status", "message", "traceback", "version"}


def register(runtime: Runtime) -> None:
    """P: alice, bob; Q: bob, carol. I in P, J in Q, K in both. root is an admin in none."""
    with runtime.db.session() as session:
        policy.add_project(session, "P", "Project P")
        policy.add_project(session, "Q", "Project Q")
        policy.add_instrument(session, "I", "Mass spec", ["P"])
        policy.add_instrument(session, "J", "", ["Q"])
        policy.add_instrument(session, "K", "Shared", ["P", "Q"])
        policy.add_user(session, "alice", projects=["P"])
        policy.add_user(session, "bob", projects=["P", "Q"])
        policy.add_user(session, "carol", projects=["Q"])
        policy.add_user(session, "10", projects=["Q"])
        policy.add_user(session, "root", admin=True)
        policy.add_user(session, "dave")


@pytest.fixture
def client(make_runtime: Callable[..., Runtime]) -> Iterator[TestClient]:
    """Authentication off (identities are claims, as in Pacifica), strict policy."""
    runtime = make_runtime(policy="strict")
    register(runtime)
    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client


def ask(
    client: TestClient,
    user: Any,
    table: str,
    where: dict[str, Any] | None = None,
    columns: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST a PolicyQuery as pacifica-uploader encodes it; the answer's JSON (200 only)."""
    body = {"user": user, "columns": columns or ["_id"], "where": where or {}, "from": table}
    response = client.post(f"{POLICY}/uploader", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["_id"] for row in rows]


def test_root_greets(client: TestClient) -> None:
    response = client.get(f"{POLICY}/")
    assert response.json() == {"message": "Pacifica Policy Up and Running"}


def test_logon_lookup_by_network_id(client: TestClient) -> None:
    # pacifica-uploader's set_user: user -1, the name typed after --logon
    assert ask(client, -1, "users", {"network_id": "alice"}) == [{"_id": "alice"}]
    assert ask(client, -1, "users", {"network_id": "nobody"}) == []
    # ... and no where at all finds nobody in particular
    assert ask(client, -1, "users") == []


def test_users_without_condition_is_the_asker_with_the_columns_asked(client: TestClient) -> None:
    rows = ask(client, "alice", "users", columns=["first_name", "last_name", "_id"])
    assert rows == [{"first_name": "", "last_name": "", "_id": "alice"}]
    assert list(rows[0]) == ["first_name", "last_name", "_id"]
    # numeric ids arrive as numbers (int(user) succeeded in the client)
    assert ids(ask(client, 10, "users")) == ["10"]
    assert ask(client, "alice", "users", columns=["network_id"]) == [{"network_id": "alice"}]


def test_members_of_a_project_only_for_its_members(client: TestClient) -> None:
    assert ids(ask(client, "alice", "users", {"project_id": "P"})) == ["alice", "bob"]
    assert ask(client, "alice", "users", {"project_id": "Q"}) == []
    assert ids(ask(client, "bob", "users", {"proposal_id": "Q"})) == ["10", "bob", "carol"]
    assert ids(ask(client, "root", "users", {"project_id": "Q"})) == ["10", "bob", "carol"]
    # by id: yourself and fellow members, not strangers
    assert ids(ask(client, "alice", "users", {"_id": "bob"})) == ["bob"]
    assert ask(client, "alice", "users", {"_id": "carol"}) == []


def test_projects_are_those_the_user_is_a_member_of(client: TestClient) -> None:
    rows = ask(client, "alice", "projects", columns=["_id", "title"])
    assert rows == [{"_id": "P", "title": "Project P"}]
    assert ids(ask(client, "bob", "projects")) == ["P", "Q"]
    assert ids(ask(client, "bob", "proposals")) == ["P", "Q"]  # the older table name
    assert ask(client, "dave", "projects") == []
    assert ids(ask(client, "root", "projects")) == ["P", "Q"]
    # the project query of uploader.json depends on the instrument chosen first
    assert ids(ask(client, "bob", "projects", {"instrument_id": "J"})) == ["Q"]
    assert ids(ask(client, "bob", "projects", {"instrument_id": "K"})) == ["P", "Q"]
    assert ask(client, "alice", "projects", {"instrument_id": "J"}) == []
    # the directory-project entry looks a project up by id: only a member's own
    assert ids(ask(client, "alice", "projects", {"_id": "P"})) == ["P"]
    assert ask(client, "alice", "projects", {"_id": "Q"}) == []
    assert ids(ask(client, "root", "projects", {"_id": "Q"})) == ["Q"]
    # several conditions must all hold
    assert ids(ask(client, "bob", "projects", {"_id": "P", "instrument_id": "K"})) == ["P"]
    assert ask(client, "bob", "projects", {"_id": "P", "instrument_id": "J"}) == []


def test_instruments_are_those_of_the_users_projects(client: TestClient) -> None:
    rows = ask(client, "alice", "instruments", columns=["_id", "name_short", "display_name"])
    assert rows == [
        {"_id": "I", "name_short": "I", "display_name": "Mass spec"},
        {"_id": "K", "name_short": "K", "display_name": "Shared"},
    ]
    assert ask(client, "carol", "instruments", {"_id": "J"}, ["name", "display_name"]) == [
        {"name": "", "display_name": "J"}
    ]
    assert ids(ask(client, "bob", "instruments", {"project_id": "Q"})) == ["J", "K"]
    # a project's instruments are listed to its members only, even those it shares
    assert ask(client, "alice", "instruments", {"project_id": "Q"}) == []
    assert ids(ask(client, "root", "instruments", {"project_id": "Q"})) == ["J", "K"]
    assert ask(client, "alice", "instruments", {"_id": "J"}) == []
    assert ids(ask(client, "root", "instruments")) == ["I", "J", "K"]
    assert ask(client, "dave", "instruments") == []
    assert ask(client, "nobody", "instruments") == []


def test_columns_include_creation_time(client: TestClient) -> None:
    (row,) = ask(client, "alice", "projects", {"_id": "P"}, ["_id", "created"])
    assert row["created"].startswith("20")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"columns": ["_id"], "from": "users", "where": {}}, "user"),
        ({"user": True, "columns": ["_id"], "from": "users", "where": {}}, "user"),
        ({"user": "", "columns": ["_id"], "from": "users", "where": {}}, "user"),
        ({"user": ["a"], "columns": ["_id"], "from": "users", "where": {}}, "user"),
        ({"user": "a", "columns": [], "from": "users", "where": {}}, "columns"),
        ({"user": "a", "columns": "_id", "from": "users", "where": {}}, "columns"),
        ({"user": "a", "columns": ["password"], "from": "users", "where": {}}, "password"),
        ({"user": "a", "columns": ["_id"], "from": "groups", "where": {}}, "from"),
        ({"user": "a", "columns": ["_id"], "where": {}}, "from"),
        ({"user": "a", "columns": ["_id"], "from": "users", "where": {"x": 1}}, "'x'"),
        ({"user": "a", "columns": ["_id"], "from": "users", "where": {"_id": None}}, "_id"),
        ({"user": "a", "columns": ["_id"], "from": "users", "where": {"_id": {}}}, "_id"),
        ({"user": "a", "columns": ["_id"], "from": "users", "where": []}, "where"),
        (
            {
                "user": "a",
                "columns": ["_id"],
                "from": "users",
                "where": {"_id": "a", "network_id": "b"},
            },
            "twice",
        ),
        ({"user": "a", "columns": ["_id"], "from": "users", "where": {}, "limit": 5}, "limit"),
        ({"user": "a", "columns": ["x" * 300], "from": "users", "where": {}}, "columns"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(
    client: TestClient, body: dict[str, Any], says: str
) -> None:
    response = client.post(f"{POLICY}/uploader", json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()) == ERROR_FIELDS
    assert response.json()["status"] == "422 Unprocessable Entity"
    assert says in response.json()["message"]
    assert response.json()["traceback"] == ""


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"null"])
def test_a_body_that_is_no_query_is_refused(client: TestClient, content: bytes) -> None:
    response = client.post(
        f"{POLICY}/uploader", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert set(response.json()) == ERROR_FIELDS


def test_with_tokens_users_ask_only_as_themselves(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token", policy="strict")
    register(runtime)
    with runtime.db.session() as session:
        alice = create_token(session, "alice", False).secret
        admin = create_token(session, "root", True).secret
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_admin = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(runtime=runtime)) as client:
        body = {"user": -1, "columns": ["_id"], "from": "users", "where": {}}
        assert client.post(f"{POLICY}/uploader", json=body).status_code == 401

        assert ask(client, "alice", "projects", headers=as_alice) == [{"_id": "P"}]
        # the look-up before the asker is known takes the token's view
        assert ask(client, -1, "users", {"network_id": "bob"}, headers=as_alice) == [{"_id": "bob"}]
        assert ask(client, -1, "users", {"network_id": "carol"}, headers=as_alice) == []
        assert ids(ask(client, -1, "users", headers=as_alice)) == ["alice"]
        refused = client.post(
            f"{POLICY}/uploader",
            json={"user": "bob", "columns": ["_id"], "from": "projects", "where": {}},
            headers=as_alice,
        )
        assert refused.status_code == 403
        assert "alice" in refused.json()["message"] and "bob" in refused.json()["message"]

        # an admin token may take any user's view, and sees everyone in its own
        assert ids(ask(client, "carol", "projects", headers=as_admin)) == ["Q"]
        assert ids(ask(client, -1, "users", {"network_id": "carol"}, headers=as_admin)) == ["carol"]
        assert ids(ask(client, "root", "instruments", headers=as_admin)) == ["I", "J", "K"]


# --- POST /ingest: validation of a metadata list ----------------------------------------------


def metadata(submitter: Any, project: Any = "P", instrument: Any = "I") -> list[dict[str, Any]]:
    """The list ingest sends to policy: transaction fields, a key-value, a file with _id."""
    entries: list[dict[str, Any]] = [{"destinationTable": "Transactions._id", "value": 7}]
    for table, value in (
        ("submitter", submitter),
        ("project", project),
        ("instrument", instrument),
    ):
        if value is not None:
            entries.append({"destinationTable": f"Transactions.{table}", "value": value})
    entries += [
        {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "foo"},
        {
            "destinationTable": "Files",
            "_id": 34,
            "name": "foo.txt",
            "subdir": "a/b/",
            "size": 4,
            "mimetype": "text/plain",
        },
    ]
    return entries


def validate(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        f"{POLICY}/ingest",
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def test_ingest_validation_applies_the_strict_rules(client: TestClient) -> None:
    ok = validate(client, metadata("alice"))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"status": "success"}
    assert validate(client, metadata("alice", instrument=None)).json() == {"status": "success"}
    assert validate(client, metadata(10, "Q", "J")).json() == {"status": "success"}
    for body, reason in [
        (metadata("carol"), "not a member"),
        (metadata("alice", "Q", "J"), "not a member"),
        (metadata("alice", instrument="J"), "does not belong"),
        (metadata("alice", "12"), "not registered"),
        (metadata("mallory"), "not a registered user"),
        (metadata("alice", instrument="nope"), "not registered"),
        (metadata("alice", project=None), "no Transactions.project"),
    ]:
        response = validate(client, body)
        assert response.status_code == 412, (body, response.text)
        assert set(response.json()) == ERROR_FIELDS
        assert response.json()["status"] == "412 Precondition Failed"
        assert reason in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"destinationTable": "Files"}',
        [{"destinationTable": "Files", "name": "x", "size": -1}],
        [{"destinationTable": "Transactions.project", "value": {"a": 1}}],
        ["not an entry"],
    ],
)
def test_ingest_validation_refuses_malformed_metadata(client: TestClient, body: Any) -> None:
    response = validate(client, body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == ERROR_FIELDS
    assert response.json()["message"]


def test_ingest_validation_in_open_policy_accepts_any_names(
    make_runtime: Callable[..., Runtime],
) -> None:
    with TestClient(create_app(runtime=make_runtime(policy="open"))) as client:
        assert validate(client, metadata("anyone", "any", "thing")).json() == {"status": "success"}
        assert validate(client, metadata("anyone", project=None)).status_code == 412


def test_ingest_validation_with_tokens_checks_the_authenticated_user(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(auth="token", policy="strict")
    register(runtime)
    with runtime.db.session() as session:
        carol = {"Authorization": f"Bearer {create_token(session, 'carol', False).secret}"}
    with TestClient(create_app(runtime=runtime)) as client:
        # metadata names alice, a member of P; but carol is the one sending it
        refused = validate(client, metadata("alice"), headers=carol)
        assert refused.status_code == 412
        assert "'carol' is not a member of project 'P'" in refused.json()["message"]
        assert validate(client, metadata("alice", "Q", "J"), headers=carol).json() == {
            "status": "success"
        }
