"""Pacifica Notifications at ``/pacifica/notifications/``: ``/receive`` and ``/eventmatch``.

An eventmatch is a Conveyor subscription in the jsonpath2 dialect that gets the Pacifica
0.1 event shape. Deliberate differences from the published service (docs/compatibility.md):
a failing target is retried and never disabled, passwords and tokens are never returned, a
bad JSONPath or id is a 400 (not a 500), ``user`` cannot be changed by a PUT, and ``GET /``
answers a greeting as the other Pacifica services do (published: 405).

Identity is the principal Conveyor authenticated; with ``CONVEYOR_AUTH=none`` (loopback
only) the published ``Http-Remote-User`` header names the user, as the published service did.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from conveyor.auth.principal import Principal
from conveyor.db.models import OutboxEvent, Subscription
from conveyor.db.types import iso_z
from conveyor.errors import BadRequest, Forbidden, NotFound
from conveyor.events import subscriptions as subs
from conveyor.events.outbox import Event, record_event
from conveyor.ingest.events import metadata_value
from conveyor.runtime import Runtime
from conveyor.web.deps import RuntimeDep, get_principal

router = APIRouter(prefix="/pacifica/notifications", tags=["pacifica notifications"])
USER_HEADER = "http-remote-user"
MAX_EVENT_BYTES = 64 * 1024 * 1024
# CloudEvents 1.0 context attributes, and the 0.1 names the published producers send.
CONTEXT_ATTRIBUTES = frozenset(
    {
        "id",
        "source",
        "specversion",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
        "data",
        "data_base64",
        "cloudEventsVersion",
        "eventType",
        "eventID",
        "eventTime",
        "eventTypeVersion",
        "schemaURL",
        "contentType",
        "extensions",
    }
)


async def pacifica_principal(request: Request) -> Principal:
    """The caller; without authentication, the user the published header names."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    named = request.headers.get(USER_HEADER, "").strip()
    if settings.auth == "none" and named:
        admin = named in settings.admin_users or named == settings.default_user
        return Principal(named, admin=admin, authenticated=False)
    return await get_principal(request)


CallerDep = Annotated[Principal, Depends(pacifica_principal)]


class BasicPart(BaseModel):
    """The published basic credentials."""

    username: str = Field(max_length=255)
    password: str = Field(max_length=4096)


class HeaderPart(BaseModel):
    """The published header credentials: ``Authorization: <type> <credentials>``."""

    type: str = Field(max_length=64)
    credentials: str = Field(max_length=8192)


class PacificaAuth(BaseModel):
    """``{}``, ``{"type": "basic", "basic": {…}}`` or ``{"type": "header", "header": {…}}``."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = None
    basic: BasicPart | None = None
    header: HeaderPart | None = None

    def credentials(self) -> subs.Credentials | None:
        """The same credentials in Conveyor's form."""
        if self.type is None:
            return None
        if self.type == "basic" and self.basic is not None:
            return subs.Credentials(
                type="basic", username=self.basic.username, password=self.basic.password
            )
        if self.type == "header" and self.header is not None:
            value = f"{self.header.type} {self.header.credentials}"
            return subs.Credentials(type="header", name="Authorization", value=value)
        raise BadRequest("auth must be {}, basic with 'basic', or header with 'header'")


class EventMatchBody(BaseModel):
    """An eventmatch as posted; on PUT every field is optional."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(None, min_length=1, max_length=255)
    jsonpath: str | None = Field(None, max_length=4096)
    target_url: str | None = Field(None, max_length=2048)
    auth: PacificaAuth | None = None
    extensions: dict[str, Any] | None = None
    user: str | None = None
    disabled: str | None = None


@router.get("/", summary="Service status")
def root() -> dict[str, str]:
    """A greeting in the sister services' form, so health checks can probe the mount."""
    return {"message": "Pacifica Notifications Up and Running"}


