"""The ``org.pacifica.metadata.ingest`` event every new transaction records.

Ingests, mirror releases and consumer outputs alike: the Pacifica shape is what the
published consumers filter on, so each new transaction can trigger them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.models import File, Transaction, TransactionKeyValue
from conveyor.events.outbox import Event
from conveyor.ingest.metadata import BundleMetadata

INGEST_EVENT_TYPE = "org.pacifica.metadata.ingest"
INGEST_EVENT_SOURCE = "/pacifica/metadata/ingest"


def metadata_entries(data: Any, table: str) -> Iterator[dict[str, Any]]:
    """The entries of a Pacifica metadata list (an event's ``data``) for ``table``.

    Tolerant of any shape: events from other producers arrive through ``/receive``.
    """
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("destinationTable") == table:
            yield entry


def metadata_value(data: Any, table: str) -> Any:
    """The ``value`` of the first ``table`` entry (``Transactions.project``, say), or None."""
    return next((entry.get("value") for entry in metadata_entries(data, table)), None)


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def ingest_event(transaction: Transaction, metadata: BundleMetadata, file_ids: list[int]) -> Event:
    """The event in the Pacifica shape: the ingested metadata list with assigned ids."""
    files = (
        {
            "_id": file_id,
            "name": entry.name,
            "subdir": entry.subdir,
            "size": entry.size,
            "hashtype": entry.hashtype,
            "hashsum": entry.hashsum,
            "mimetype": entry.mimetype,
            "ctime": _time(entry.ctime),
            "mtime": _time(entry.mtime),
        }
        for file_id, entry in zip(file_ids, metadata.files, strict=True)
    )
    return _transaction_event(transaction, metadata.key_values, files)


def stored_transaction_event(session: Session, transaction: Transaction) -> Event:
    """The same event for a transaction whose rows are written (a mirror release, say)."""
    key_values = [
        (key, value)
        for key, value in session.execute(
            select(TransactionKeyValue.key, TransactionKeyValue.value)
            .where(TransactionKeyValue.transaction_id == transaction.id)
            .order_by(TransactionKeyValue.id)
        )
    ]
    rows = session.execute(
        select(
            File.id,
            File.name,
            File.subdir,
            File.size,
            File.hashtype,
            File.hashsum,
            File.mimetype,
            File.ctime,
            File.mtime,
        )
        .where(File.transaction_id == transaction.id)
        .order_by(File.id)
    )
    files = (
        {
            "_id": row.id,
            "name": row.name,
            "subdir": row.subdir,
            "size": row.size,
            "hashtype": row.hashtype,
            "hashsum": row.hashsum,
            "mimetype": row.mimetype,
            "ctime": _time(row.ctime),
            "mtime": _time(row.mtime),
        }
        for row in rows
    )
    return _transaction_event(transaction, key_values, files)


def _transaction_event(
    transaction: Transaction,
    key_values: Iterable[tuple[str, str]],
    files: Iterable[dict[str, Any]],
) -> Event:
    data: list[dict[str, Any]] = [
        {"destinationTable": "Transactions._id", "value": transaction.id},
        {"destinationTable": "Transactions.submitter", "value": transaction.submitter},
        {"destinationTable": "Transactions.project", "value": transaction.project},
        {"destinationTable": "Transactions.proposal", "value": transaction.project},
    ]
    if transaction.instrument is not None:
        data.append(
            {"destinationTable": "Transactions.instrument", "value": transaction.instrument}
        )
    data.extend(
        {"destinationTable": "TransactionKeyValue", "key": key, "value": value}
        for key, value in key_values
    )
    data.extend({"destinationTable": "Files", **entry} for entry in files)
    return Event(
        type=INGEST_EVENT_TYPE,
        source=INGEST_EVENT_SOURCE,
        subject=f"transactions/{transaction.id}",
        owner=transaction.owner,
        project=transaction.project,
        data=data,
    )
