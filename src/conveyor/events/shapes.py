"""The forms an event is matched and sent in, and how each becomes a message's bytes.

``cloudevents``: CloudEvents 1.0 (structured JSON, or binary: ``ce-*`` headers and the data
as the body). ``pacifica``: the 0.1 form Pacifica Notifications and its consumers read
(``cloudEventsVersion``, ``eventType``, ``eventID``, …), with the subscription's
``extensions`` merged in as the published service did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from conveyor.db.types import iso_z
from conveyor.events.outbox import EventRecord

Shape = Literal["cloudevents", "pacifica"]
SHAPES: tuple[Shape, ...] = ("cloudevents", "pacifica")
ContentMode = Literal["structured", "binary"]
CONTENT_MODES: tuple[ContentMode, ...] = ("structured", "binary")
STRUCTURED_TYPE = "application/cloudevents+json"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Encoded:
    """A message ready for any transport: its headers (``ce-*`` in binary mode) and body."""

    headers: dict[str, str]
    body: bytes
    content_type: str


def cloudevent(row: EventRecord) -> dict[str, Any]:
    """The stored event in CloudEvents 1.0 structured JSON form."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": row.id,
        "type": row.type,
        "source": row.source,
        "time": iso_z(row.time),
        "datacontenttype": JSON_TYPE,
        "data": row.data,
    }
    if row.subject:
        event["subject"] = row.subject
    for name, value in (row.extensions or {}).items():
        event.setdefault(name, value)
    return event


def pacifica_event(row: EventRecord, extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored event in the CloudEvents 0.1 form of Pacifica Notifications."""
    return {
        "cloudEventsVersion": "0.1",
        "eventType": row.type,
        "source": row.source,
        "eventID": row.id,
        "eventTime": iso_z(row.time),
        "extensions": {**(row.extensions or {}), **(extensions or {})},
        "contentType": JSON_TYPE,
        "data": row.data,
    }


def document(row: EventRecord, shape: str, extensions: dict[str, Any]) -> dict[str, Any]:
    """The event as a subscription of ``shape`` sees it (what its filter is matched against)."""
    if shape == "pacifica":
        return pacifica_event(row, extensions)
    event = cloudevent(row)
    # CloudEvents extension attributes sit beside the context attributes.
    for name, value in extensions.items():
        event[name] = value
    return event


def encode(doc: dict[str, Any], shape: str, mode: str) -> Encoded:
    """The bytes a target gets for ``doc``: structured JSON, or CloudEvents binary mode."""
    if shape == "pacifica":
        return Encoded({}, _json(doc), JSON_TYPE)
    if mode == "structured":
        return Encoded({}, _json(doc), STRUCTURED_TYPE)
    attributes = {key: value for key, value in doc.items() if key != "data"}
    if isinstance(attributes.get("time"), str):
        attributes["time"] = datetime.fromisoformat(attributes["time"])
    # The SDK writes non-dict data with str(); give it the JSON bytes instead.
    message = ce_http.to_binary(CloudEvent(attributes, _json(doc.get("data"))), JSONFormat())
    headers = {key: value for key, value in message.headers.items() if key != "content-type"}
    return Encoded(headers, message.body, JSON_TYPE)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
