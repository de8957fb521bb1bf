"""API tokens: shown once at creation, stored only as their sha256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from conveyor.db.models import ApiToken, User
from conveyor.db.types import utcnow
from conveyor.db.upsert import insert_missing

PREFIX = "cvy_"


@dataclass(frozen=True)
class IssuedToken:
    """A token as created: the secret is only ever available here."""

    id: int
    user: str
    admin: bool
    secret: str


def digest(secret: str) -> str:
    """The stored form of a token (tokens are random, so a plain hash is enough)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    user: str,
    admin: bool = False,
    label: str = "",
    *,
    scope: str | None = None,
    expires_at: datetime | None = None,
    run_job_id: int | None = None,
) -> IssuedToken:
    """Issue a token for ``user``, registering the user if needed.

    A ``scope`` limits the token to that scope's routes (and never makes it an admin's);
    ``expires_at`` ends it without a revocation; ``run_job_id`` names the consumer run a
    scoped token speaks for (its ingests record that run's provenance).
    """
    admin = admin and scope is None
    if session.get(User, user) is None:
        insert_missing(session, User, id=user, admin=admin)
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user,
        token_hash=digest(secret),
        admin=admin,
        label=label,
        scope=scope,
        expires_at=expires_at,
        run_job_id=run_job_id,
    )
    session.add(row)
    session.flush()
    return IssuedToken(row.id, user, admin, secret)


def revoke_token(session: Session, token_id: int, user: str | None = None) -> bool:
    """Revoke a token (only ``user``'s, when given); False when there is no such active token."""
    owned = () if user is None else (ApiToken.user_id == user,)
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None), *owned)
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def lookup(session: Session, secret: str) -> ApiToken | None:
    """The active token with this secret, if any (not revoked, not expired)."""
    return session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == digest(secret),
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()),
        )
    )


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, newest first (secrets are not stored, so none are shown)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))
