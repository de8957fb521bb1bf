"""The provenance an ingest records: the server's account, never the client's.

Key-values under ``conveyor.`` say which consumer run made a transaction and from what,
and decide which consumers may run on it. An ingest made with a consumer run's token
records that run's provenance, whatever its bundle says. Any other client may send them
only for a consumer's output published elsewhere (``conveyor consumer serve``): naming
the consumer and a transaction it may read, whose lineage the server extends itself.
Everything else under ``conveyor.`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.consumers.provenance import (
    CONSUMER,
    DERIVED_FROM,
    KEYS,
    LINEAGE,
    RESERVED_PREFIX,
    RUN,
    VERSION,
    Lineage,
)
from conveyor.db.models import Job
from conveyor.errors import BadRequest, NotFound
from conveyor.ingest import queries

# The payload entry of a consumer run, and of an ingest job, holding the provenance to record.
PAYLOAD_KEY = "provenance"
# Transaction ids are 64-bit: a longer number names none (and would overflow the query).
MAX_ID_DIGITS = 18


class ProvenanceRefused(BadRequest):
    """The client's ``conveyor.`` key-values cannot be recorded; the message says why."""


def _reserved(key: str) -> bool:
    """Whether ``key`` is the server's to record."""
    return key.startswith(RESERVED_PREFIX)


def resolve(
    session: Session, principal: Principal, key_values: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """The ``conveyor.`` key-values an ingest by ``principal`` records, in place of the
    client's; :class:`ProvenanceRefused` when the client's cannot stand."""
    if principal.run_job is not None:
        return _run_provenance(session, principal.run_job)
    return _client_provenance(session, principal, _sent(key_values))


def _run_provenance(session: Session, run_job: int) -> dict[str, str]:
    """What consumer run ``run_job`` records on every transaction it publishes."""
    job = session.get(Job, run_job)
    values = job.payload.get(PAYLOAD_KEY) if job is not None else None
    if not isinstance(values, dict):
        raise ProvenanceRefused(f"consumer run {run_job} has no provenance to record")
    return {str(key): str(value) for key, value in values.items()}


def apply(
    key_values: Iterable[tuple[str, str]], provenance: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """The key-values with the client's ``conveyor.`` ones replaced by ``provenance``."""
    kept = [(key, value) for key, value in key_values if not _reserved(key)]
    return [*kept, *sorted((str(key), str(value)) for key, value in provenance.items())]


def _sent(key_values: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's ``conveyor.`` key-values: known keys, one value each."""
    sent: dict[str, str] = {}
    for key, value in key_values:
        if not _reserved(key):
            continue
        if key not in KEYS:
            raise ProvenanceRefused(f"key {key!r}: keys under {RESERVED_PREFIX!r} are reserved")
        if sent.setdefault(key, value) != value:
            raise ProvenanceRefused(f"key {key!r} is given twice, with different values")
    return sent


def _client_provenance(
    session: Session, principal: Principal, sent: dict[str, str]
) -> dict[str, str]:
    """Provenance a client other than a run may give: a consumer and its input, whose
    lineage the server extends (the client's lineage is never read). Without an input (a
    run on an event about no transaction) the lineage is the consumer alone."""
    if not sent:
        return {}
    consumer = sent.get(CONSUMER, "").strip()
    if not consumer:
        raise ProvenanceRefused(
            f"{', '.join(sorted(sent))}: keys under {RESERVED_PREFIX!r} are recorded by "
            f"the server; a client may send them only for a consumer's output, naming "
            f"{CONSUMER} (and the input transaction in {DERIVED_FROM}, if any)"
        )
    run = sent.get(RUN)
    if run is not None and run.isdigit():
        raise ProvenanceRefused(
            f"{RUN} {run} names a consumer run of this server; only that run records it"
        )
    values = {key: sent[key] for key in (VERSION, RUN) if key in sent}
    if DERIVED_FROM not in sent:
        return {**values, CONSUMER: consumer, LINEAGE: Lineage().then(consumer).text()}
    origin = _readable(session, principal, sent[DERIVED_FROM])
    return {
        **values,
        CONSUMER: consumer,
        DERIVED_FROM: str(origin),
        LINEAGE: Lineage.of_transaction(session, origin).then(consumer).text(),
    }


def _readable(session: Session, principal: Principal, value: str) -> int:
    """The transaction ``conveyor.derived_from`` names, when the principal may read it."""
    refused = ProvenanceRefused(f"{DERIVED_FROM} {value!r} is not a transaction you may read")
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS):
        raise refused
    try:
        return queries.get_transaction(session, principal, int(value)).id
    except NotFound:
        raise refused from None
