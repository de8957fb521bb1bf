"""Subscriptions: a JSONPath filter over events and a target (webhook, AMQP, MQTT, NATS).

Credentials and the signing secret are sealed before they are stored and never shown
again; the signing secret is returned once, when it is made (or rotated), for the receiver
to verify signatures with. A password written in a target URL is moved into the sealed
credentials. Filters and targets are checked when saved, so a bad one is a 400, not a
delivery that can never work.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.db.models import Delivery, Subscription
from conveyor.db.types import iso_z, utcnow
from conveyor.errors import BadRequest, Conflict, NotFound
from conveyor.events.filters import Dialect, FilterError, compile_filter
from conveyor.events.shapes import ContentMode, Shape
from conveyor.events.sinks import sink_class
from conveyor.netpolicy import TargetPolicy
from conveyor.secrets import Sealer

PENDING = "pending"
CANCELLED = "cancelled"
# CloudEvents extension attribute names: lower-case letters and digits.
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
MAX_EXTENSIONS = 20
# What an HTTP header value may hold and every client sends the same way.
HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")


class Credentials(BaseModel):
    """How the target authenticates us: HTTP Basic, a bearer token or any one header."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["basic", "bearer", "header"]
    username: str | None = Field(None, max_length=255)
    password: str | None = Field(None, max_length=4096)
    token: str | None = Field(None, max_length=8192)
    name: str | None = Field(None, max_length=255, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    value: str | None = Field(None, max_length=8192)

    @model_validator(mode="after")
    def _complete(self) -> Credentials:
        needed = {"basic": ("username", "password"), "bearer": ("token",), "header": ("name",)}
        missing = [field for field in needed[self.type] if getattr(self, field) is None]
        if missing:
            raise ValueError(f"{self.type} credentials need {' and '.join(missing)}")
        for field in ("token", "value"):
            text = getattr(self, field)
            if text is not None and not HEADER_VALUE.match(text):
                raise ValueError(f"{field} must be printable ASCII (it is sent in a header)")
        if self.username is not None and ":" in self.username:
            raise ValueError("a Basic username cannot hold ':'")
        return self

    def stored(self) -> dict[str, str]:
        """The fields this type uses, for sealing."""
        fields = {"basic": ("username", "password"), "bearer": ("token",)}
        names = fields.get(self.type, ("name", "value"))
        return {"type": self.type, **{name: getattr(self, name) or "" for name in names}}


class SubscriptionSpec(BaseModel):
    """What a user asks for: which events (filter, types) go where (target), in which form."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    target: str = Field(min_length=1, max_length=2048, description="webhook or broker URL")
    filter: str = Field("$", max_length=4096, description="JSONPath; '$' matches every event")
    dialect: Dialect = "rfc9535"
    shape: Shape = "cloudevents"
    content_mode: ContentMode = "structured"
    auth: Credentials | None = None
    secret: str | None = Field(
        None, description="Standard Webhooks secret (whsec_…); made when not given"
    )
    extensions: dict[str, str | int | bool] = Field(default_factory=dict)
    types: list[str] = Field(default_factory=list, max_length=100)
    paused: bool = False


class SubscriptionPatch(BaseModel):
    """A partial update; fields left out keep their value, ``auth: null`` removes it."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=255)
    target: str | None = Field(None, min_length=1, max_length=2048)
    filter: str | None = Field(None, max_length=4096)
    dialect: Dialect | None = None
    shape: Shape | None = None
    content_mode: ContentMode | None = None
    auth: Credentials | None = None
    extensions: dict[str, str | int | bool] | None = None
    types: list[str] | None = Field(None, max_length=100)
    paused: bool | None = None


def new_secret() -> str:
    """A fresh Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> str:
    """``secret`` when it is a usable signing secret (``whsec_`` and base64 of 24+ bytes)."""
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise BadRequest("secret must be 'whsec_' followed by base64") from None
    if len(raw) < 24:
        raise BadRequest("secret must hold at least 24 random bytes")
    return secret


def create(
    session: Session,
    principal: Principal,
    spec: SubscriptionSpec,
    sealer: Sealer,
    policy: TargetPolicy,
    *,
    consumer: str | None = None,
) -> tuple[Subscription, str]:
    """Validate and store a subscription; the row and its (plain) signing secret.

    A ``consumer``'s subscription targets that consumer inside Conveyor, whatever
    ``spec.target`` says.
    """
    if consumer is not None:
        target, auth = consumer_target(consumer), None
    else:
        target, auth = checked_target(spec.target, spec.auth, policy)
    _check_form(spec.filter, spec.dialect, spec.shape, spec.content_mode, target, spec.extensions)
    secret = check_secret(spec.secret) if spec.secret else new_secret()
    row = Subscription(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=principal.user,
        filter=spec.filter.strip(),
        dialect=spec.dialect,
        shape=spec.shape,
        target_url=target,
        content_mode=spec.content_mode,
        secret_sealed=sealer.seal(secret),
        auth_sealed=sealer.seal(json.dumps(auth)) if auth else None,
        extensions=dict(spec.extensions),
        types=list(spec.types),
        paused=spec.paused,
        consumer=consumer,
        failures=0,
        circuit_trips=0,
        last_error="",
    )
    session.add(row)
    session.flush()
    return row, secret


def update_subscription(
    session: Session,
    row: Subscription,
    patch: SubscriptionPatch,
    sealer: Sealer,
    policy: TargetPolicy,
) -> Subscription:
    """Apply ``patch``; a new target or an unpause closes the circuit breaker."""
    refuse_if_managed(row)
    given = patch.model_fields_set
    target = row.target_url
    auth = _opened_auth(row, sealer)
    if "target" in given or "auth" in given:
        credentials = patch.auth if "auth" in given else _credentials(auth)
        target, auth = checked_target(patch.target or row.target_url, credentials, policy)
    filter_text = patch.filter if patch.filter is not None else row.filter
    dialect = patch.dialect or row.dialect
    shape = patch.shape or row.shape
    mode = patch.content_mode or row.content_mode
    extensions = patch.extensions if patch.extensions is not None else row.extensions
    _check_form(filter_text, dialect, shape, mode, target, extensions)
    if target != row.target_url or (patch.paused is False and row.paused):
        row.failures, row.circuit_open_until, row.circuit_trips = 0, None, 0
    row.target_url, row.filter, row.dialect = target, filter_text.strip(), dialect
    row.shape, row.content_mode, row.extensions = shape, mode, dict(extensions)
    row.auth_sealed = sealer.seal(json.dumps(auth)) if auth else None
    if patch.name is not None:
        row.name = patch.name
    if patch.types is not None:
        row.types = list(patch.types)
    if patch.paused is not None:
        row.paused = patch.paused
    row.updated_at = utcnow()
    return row


def rotate_secret(row: Subscription, sealer: Sealer) -> str:
    """Give the subscription a new signing secret; the plain secret, shown this once."""
    secret = new_secret()
    row.secret_sealed = sealer.seal(secret)
    row.updated_at = utcnow()
    return secret


def consumer_target(name: str) -> str:
    """The internal target URL of consumer ``name``."""
    return f"consumer://{name}"


def refuse_if_managed(row: Subscription) -> None:
    """Raise :class:`Conflict` when the subscription belongs to a consumer (change that)."""
    if row.consumer is not None:
        raise Conflict(
            f"subscription {row.id} feeds consumer {row.consumer!r}; "
            "change or remove the consumer instead"
        )


def delete(session: Session, row: Subscription) -> None:
    """Remove the subscription; its deliveries not yet made are cancelled."""
    now = utcnow()
    row.deleted_at = now
    row.updated_at = now
    session.execute(
        update(Delivery)
        .where(Delivery.subscription_id == row.id, Delivery.state == PENDING)
        .values(state=CANCELLED, finished_at=now, last_error="the subscription was deleted")
        .execution_options(synchronize_session=False)
    )


def visible(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    """The live subscription, if the principal owns it or is an admin; NotFound otherwise."""
    row = session.get(Subscription, subscription_id)
    if row is None or row.deleted_at is not None or not principal.may_see(row.owner):
        raise NotFound(f"no subscription {subscription_id}")
    return row


def listing(
    session: Session, principal: Principal, *, everyone: bool = False
) -> list[Subscription]:
    """The caller's live subscriptions (an admin's ``everyone`` lists all), oldest first."""
    query = select(Subscription).where(Subscription.deleted_at.is_(None))
    if not (everyone and principal.admin):
        query = query.where(Subscription.owner == principal.user)
    return list(session.scalars(query.order_by(Subscription.created_at, Subscription.id)))


def view(row: Subscription, sealer: Sealer, secret: str | None = None) -> dict[str, Any]:
    """The subscription as the API shows it: no password, token or header value, ever."""
    auth = _opened_auth(row, sealer)
    shown: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "target": row.target_url,
        "filter": row.filter,
        "dialect": row.dialect,
        "shape": row.shape,
        "content_mode": row.content_mode,
        "auth": _auth_summary(auth),
        "extensions": row.extensions,
        "types": row.types,
        "paused": row.paused,
        "consumer": row.consumer,
        "circuit": circuit_view(row),
        "last_error": row.last_error or None,
        "created_at": iso_z(row.created_at),
        "updated_at": iso_z(row.updated_at),
    }
    if secret is not None:
        shown["secret"] = secret
    return shown


def circuit_view(row: Subscription, now: datetime | None = None) -> dict[str, Any]:
    """The breaker: ``closed``, ``open`` (until a time) or ``half-open`` (one probe allowed)."""
    moment = now or utcnow()
    if row.circuit_open_until is None:
        state = "closed"
    elif row.circuit_open_until > moment:
        state = "open"
    else:
        state = "half-open"
    return {
        "state": state,
        "failures": row.failures,
        "open_until": iso_z(row.circuit_open_until),
        "trips": row.circuit_trips,
    }


def opened_secrets(
    secret_sealed: str, auth_sealed: str | None, sealer: Sealer
) -> tuple[str, dict[str, Any] | None]:
    """The plain signing secret and credentials, for a send."""
    return sealer.open(secret_sealed), _open_auth(auth_sealed, sealer)


def checked_target(
    url: str, credentials: Credentials | None, policy: TargetPolicy
) -> tuple[str, dict[str, str] | None]:
    """The target URL without any password, and the credentials to seal (URL ones moved in)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    sink = sink_class(scheme)
    sink.check_target(url)
    policy.check_url(url, "target", schemes=(scheme,))
    auth = credentials.stored() if credentials else None
    if parts.password is not None:
        if auth is not None:
            raise BadRequest("give the password in the target URL or in auth, not both")
        auth = {
            "type": "basic",
            "username": unquote(parts.username or ""),
            "password": unquote(parts.password),
        }
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}@{netloc}" if user else netloc)
    if scheme not in ("http", "https") and auth is not None and auth["type"] != "basic":
        raise BadRequest(f"a {scheme} target takes a user and password only")
    return parts.geturl(), auth


