"""Provenance is the server's: what a client sends under ``conveyor.`` is replaced or refused.

On the inline runtime, through the real API: an ingest made with a consumer run's token
records that run's provenance whatever the bundle says (with auth off too); a user may
name a consumer and an input it can read (a remote consumer's output), and the server
extends that input's lineage itself; anything else under ``conveyor.`` answers 400 and
publishes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conveyor.auth.scopes import CONSUMER_RUN
from conveyor.auth.tokens import create_token
from conveyor.consumers.provenance import (
    CONSUMER,
    DERIVED_FROM,
    LINEAGE,
    RUN,
    VERSION,
    Lineage,
)
from conveyor.db.models import Job, Transaction, TransactionKeyValue
from conveyor.db.types import utcnow
from conveyor.ingest.provenance import PAYLOAD_KEY
from conveyor.jobs import service as jobs
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import GOOD_MEMBERS, good_metadata, make_tar, move_metadata

Headers = dict[str, str]


def kv(key: str, value: str) -> dict[str, Any]:
    return {"destinationTable": "TransactionKeyValue", "key": key, "value": value}


def bundle(*pairs: tuple[str, str]) -> bytes:
    """The published good bundle with ``pairs`` added to its key-values."""
    return make_tar(GOOD_MEMBERS, [*good_metadata(), *(kv(key, value) for key, value in pairs)])


def published(client: TestClient, body: bytes, headers: Headers | None = None) -> dict[str, Any]:
    """Upload ``body`` and read back the transaction it made (jobs run inline)."""
    accepted = client.post("/api/v1/ingest", content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    job = client.get(f"/api/v1/jobs/{accepted.json()['id']}", headers=headers).json()
    assert job["state"] == "succeeded", job
    found = client.get(f"/api/v1/transactions/{job['transaction_id']}", headers=headers)
    return found.json()  # type: ignore[no-any-return]


def reserved(record: dict[str, Any]) -> dict[str, str]:
    """The transaction's ``conveyor.`` key-values, each key asserted to appear once."""
    pairs = [(row["key"], row["value"]) for row in record["key_values"]]
    mine = [(key, value) for key, value in pairs if key.startswith("conveyor.")]
    assert len({key for key, _ in mine}) == len(mine), mine
    return dict(mine)


def transaction_count(runtime: Runtime) -> int:
    with runtime.db.session() as session:
        return session.scalar(select(func.count()).select_from(Transaction)) or 0


def consumer_run(runtime: Runtime, user: str, consumer: str, input_id: int) -> tuple[int, str]:
    """A consumer.run job that recorded its provenance, and a token issued to it."""
    with runtime.db.session() as session:
        job = jobs.create_job(session, "consumer.run", user, {"consumer": consumer})
        values = Lineage(("clean",)).provenance(consumer, "0123456789ab", job.id, input_id)
        job.payload = {**job.payload, PAYLOAD_KEY: values}
        issued = create_token(
            session,
            user,
            scope=CONSUMER_RUN,
            expires_at=utcnow() + timedelta(hours=1),
            run_job_id=job.id,
        )
        return job.id, issued.secret


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("auth", ["token", "none"])
def test_a_run_tokens_ingest_records_its_run_whatever_the_bundle_says(
    make_runtime: Callable[..., Runtime], auth: str
) -> None:
    runtime = make_runtime(auth=auth)
    with runtime.db.session() as session:
        alice = bearer(create_token(session, "alice").secret)
    with TestClient(create_app(runtime=runtime)) as client:
        original = published(client, bundle(), alice)["id"]
        run_id, secret = consumer_run(runtime, "alice", "upper", original)
        expected = {
            CONSUMER: "upper",
            VERSION: "0123456789ab",
            RUN: str(run_id),
            DERIVED_FROM: str(original),
            LINEAGE: '["clean", "upper"]',
        }
        # a consumer posting straight to the API, with nothing of its own under conveyor.
        plain = published(client, bundle(), bearer(secret))
        assert reserved(plain) == expected
        assert {"key": "Temp C", "value": "27"} in plain["key_values"]
        # and one trying to pass its output off as original data, or as another's
        forged = published(
            client,
            bundle(
                (LINEAGE, "[]"),
                (LINEAGE, '["someone"]'),
                (CONSUMER, "someone"),
                (RUN, "1"),
                (DERIVED_FROM, "999"),
                ("conveyor.extra", "x"),
            ),
            bearer(secret),
        )
        assert reserved(forged) == expected


