"""Which subscriptions an event goes to: their type lists, their owners' rights, their filters.

Fan-out tries every event against every live subscription, so each subscription is read
once per pass into a plain :class:`Matcher` (ORM attribute reads cost more than a filter),
and each event is shaped once per form for all subscriptions that add no extensions.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

from conveyor.db.models import OutboxEvent, Subscription
from conveyor.events.filters import EventFilter, FilterError, compile_filter
from conveyor.events.shapes import document
from conveyor.events.visibility import Readers

log = logging.getLogger(__name__)

FilterCache = dict[tuple[str, datetime], EventFilter | None]


class Matcher(NamedTuple):
    """What deciding a subscription's match needs, read off its row once."""

    subscription_id: str
    owner: str
    types: frozenset[str]
    shape: str
    extensions: dict[str, Any]
    event_filter: EventFilter

    def matches(
        self,
        row: OutboxEvent,
        readers: Readers,
        documents: dict[str, dict[str, Any]],
    ) -> bool:
        """True when the event goes to this subscription.

        ``documents`` holds this event's shapes already made (one dict per event).
        """
        if self.types and row.type not in self.types:
            return False
        if not readers.may_read(self.owner, row):
            return False
        if self.extensions:
            return self.event_filter.matches(document(row, self.shape, self.extensions))
        shaped = documents.get(self.shape)
        if shaped is None:
            shaped = documents[self.shape] = document(row, self.shape, {})
        return self.event_filter.matches(shaped)


def matchers(subscriptions: list[Subscription], filters: FilterCache) -> list[Matcher]:
    """A matcher per subscription whose filter parses; ``filters`` caches compiled filters
    by subscription and version across passes."""
    made = []
    for subscription in subscriptions:
        key = (subscription.id, subscription.updated_at)
        if key not in filters:
            try:
                filters[key] = compile_filter(subscription.dialect, subscription.filter)
            except FilterError:
                log.warning("subscription %s has a filter that no longer parses", subscription.id)
                filters[key] = None
        compiled = filters[key]
        if compiled is not None:
            made.append(
                Matcher(
                    subscription.id,
                    subscription.owner,
                    frozenset(subscription.types or ()),
                    subscription.shape,
                    dict(subscription.extensions or {}),
                    compiled,
                )
            )
    return made
