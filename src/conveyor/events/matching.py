"""Which subscriptions an event goes to: their type lists, their owners' rights, their filters.

Fan-out tries every event against every live subscription, so each subscription is read
once per pass into a plain :class:`Matcher` (ORM attribute reads cost more than a filter),
and each event is shaped once per form for all subscriptions that add no extensions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, NamedTuple

from conveyor.db.models import Subscription
from conveyor.events.filters import (
    ComparisonTest,
    EqualityTest,
    EventFilter,
    FilterError,
    compile_filter,
)
from conveyor.events.outbox import EventRecord
from conveyor.events.shapes import document
from conveyor.events.visibility import Readers

log = logging.getLogger(__name__)

FilterCache = dict[tuple[str, datetime], EventFilter | None]
Tested = Callable[[Any], bool]


class Matcher(NamedTuple):
    """What deciding a subscription's match needs, read off its row once."""

    subscription_id: str
    owner: str
    types: frozenset[str]
    shape: str
    extensions: dict[str, Any]
    event_filter: EventFilter

    def admits(self, row: EventRecord, readers: Readers) -> bool:
        """True when the event is of a wanted type and the owner may read it."""
        if self.types and row.type not in self.types:
            return False
        return readers.may_read(self.owner, row)

    def matches(
        self,
        row: EventRecord,
        readers: Readers,
        documents: dict[str, dict[str, Any]],
    ) -> bool:
        """True when the event goes to this subscription.

        ``documents`` holds this event's shapes already made (one dict per event).
        """
        if not self.admits(row, readers):
            return False
        if self.extensions:
            return self.event_filter.matches(document(row, self.shape, self.extensions))
        return self.event_filter.matches(shaped_once(documents, row, self.shape))


class MatcherSet:
    """Every live subscription's matcher, with plain filters grouped by the query they read.

    Subscriptions (that add no extensions) whose filter is ``$[?<query> == <literal>]`` are
    grouped by shape and query: the query is read once per event and its value looked up,
    so a hundred such subscriptions cost one query, not a hundred. Filters that only compare
    one query with literals (ranges) are grouped the same way; each one's test is then a
    few native comparisons of the value read once.
    """

    def __init__(self, found: list[Matcher]) -> None:
        self.general: list[Matcher] = []
        self.indexed: dict[tuple[str, str], tuple[EqualityTest, dict[Hashable, list[Matcher]]]]
        self.indexed = {}
        self.compared: dict[tuple[str, str], tuple[ComparisonTest, list[tuple[Tested, Matcher]]]]
        self.compared = {}
        for matcher in found:
            equality = matcher.event_filter.equality
            comparison = matcher.event_filter.comparison
            if matcher.extensions or (equality is None and comparison is None):
                self.general.append(matcher)
            elif equality is not None:
                _, table = self.indexed.setdefault(
                    (matcher.shape, equality.query_key), (equality, {})
                )
                table.setdefault(equality.literal, []).append(matcher)
            elif comparison is not None:
                key = (matcher.shape, comparison.query_key)
                self.compared.setdefault(key, (comparison, []))[1].append(
                    (comparison.holds, matcher)
                )

    def matching(self, row: EventRecord, readers: Readers) -> list[str]:
        """The ids of the subscriptions the event goes to."""
        documents: dict[str, dict[str, Any]] = {}
        chosen = [m.subscription_id for m in self.general if m.matches(row, readers, documents)]
        for (shape, _), (test, table) in self.indexed.items():
            shaped = shaped_once(documents, row, shape)
            hits = {id(m): m for key in test.keys(shaped) for m in table.get(key, ())}
            chosen.extend(m.subscription_id for m in hits.values() if m.admits(row, readers))
        for (shape, _), (reader, group) in self.compared.items():
            for value in reader.values(shaped_once(documents, row, shape)):
                chosen.extend(
                    m.subscription_id
                    for holds, m in group
                    if holds(value) and m.admits(row, readers)
                )
        return chosen


def shaped_once(
    documents: dict[str, dict[str, Any]], row: EventRecord, shape: str
) -> dict[str, Any]:
    """The event in ``shape`` without extensions, made once per event (kept in ``documents``)."""
    shaped = documents.get(shape)
    if shaped is None:
        shaped = documents[shape] = document(row, shape, {})
    return shaped


def matchers(subscriptions: list[Subscription], filters: FilterCache) -> MatcherSet:
    """The matchers of the subscriptions whose filter parses; ``filters`` caches compiled
    filters by subscription and version across passes."""
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
    return MatcherSet(made)
