"""The ``org.pacifica.metadata.ingest`` event a successful ingest records."""

from __future__ import annotations

from typing import Any

from conveyor.db.models import Transaction
from conveyor.events.outbox import Event
from conveyor.ingest.metadata import BundleMetadata

INGEST_EVENT_TYPE = "org.pacifica.metadata.ingest"
INGEST_EVENT_SOURCE = "/pacifica/metadata/ingest"


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def ingest_event(transaction: Transaction, metadata: BundleMetadata, file_ids: list[int]) -> Event:
    """The event in the Pacifica shape: the ingested metadata list with assigned ids."""
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
        for key, value in metadata.key_values
    )
    for file_id, entry in zip(file_ids, metadata.files, strict=True):
        data.append(
            {
                "destinationTable": "Files",
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
        )
    return Event(
        type=INGEST_EVENT_TYPE,
        source=INGEST_EVENT_SOURCE,
        subject=f"transactions/{transaction.id}",
        owner=transaction.owner,
        project=transaction.project,
        data=data,
    )
