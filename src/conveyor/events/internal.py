"""Targets inside Conveyor itself (``consumer://name``): the dispatcher hands their
deliveries to a registered function instead of a network sink.

Their schemes are not event sinks, so no user can subscribe a target of theirs through
the API; only the domain package that registers a scheme makes subscriptions for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.events.outbox import EventRecord
from conveyor.events.sinks import Outcome

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

InternalTarget = Callable[["Runtime", EventRecord, str], Outcome]
INTERNAL_TARGETS: dict[str, InternalTarget] = {}


def internal_target(scheme: str) -> Callable[[InternalTarget], InternalTarget]:
    """Register the decorated function as the receiver of deliveries to ``scheme://``."""

    def register(function: InternalTarget) -> InternalTarget:
        INTERNAL_TARGETS[scheme] = function
        return function

    return register
