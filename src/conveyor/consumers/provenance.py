"""Provenance: the key-values every consumer output carries, and the loops they prevent.

A transaction a consumer publishes records the consumer, its version, the run (job) and
the input transaction, and its lineage: the consumers that made it, oldest first. A
consumer is not run on a transaction its own lineage names (its outputs, directly or
through a chain of consumers) unless it allows that, and never past its depth limit.
The server records these key-values itself (see :mod:`conveyor.ingest.provenance`); what
a client sends under ``conveyor.`` is replaced or refused.
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
# Every key under this prefix is the server's to record.
RESERVED_PREFIX = "conveyor."
KEYS = (CONSUMER, VERSION, RUN, DERIVED_FROM, LINEAGE)


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
        """The lineage the key-values record; a malformed one counts as empty.

        Should there be several (data from before the server kept one), the longest wins:
        a shorter one must not reset the depth or hide a consumer.
        """
        found = [cls._parse(value) for key, value in pairs if key == LINEAGE]
        return max(found, key=lambda lineage: lineage.depth, default=cls())

    @classmethod
    def _parse(cls, value: Any) -> Lineage:
        try:
            names = json.loads(str(value))
        except ValueError:
            return cls()
        return cls(tuple(str(name) for name in names)) if isinstance(names, list) else cls()

    @classmethod
    def of_transaction(cls, session: Session, transaction_id: int) -> Lineage:
        """The lineage of a stored transaction."""
        values = session.scalars(
            select(TransactionKeyValue.value)
            .where(
                TransactionKeyValue.transaction_id == transaction_id,
                TransactionKeyValue.key == LINEAGE,
            )
            .order_by(TransactionKeyValue.id)
        )
        return cls.from_key_values((LINEAGE, value) for value in values)

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

    def then(self, consumer: str) -> Lineage:
        """The lineage of what ``consumer`` makes from data of this lineage."""
        return Lineage((*self.consumers, consumer))

    def text(self) -> str:
        """The lineage as its key-value records it (a JSON list)."""
        return json.dumps(list(self.consumers))

    def provenance(
        self, consumer: str, version: str, run: int | str, input_transaction: int | None
    ) -> dict[str, str]:
        """The key-values a run's output transaction records."""
        values = {
            CONSUMER: consumer,
            VERSION: version,
            RUN: str(run),
            LINEAGE: self.then(consumer).text(),
        }
        if input_transaction is not None:
            values[DERIVED_FROM] = str(input_transaction)
        return values