def _check_form(
    filter_text: str,
    dialect: str,
    shape: str,
    mode: str,
    target: str,
    extensions: dict[str, Any],
) -> None:
    try:
        compile_filter(dialect, filter_text)
    except FilterError as error:
        raise BadRequest(str(error)) from None
    if mode == "binary":
        if shape == "pacifica":
            raise BadRequest(
                "the pacifica shape is sent as a JSON body; use content_mode structured"
            )
        scheme = urlsplit(target).scheme.lower()
        if not sink_class(scheme).binary_mode:
            raise BadRequest(f"{scheme} carries no headers; use content_mode structured")
    if len(extensions) > MAX_EXTENSIONS:
        raise BadRequest(f"at most {MAX_EXTENSIONS} extensions")
    if shape == "cloudevents":
        for name in extensions:
            if not EXTENSION_NAME.match(name):
                raise BadRequest(
                    f"extension {name!r}: CloudEvents names are 1-20 lower-case letters or digits"
                )


def _opened_auth(row: Subscription, sealer: Sealer) -> dict[str, Any] | None:
    return _open_auth(row.auth_sealed, sealer)


def _open_auth(auth_sealed: str | None, sealer: Sealer) -> dict[str, Any] | None:
    if not auth_sealed:
        return None
    opened: dict[str, Any] = json.loads(sealer.open(auth_sealed))
    return opened


def _credentials(auth: dict[str, Any] | None) -> Credentials | None:
    return Credentials.model_validate(auth) if auth else None


def _auth_summary(auth: dict[str, Any] | None) -> dict[str, Any] | None:
    """What may be shown of credentials: their type, and the user or header name."""
    if auth is None:
        return None
    summary = {"type": auth["type"]}
    if auth["type"] == "basic":
        summary["username"] = auth.get("username", "")
    if auth["type"] == "header":
        summary["name"] = auth.get("name", "")
    return summary
