"""The event sink interface, its registry by URL scheme, and what a send reports."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.errors import BadRequest
from conveyor.events.shapes import Encoded

# Scheme → module that registers the sink for it (imported on first use).
SINK_MODULES = {
    "http": "conveyor.events.sinks.webhook",
    "https": "conveyor.events.sinks.webhook",
    "amqp": "conveyor.events.sinks.amqp",
    "amqps": "conveyor.events.sinks.amqp",
    "mqtt": "conveyor.events.sinks.mqtt",
    "mqtts": "conveyor.events.sinks.mqtt",
    "nats": "conveyor.events.sinks.nats",
    "tls": "conveyor.events.sinks.nats",
}
SINKS: dict[str, type[EventSink]] = {}
EXCERPT_CHARS = 512


@dataclass(frozen=True)
class Outgoing:
    """One event for one target, encoded, with what the target needs to accept it."""

    event_id: str
    event_type: str
    target_url: str
    message: Encoded
    # Opened credentials: {"type": "basic"|"bearer"|"header", ...}, or None.
    auth: dict[str, Any] | None = None
    # The Standard Webhooks signing secret (``whsec_…``); webhooks sign with it.
    secret: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one send came to: delivered or not, the target's status and answer, and why."""

    delivered: bool
    status: int | None = None
    error: str = ""
    excerpt: str = ""
    # Seconds the target asked us to wait (Retry-After), if it did.
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EventSink(ABC):
    """Sends encoded events to targets of its schemes; reuses connections between sends.

    ``send`` may be called from several threads at once; it reports failures as an
    :class:`Outcome` instead of raising, so one bad target never stops a batch.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    # Whether the transport carries headers, so CloudEvents binary mode is possible.
    binary_mode: ClassVar[bool] = True

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    @classmethod
    def check_target(cls, url: str) -> None:
        """Raise :class:`BadRequest` when ``url`` is not a usable target of this sink."""

    @abstractmethod
    def send(self, outgoing: Outgoing) -> Outcome:
        """Deliver one event and say how it went."""

    def close(self) -> None:
        """Close every connection this sink holds."""


def register(cls: type[EventSink]) -> type[EventSink]:
    """Class decorator: make ``cls`` the sink of its schemes."""
    for scheme in cls.schemes:
        SINKS[scheme] = cls
    return cls


def sink_class(scheme: str) -> type[EventSink]:
    """The sink class for ``scheme``, or :class:`BadRequest` naming the known schemes."""
    module = SINK_MODULES.get(scheme)
    if module is None:
        known = ", ".join(sorted(SINK_MODULES))
        raise BadRequest(f"no event sink for scheme {scheme!r}; use one of {known}")
    importlib.import_module(module)
    return SINKS[scheme]


def open_sink(scheme: str, timeout: float) -> EventSink:
    """A new sink for ``scheme``."""
    return sink_class(scheme)(timeout)


def excerpt(text: str) -> str:
    """The start of a target's answer, short enough to keep with every attempt."""
    return text[:EXCERPT_CHARS]


def describe(error: BaseException, timeout: float) -> str:
    """A failed send's reason, readable even when the error carries no message."""
    text = str(error)
    if not text and isinstance(error, TimeoutError):
        text = f"no answer within {timeout:g} s"
    return f"{type(error).__name__}: {text or 'no detail given'}"
