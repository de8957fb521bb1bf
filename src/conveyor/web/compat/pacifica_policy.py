"""``/pacifica/policy``: the parts of the Pacifica policy service that the published clients call.

``pacifica-cli upload`` resolves the fields of its ``uploader.json`` through ``POST /uploader``
(pacifica-uploader's ``PolicyQuery``): a JSON query ``{"user", "columns", "from", "where"}``
answered with a list of rows holding the requested columns. ``POST /ingest`` is the
policy's validation of an ingest metadata list (Pacifica ingest calls it; pacifica-cli 0.5.2
never does): it answers as Conveyor's own ingest would decide. Both answer from Conveyor's
policy registry, with Pacifica's rules: a user sees the projects they are a member of, the
instruments of those projects and their fellow members; admins see all.

Pacifica's tables map onto ours: ``users._id`` and ``users.network_id`` are our user id;
``projects`` (also ``proposals``, the older name) ``_id`` and ``title``; ``instruments``
``_id``, ``name``, ``display_name`` (the name, or the id when there is none) and
``name_short`` (the id). Names Conveyor does not store (``first_name``, ``last_name``) are
empty strings, so display formats such as ``{_id} - {first_name} {last_name}`` still work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.db.models import Instrument, Project, User
from conveyor.errors import BadRequest, ConveyorError, Forbidden
from conveyor.ingest import policy_queries as queries
from conveyor.ingest.metadata import MetadataError, parse_metadata
from conveyor.ingest.policy import PolicyError, check_strict
from conveyor.ingest.policy_queries import Viewer
from conveyor.runtime import Runtime
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.uploads import read_limited

router = APIRouter(prefix="/pacifica/policy", tags=["pacifica policy"])

#: The user value pacifica-uploader sends while it looks up who ``--logon`` names.
NOBODY = "-1"

Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=255)]


def _id_value(value: Any, what: str) -> int | str:
    """An id as pacifica-uploader sends one: a number or a short text (never true/false)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= 255:
        return value
    raise ValueError(f"{what} must be a number or a text of 1 to 255 characters, not {value!r}")


Row = User | Project | Instrument


class PreconditionFailed(ConveyorError):
    """The metadata breaks policy (Pacifica's policy answers 412)."""

    status = 412
    title = "Precondition Failed"


def _when(stamp: Any) -> str:
    return stamp.isoformat() if stamp is not None else ""


@dataclass(frozen=True)
class Table:
    """A Pacifica table as Conveyor answers for it."""

    columns: dict[str, Callable[[Any], Any]]
    # where key -> the condition it sets; keys that share a condition are aliases
    where: dict[str, str]


USERS = Table(
    columns={
        "_id": lambda row: row.id,
        "network_id": lambda row: row.id,
        "first_name": lambda row: "",
        "last_name": lambda row: "",
        "created": lambda row: _when(row.created_at),
    },
    where={"_id": "user", "network_id": "user", "project_id": "project", "proposal_id": "project"},
)
PROJECTS = Table(
    columns={
        "_id": lambda row: row.id,
        "title": lambda row: row.title,
        "created": lambda row: _when(row.created_at),
    },
    where={"_id": "project", "instrument_id": "instrument"},
)
INSTRUMENTS = Table(
    columns={
        "_id": lambda row: row.id,
        "name": lambda row: row.name,
        "name_short": lambda row: row.id,
        "display_name": lambda row: row.name or row.id,
        "created": lambda row: _when(row.created_at),
    },
    where={"_id": "instrument", "project_id": "project", "proposal_id": "project"},
)
TABLES = {"users": USERS, "projects": PROJECTS, "proposals": PROJECTS, "instruments": INSTRUMENTS}


