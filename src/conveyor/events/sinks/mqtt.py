"""MQTT (Mosquitto and others): each event published at QoS 1 and counted when acknowledged.

Target: ``mqtt://user@host:1883/topic/levels`` (``mqtts`` for TLS); the topic defaults to
``conveyor/events``. MQTT 3.1.1 has no headers, so events go in structured mode.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conveyor.errors import BadRequest
from conveyor.events.sinks.base import EventSink, Outcome, Outgoing, describe, register
from conveyor.events.sinks.connections import ConnectionCache

DEFAULT_TOPIC = "conveyor/events"


class MqttUnavailable(Exception):
    """The broker did not accept the connection in time."""


@register
class MqttSink(EventSink):
    """Publishes over one client connection per broker."""

    schemes: ClassVar[tuple[str, ...]] = ("mqtt", "mqtts")
    binary_mode: ClassVar[bool] = False

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._clients: ConnectionCache[mqtt.Client] = ConnectionCache(_disconnect)

    @classmethod
    def check_target(cls, url: str) -> None:
        """The URL must name a host; its topic may not hold MQTT wildcards."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise BadRequest(f"MQTT target {url!r} needs a host")
        topic = unquote(parts.path)
        if "#" in url or "+" in topic or "#" in topic:
            raise BadRequest(f"MQTT target {url!r}: a topic to publish to has no wildcards")

    def send(self, outgoing: Outgoing) -> Outcome:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        parts = urlsplit(outgoing.target_url)
        topic = unquote(parts.path.lstrip("/")) or DEFAULT_TOPIC
        key = f"{parts.scheme}://{parts.username or ''}@{parts.hostname}:{parts.port}"
        try:
            with self._clients.use(key, lambda: self._connect(outgoing)) as client:
                info = client.publish(topic, outgoing.message.body, qos=1)
                info.wait_for_publish(self.timeout)
                if not info.is_published():
                    raise MqttUnavailable(f"no PUBACK within {self.timeout:g} s (rc {info.rc})")
        except Exception as error:  # paho raises several kinds; each is "not delivered"
            return Outcome(False, error=describe(error, self.timeout))
        return Outcome(True)

    def _connect(self, outgoing: Outgoing) -> mqtt.Client:
        parts = urlsplit(outgoing.target_url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"conveyor-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        auth: dict[str, Any] = outgoing.auth or {}
        if parts.username:
            client.username_pw_set(unquote(parts.username), auth.get("password"))
        if parts.scheme == "mqtts":
            client.tls_set_context(ssl.create_default_context())
        connected = threading.Event()
        client.on_connect = lambda *_args: connected.set()
        client.connect(parts.hostname or "", parts.port or _default_port(parts.scheme))
        client.loop_start()
        if not connected.wait(self.timeout) or not client.is_connected():
            _disconnect(client)
            raise MqttUnavailable(f"the broker did not accept a connection in {self.timeout:g} s")
        return client

    def close(self) -> None:
        """Disconnect from every broker."""
        self._clients.close_all()


def _default_port(scheme: str) -> int:
    return 8883 if scheme == "mqtts" else 1883


def _disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
