"""Provenance: the key-values every consumer output carries, and the loops they prevent.

A transaction a consumer publishes records the consumer, its version, the run (job) and
the input transaction, and its lineage: the consumers that made it, oldest first. A
consumer is not run on a transaction its own lineage names (its outputs, directly or
through a chain of consumers) unless it allows that, and never past its depth limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.models import TransactionKeyValue
from conveyor.ingest.events import metadata_entries

CONSUMER = "conveyor.consumer"
VERSION = "conveyor.consumer.version"
RUN = "conveyor.consumer.run"
DERIVED_FROM = "conveyor.derived_from"
LINEAGE = "conveyor.lineage"


@dataclass(frozen=True)
class Lineage:
    """The consumers that made a transaction, oldest first (empty for original data)."""

    consumers: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        """How many consumer runs lie between the original data and this transaction."""
        return len(self.consumers)

    @classmethod
    def from_key_values(cls, pairs: Iterable[tuple[Any, Any]]) -> Lineage:
        """The lineage a transaction's key-values record (a malformed one counts as empty)."""
        for key, value in pairs:
            if key != LINEAGE:
                continue
            try:
                names = json.loads(str(value))
            except ValueError:
                return cls()
            if isinstance(names, list):
                return cls(tuple(str(name) for name in names))
        return cls()

    @classmethod
    def of_transaction(cls, session: Session, transaction_id: int) -> Lineage:
        """The lineage of a stored transaction."""
        value = session.scalar(
            select(TransactionKeyValue.value).where(
                TransactionKeyValue.transaction_id == transaction_id,
                TransactionKeyValue.key == LINEAGE,
            )
        )
        return cls.from_key_values([(LINEAGE, value)] if value is not None else [])

    @classmethod
    def of_document(cls, document: dict[str, Any]) -> Lineage:
        """The lineage carried by a Pacifica-shaped event (its TransactionKeyValue entries)."""
        return cls.from_key_values(
            (entry.get("key"), entry.get("value"))
            for entry in metadata_entries(document.get("data"), "TransactionKeyValue")
        )

    def refusal(self, consumer: str, allow_self: bool, max_depth: int) -> str | None:
        """Why ``consumer`` must not run on this transaction, or None when it may."""
        if self.depth >= max_depth:
            return f"derivation depth {self.depth} reaches the limit of {max_depth}"
        if consumer in self.consumers and not allow_self:
            chain = " → ".join(self.consumers)
            return f"consumer {consumer!r} made this data (lineage {chain})"
        return None

    def provenance(
        self, consumer: str, version: str, run: int | str, input_transaction: int | None
    ) -> dict[str, str]:
        """The key-values a run's output transaction records."""
        values = {
            CONSUMER: consumer,
            VERSION: version,
            RUN: str(run),
            LINEAGE: json.dumps([*self.consumers, consumer]),
        }
        if input_transaction is not None:
            values[DERIVED_FROM] = str(input_transaction)
        return values