@router.post("/receive", summary="Take an event from a producer")
async def receive(request: Request, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """Records the event in the outbox; the body of the answer is its id, as bare text."""
    if not caller.admin:
        raise Forbidden("only admins may send events to /receive")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_EVENT_BYTES:
            raise BadRequest(f"an event is limited to {MAX_EVENT_BYTES} bytes")
    try:
        document = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"the event is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest("an event is a JSON object")
    event_id = await run_in_threadpool(_record_received, runtime, caller, document)
    return PlainTextResponse(event_id)


def _record_received(runtime: Runtime, caller: Principal, document: dict[str, Any]) -> str:
    """Store a received 0.1 or 1.0 event once per id; the id it is stored under."""
    event_type = document.get("eventType") or document.get("type")
    source = document.get("source")
    if not isinstance(event_type, str) or not isinstance(source, str):
        raise BadRequest("an event needs a type (eventType) and a source")
    given = document.get("eventID") or document.get("id")
    event_id = str(given) if given else str(uuid.uuid4())
    if len(event_id) > 64:
        raise BadRequest("an event id is limited to 64 characters")
    event = Event(
        id=event_id,
        type=event_type,
        source=source,
        subject=document.get("subject"),
        data=document.get("data"),
        owner=caller.user,
        project=_project_of(document.get("data")),
        extensions=_extensions_of(document),
    )
    sent_at = _time_of(document.get("eventTime") or document.get("time"))
    if sent_at is not None:
        event.time = sent_at
    try:
        with runtime.db.session() as session:
            if session.get(OutboxEvent, event_id) is None:
                record_event(session, event)
    except IntegrityError:
        pass  # the same event, stored by a request that was a moment faster
    return event_id


def _extensions_of(document: dict[str, Any]) -> dict[str, Any]:
    """Extension attributes: 0.1 keeps them in ``extensions``, 1.0 beside the others."""
    if isinstance(document.get("extensions"), dict):
        return dict(document["extensions"])
    return {
        name: value
        for name, value in document.items()
        if name not in CONTEXT_ATTRIBUTES and isinstance(value, str | int | bool)
    }


def _time_of(value: Any) -> datetime | None:
    """When the producer says the event happened (no zone: UTC), if it says so readably."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _project_of(data: Any) -> str | None:
    """The project an ingest event's metadata names, so its members may read the event.

    Conveyor and the current metadata service name it ``Transactions.project``; the published
    ``events.json`` example and older producers use ``Transactions.proposal``.
    """
    project = metadata_value(data, "Transactions.project")
    if project is None:
        project = metadata_value(data, "Transactions.proposal")
    return str(project) if project is not None else None


@router.post("/eventmatch", summary="Subscribe (published form)")
def create_eventmatch(
    body: EventMatchBody, runtime: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    """The eventmatch as the published service answers it (without any password)."""
    if not body.name or body.jsonpath is None or not body.target_url:
        raise BadRequest("an eventmatch needs name, jsonpath and target_url")
    spec = subs.SubscriptionSpec(
        name=body.name,
        target=body.target_url,
        filter=body.jsonpath,
        dialect="jsonpath2",
        shape="pacifica",
        auth=body.auth.credentials() if body.auth else None,
        extensions=body.extensions or {},
    )
    with runtime.db.session() as session:
        row, _secret = subs.create(session, caller, spec, runtime.sealer, runtime.target_policy)
        return _view(row, runtime)


@router.get("/eventmatch", summary="List the caller's eventmatches")
def list_eventmatches(runtime: RuntimeDep, caller: CallerDep) -> list[dict[str, Any]]:
    """As published, an empty list is a 403."""
    with runtime.db.session() as session:
        rows = subs.listing(session, caller)
        if not rows:
            raise Forbidden(f"{caller.user} has no eventmatches")
        return [_view(row, runtime) for row in rows]


@router.get("/eventmatch/{match_id}", summary="Show an eventmatch")
def get_eventmatch(match_id: str, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Another user's, a deleted or an unknown eventmatch is a 403, as published."""
    with runtime.db.session() as session:
        return _view(_owned(session, caller, match_id), runtime)


@router.put("/eventmatch/{match_id}", summary="Change an eventmatch")
def put_eventmatch(
    match_id: str, body: EventMatchBody, runtime: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    """Fields left out keep their value; ``"disabled": null`` resumes a paused one."""
    given = body.model_fields_set
    with runtime.db.session() as session:
        row = _owned(session, caller, match_id)
        if "user" in given and body.user != row.owner:
            raise Forbidden("an eventmatch's user cannot be changed")
        patch: dict[str, Any] = {}
        if body.name is not None:
            patch["name"] = body.name
        if body.jsonpath is not None:
            patch["filter"] = body.jsonpath
        if body.target_url is not None:
            patch["target"] = body.target_url
        if "auth" in given:
            patch["auth"] = body.auth.credentials() if body.auth else None
        if body.extensions is not None:
            patch["extensions"] = body.extensions
        if "disabled" in given:
            patch["paused"] = body.disabled is not None
        subs.update_subscription(
            session,
            row,
            subs.SubscriptionPatch(**patch),
            runtime.sealer,
            runtime.target_policy,
        )
        return _view(row, runtime)


@router.delete("/eventmatch/{match_id}", summary="Delete an eventmatch")
def delete_eventmatch(match_id: str, runtime: RuntimeDep, caller: CallerDep) -> Response:
    """200 with an empty body, as published."""
    with runtime.db.session() as session:
        subs.delete(session, _owned(session, caller, match_id))
    return Response(status_code=200)


def _owned(session: Any, caller: Principal, match_id: str) -> Subscription:
    try:
        uuid.UUID(match_id)
    except ValueError:
        raise BadRequest(f"{match_id!r} is not an eventmatch uuid") from None
    try:
        return subs.visible(session, caller, match_id)
    except NotFound:
        raise Forbidden(f"eventmatch {match_id} is not yours or does not exist") from None


def _view(row: Subscription, runtime: Runtime) -> dict[str, Any]:
    """The published object; credentials show their type and user, never a secret."""
    shown = subs.view(row, runtime.sealer)
    auth = shown["auth"]
    published_auth: dict[str, Any] = {}
    if auth and auth["type"] == "basic":
        published_auth = {"type": "basic", "basic": {"username": auth["username"]}}
    elif auth:
        published_auth = {"type": "header", "header": {"type": auth.get("name", "")}}
    return {
        "uuid": row.id,
        "name": row.name,
        "jsonpath": row.filter,
        "user": row.owner,
        "target_url": row.target_url,
        "version": "v0.1",
        "extensions": row.extensions,
        "auth": published_auth,
        "disabled": iso_z(row.updated_at) if row.paused else None,
        "error": row.last_error or None,
        "created": iso_z(row.created_at),
        "updated": iso_z(row.updated_at),
        "deleted": iso_z(row.deleted_at),
    }