def test_conveyor_keys_without_a_consumer_are_refused(client: TestClient, runtime: Runtime) -> None:
    forged = bundle(("Tag", "x"), (LINEAGE, '["upper"]'))
    answer = client.post("/api/v1/ingest", content=forged)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == (
        "conveyor.lineage: keys under 'conveyor.' are recorded by the server; a client may "
        "send them only for a consumer's output, naming conveyor.consumer (and the input "
        "transaction in conveyor.derived_from, if any)"
    )
    # the Pacifica route refuses it too, in its own shape
    pacifica = client.post("/pacifica/ingest/upload", content=forged)
    assert pacifica.status_code == 400
    assert "recorded by the server" in pacifica.json()["message"]
    # the bundle's job failed and published nothing
    with runtime.db.session() as session:
        failed = session.scalars(select(Job).where(Job.kind == "ingest")).all()
    assert [(job.state, job.task) for job in failed] == [("failed", "load metadata")] * 2
    assert transaction_count(runtime) == 0
    # a move is refused before it is queued
    metadata = [*move_metadata({}), kv(LINEAGE, "[]")]
    moved = client.post("/api/v1/ingest/move", content=json.dumps(metadata))
    assert moved.status_code == 400, moved.text
    assert "recorded by the server" in moved.json()["detail"]
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).where(Job.kind == "move")) == 0


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        ([(DERIVED_FROM, "{input}")], "naming conveyor.consumer (and the input"),
        ([(CONSUMER, " "), (DERIVED_FROM, "{input}")], "naming conveyor.consumer"),
        ([(CONSUMER, "upper"), (DERIVED_FROM, "999")], "'999' is not a transaction you may"),
        ([(CONSUMER, "upper"), (DERIVED_FROM, "7 ")], "'7 ' is not a transaction you may"),
        ([(CONSUMER, "upper"), (DERIVED_FROM, "9" * 40)], "is not a transaction you may"),
        (
            [(CONSUMER, "upper"), (DERIVED_FROM, "{input}"), (RUN, "12")],
            "conveyor.consumer.run 12 names a consumer run of this server",
        ),
        ([("conveyor.note", "x")], "key 'conveyor.note': keys under 'conveyor.' are reserved"),
        (
            [(CONSUMER, "a"), (CONSUMER, "b"), (DERIVED_FROM, "{input}")],
            "key 'conveyor.consumer' is given twice, with different values",
        ),
    ],
)
def test_what_the_server_cannot_record_is_refused(
    client: TestClient, runtime: Runtime, pairs: list[tuple[str, str]], words: str
) -> None:
    original = published(client, bundle())["id"]
    sent = [(key, value.format(input=original)) for key, value in pairs]
    answer = client.post("/api/v1/ingest", content=bundle(*sent))
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["detail"]
    assert transaction_count(runtime) == 1


def test_a_remote_consumers_output_gets_the_lineage_the_server_computes(
    client: TestClient,
) -> None:
    original = published(client, bundle())["id"]
    first = published(
        client,
        bundle(
            (CONSUMER, "clean"),
            (VERSION, "v1"),
            (RUN, "remote:event-1"),
            (DERIVED_FROM, str(original)),
            (LINEAGE, "[]"),  # a reset the server does not take
            (CONSUMER, "clean"),  # the same value twice is one value
        ),
    )
    assert reserved(first) == {
        CONSUMER: "clean",
        VERSION: "v1",
        RUN: "remote:event-1",
        DERIVED_FROM: str(original),
        LINEAGE: '["clean"]',
    }
    second = published(
        client, bundle((CONSUMER, "upper"), (DERIVED_FROM, str(first["id"])), (LINEAGE, '["x"]'))
    )
    assert reserved(second) == {
        CONSUMER: "upper",
        DERIVED_FROM: str(first["id"]),
        LINEAGE: '["clean", "upper"]',
    }
    # a run on an event about no transaction (a cart, a mirror failure) has no input
    third = published(client, bundle((CONSUMER, "report"), (LINEAGE, '["x", "y"]')))
    assert reserved(third) == {CONSUMER: "report", LINEAGE: '["report"]'}


def test_the_input_must_be_one_the_user_may_read(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(auth="token")
    with runtime.db.session() as session:
        alice = bearer(create_token(session, "alice").secret)
        bob = bearer(create_token(session, "bob").secret)
    with TestClient(create_app(runtime=runtime)) as client:
        theirs = published(client, bundle(), bob)["id"]
        claimed = bundle((CONSUMER, "upper"), (DERIVED_FROM, str(theirs)))
        answer = client.post("/api/v1/ingest", content=claimed, headers=alice)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"] == (
            f"conveyor.derived_from '{theirs}' is not a transaction you may read"
        )
        assert published(client, claimed, bob)["key_values"]


def test_of_several_stored_lineages_the_longest_counts(runtime: Runtime) -> None:
    with runtime.db.session() as session:
        row = Transaction(submitter="u", owner="u", project="p", file_count=0, total_size=0)
        session.add(row)
        session.flush()
        for value in ('["a", "b"]', "[]", '["c"]'):
            session.add(TransactionKeyValue(transaction_id=row.id, key=LINEAGE, value=value))
        session.flush()
        assert Lineage.of_transaction(session, row.id).consumers == ("a", "b")