class UploaderQuery(BaseModel):
    """A pacifica-uploader ``PolicyQuery``: whose view, which columns, from what, where."""

    model_config = ConfigDict(extra="forbid")

    user: int | str = Field(
        description="The asking user's id (-1 while the client looks a user up)."
    )
    columns: list[Name] = Field(min_length=1, max_length=32)
    table: Literal["users", "projects", "proposals", "instruments"] = Field(alias="from")
    where: dict[str, int | str] = Field(default_factory=dict)

    @field_validator("user", mode="before")
    @classmethod
    def _user(cls, value: Any) -> int | str:
        return _id_value(value, "user")

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: _id_value(item, f"where[{key!r}]") for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _known_names(self) -> UploaderQuery:
        table = TABLES[self.table]
        unknown = [column for column in self.columns if column not in table.columns]
        if unknown:
            raise ValueError(
                f"{self.table} has no column {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(table.columns)}"
            )
        for key in self.where:
            if key not in table.where:
                raise ValueError(
                    f"{self.table} cannot be selected by {key!r}; known: {', '.join(table.where)}"
                )
        conditions = [table.where[key] for key in self.where]
        if len(conditions) != len(set(conditions)):
            raise ValueError(f"where names the same {self.table} condition twice: {self.where}")
        return self

    def condition(self, name: str) -> str | None:
        """The value of a where condition (by its meaning, whichever alias set it)."""
        table = TABLES[self.table]
        for key, value in self.where.items():
            if table.where[key] == name:
                return str(value)
        return None


@router.get("/", summary="Service status")
def root() -> dict[str, str]:
    """The published service's greeting."""
    return {"message": "Pacifica Policy Up and Running"}


@router.post("/uploader", summary="Resolve uploader metadata fields (pacifica-uploader)")
def uploader(
    query: UploaderQuery, runtime: RuntimeDep, principal: PrincipalDep
) -> list[dict[str, Any]]:
    """Rows of ``from`` the asking user may see, matching ``where``, with ``columns`` only."""
    table = TABLES[query.table]
    with runtime.db.session() as session:
        viewer = _viewer(session, principal, query.user)
        rows = _select(session, viewer, query)
        return [{column: table.columns[column](row) for column in query.columns} for row in rows]


def _viewer(session: Session, principal: Principal, user: int | str) -> Viewer:
    """Whose view answers: the authenticated user's, or the one the query claims."""
    asked = None if str(user) == NOBODY else str(user)
    if principal.authenticated:
        if asked is None or asked == principal.user:
            return Viewer(principal.user, admin=principal.admin)
        if not principal.admin:
            raise Forbidden(
                f"you are {principal.user!r}: policy queries may ask as yourself, not as {asked!r}"
            )
        return Viewer(asked, admin=queries.is_admin(session, asked))
    # Authentication is off: identities are claims, as they are in Pacifica.
    if asked is None:
        return Viewer(None, any_user=True)
    return Viewer(asked, admin=queries.is_admin(session, asked))


def _select(session: Session, viewer: Viewer, query: UploaderQuery) -> Sequence[Row]:
    if query.table == "users":
        return queries.find_users(
            session, viewer, user_id=query.condition("user"), project=query.condition("project")
        )
    if query.table == "instruments":
        return queries.find_instruments(
            session,
            viewer,
            instrument_id=query.condition("instrument"),
            project=query.condition("project"),
        )
    return queries.find_projects(
        session,
        viewer,
        project_id=query.condition("project"),
        instrument=query.condition("instrument"),
    )


@router.post("/ingest", summary="Validate ingest metadata against policy")
async def ingest(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, str]:
    """``{"status": "success"}`` when Conveyor's ingest would accept this metadata list.

    The submitter is the authenticated user when authentication is on (as at ingest);
    a policy refusal answers 412 saying which rule is broken; malformed metadata 400.
    """
    document = await read_limited(request, runtime.settings.max_metadata_bytes)
    return await to_thread.run_sync(_validate_ingest, runtime, principal, document)


def _validate_ingest(runtime: Runtime, principal: Principal, document: bytes) -> dict[str, str]:
    try:
        metadata = parse_metadata(document)
    except MetadataError as exc:
        raise BadRequest(str(exc)) from None
    # As at ingest: the authenticated user, else whom the metadata names.
    submitter = principal.user if principal.authenticated else metadata.submitter or principal.user
    if not metadata.project:
        raise PreconditionFailed("metadata names no Transactions.project")
    if runtime.settings.policy == "strict":
        with runtime.db.session() as session:
            try:
                check_strict(session, submitter, metadata.project, metadata.instrument)
            except PolicyError as exc:
                raise PreconditionFailed(str(exc)) from None
    return {"status": "success"}
