"""Event sinks: one per kind of target (webhook, AMQP, MQTT, NATS), chosen by URL scheme."""

from conveyor.events.sinks.base import (
    SINKS,
    EventSink,
    Outcome,
    Outgoing,
    open_sink,
    sink_class,
)

__all__ = ["SINKS", "EventSink", "Outcome", "Outgoing", "open_sink", "sink_class"]
