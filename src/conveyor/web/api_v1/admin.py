"""Policy registry (projects, instruments, users) and API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from conveyor.auth import tokens
from conveyor.auth.principal import Principal
from conveyor.auth.scopes import CONSUMER_RUN
from conveyor.config import Settings
from conveyor.db.types import iso_z, utcnow
from conveyor.errors import BadRequest, NotFound
from conveyor.ingest import policy
from conveyor.web.deps import AdminDep, PrincipalDep, RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["policy and tokens"])
Identifier = Field(min_length=1, max_length=255, pattern=r"^[^\s/]+$")


class ProjectIn(BaseModel):
    """A project to register."""

    id: str = Identifier
    title: str = ""


class InstrumentIn(BaseModel):
    """An instrument to register, with the projects it delivers to."""

    id: str = Identifier
    name: str = ""
    projects: list[str] = Field(default_factory=list)


class UserIn(BaseModel):
    """A user to register, with the projects they belong to."""

    id: str = Identifier
    admin: bool = False
    projects: list[str] = Field(default_factory=list)


class TokenIn(BaseModel):
    """A token to issue."""

    user: str = Identifier
    admin: bool = False
    label: str = Field("", max_length=255)


class RunTokenIn(BaseModel):
    """A consumer-run token for the caller itself."""

    model_config = ConfigDict(extra="forbid")  # names no user: it is always the caller's
    expires_in_seconds: float | None = Field(
        None, gt=0, description="its life (default and most: CONVEYOR_RUN_TOKEN_MAX_SECONDS)"
    )
    label: str = Field("", max_length=255)


def _policy(action: Any) -> Any:
    try:
        return action()
    except policy.PolicyError as exc:
        raise BadRequest(str(exc)) from None


@router.post("/projects", status_code=201, summary="Register a project (admin)")
def add_project(body: ProjectIn, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Register a project."""
    with runtime.db.session() as session:
        policy.add_project(session, body.id, body.title)
        return policy.describe_project(session, body.id) or {}


@router.get("/projects", summary="List projects")
def list_projects(runtime: RuntimeDep, _: PrincipalDep) -> dict[str, Any]:
    """Every project id."""
    with runtime.db.session() as session:
        return {"projects": policy.list_projects(session)}


@router.get("/projects/{project_id}", summary="A project with members and instruments")
def get_project(project_id: str, runtime: RuntimeDep, _: PrincipalDep) -> dict[str, Any]:
    """A project with its members and instruments."""
    with runtime.db.session() as session:
        found = policy.describe_project(session, project_id)
    if found is None:
        raise NotFound(f"project {project_id!r} does not exist")
    return found


@router.post("/instruments", status_code=201, summary="Register an instrument (admin)")
def add_instrument(body: InstrumentIn, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Register an instrument for projects."""
    with runtime.db.session() as session:
        _policy(lambda: policy.add_instrument(session, body.id, body.name, body.projects))
    return {"id": body.id, "name": body.name, "projects": body.projects}


@router.post("/users", status_code=201, summary="Register a user (admin)")
def add_user(body: UserIn, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Register a user as a member of projects."""
    with runtime.db.session() as session:
        _policy(lambda: policy.add_user(session, body.id, body.admin, body.projects))
    return {"id": body.id, "admin": body.admin, "projects": body.projects}


@router.post("/tokens", status_code=201, summary="Issue an API token (admin)")
def create_token(body: TokenIn, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Issue a token; its secret is in this answer and nowhere else, ever."""
    with runtime.db.session() as session:
        issued = tokens.create_token(session, body.user, body.admin, body.label)
    return {"id": issued.id, "user": issued.user, "admin": issued.admin, "token": issued.secret}


@router.get("/tokens", summary="List API tokens (admin)")
def list_tokens(runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Tokens without their secrets."""
    with runtime.db.session() as session:
        rows = tokens.list_tokens(session)
        return {
            "tokens": [
                {
                    "id": row.id,
                    "user": row.user_id,
                    "admin": row.admin,
                    "label": row.label,
                    "created_at": row.created_at.isoformat(),
                    "revoked": row.revoked_at is not None,
                }
                for row in rows
            ]
        }


def _run_token_lifetime(settings: Settings, asked: float | None) -> float:
    """The life of a self-issued run token: what was asked, within the server's maximum."""
    most = settings.run_token_max_seconds
    if asked is None:
        return most
    if asked > most:
        raise BadRequest(
            f"expires_in_seconds may be at most {most:g} on this server "
            f"(CONVEYOR_RUN_TOKEN_MAX_SECONDS), not {asked:g}"
        )
    return asked


@router.post("/tokens/consumer-run", status_code=201, summary="Issue yourself a consumer-run token")
def create_run_token(
    body: RunTokenIn, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """A token that may only publish and read, as the caller (never as an admin), ending by
    itself; its secret is in this answer and nowhere else, ever."""
    lifetime = _run_token_lifetime(runtime.settings, body.expires_in_seconds)
    expires_at = utcnow() + timedelta(seconds=lifetime)
    with runtime.db.session() as session:
        issued = tokens.create_token(
            session, principal.user, label=body.label, scope=CONSUMER_RUN, expires_at=expires_at
        )
    return {
        "id": issued.id,
        "user": issued.user,
        "admin": issued.admin,
        "scope": CONSUMER_RUN,
        "expires_at": iso_z(expires_at),
        "token": issued.secret,
    }


def _revocable_by(principal: Principal) -> str | None:
    """Whose tokens the caller may revoke: an admin anyone's (None), a user only its own."""
    return None if principal.admin else principal.user


@router.delete(
    "/tokens/{token_id}", status_code=204, summary="Revoke an API token (yours; any: admin)"
)
def revoke_token(token_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> None:
    """Revoke a token at once; another user's is not found unless the caller is an admin."""
    with runtime.db.session() as session:
        if not tokens.revoke_token(session, token_id, _revocable_by(principal)):
            raise NotFound(f"token {token_id} does not exist or is already revoked")
