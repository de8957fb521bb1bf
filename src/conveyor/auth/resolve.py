"""Turning a request's credentials into a :class:`Principal`, per ``CONVEYOR_AUTH``."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping

from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.auth.tokens import PREFIX, lookup
from conveyor.config import Settings
from conveyor.db.engine import Database
from conveyor.db.models import ApiToken, User
from conveyor.errors import Unauthorized


def _bearer(headers: Mapping[str, str]) -> str | None:
    """A token from ``Authorization: Bearer T`` or from the password of Basic auth.

    Basic auth lets the published Pacifica clients, which know only user and password,
    present a token unchanged.
    """
    value = headers.get("authorization", "")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() == "basic" and credentials.strip():
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Basic credentials are not valid base64") from None
        return decoded.partition(":")[2] or None
    return None


def _trusted(settings: Settings, client_host: str | None) -> bool:
    if client_host is None:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies
    )


def anonymous(settings: Settings, run_job: int | None = None) -> Principal:
    """The principal of every request when auth is ``none``: the default user, as admin."""
    return Principal(settings.default_user, admin=True, authenticated=False, run_job=run_job)


def anonymous_run(settings: Settings, db: Database, headers: Mapping[str, str]) -> Principal:
    """With auth ``none``: the anonymous principal, tied to the consumer run whose token the
    request carries (a run's ingest records its provenance even where no token is needed)."""
    try:
        secret = _bearer(headers)
    except Unauthorized:  # credentials are not looked at with auth off
        return anonymous(settings)
    if secret is None or not secret.startswith(PREFIX):
        return anonymous(settings)
    with db.session() as session:
        token = lookup(session, secret)
        run_job = token.run_job_id if token is not None and token.scope is not None else None
    return anonymous(settings, run_job)


def _token_principal(session: Session, token: ApiToken) -> Principal:
    """Whom a token speaks for; a scoped token never as an admin."""
    if token.scope is not None:
        return Principal(
            token.user_id,
            admin=False,
            authenticated=True,
            scope=token.scope,
            run_job=token.run_job_id,
        )
    user = session.get(User, token.user_id)
    admin = token.admin or bool(user and user.admin)
    return Principal(token.user_id, admin=admin, authenticated=True)


def _scoped_token(db: Database, headers: Mapping[str, str]) -> Principal | None:
    """A consumer run's scoped token, which works behind a proxy too (runs call directly)."""
    secret = _bearer(headers)
    if secret is None or not secret.startswith(PREFIX):
        return None
    with db.session() as session:
        token = lookup(session, secret)
        if token is None or token.scope is None:
            return None
        return _token_principal(session, token)


def authenticate(
    settings: Settings, db: Database, headers: Mapping[str, str], client_host: str | None
) -> Principal:
    """The principal making the request, or :class:`Unauthorized` saying what is missing."""
    if settings.auth == "none":
        return anonymous_run(settings, db, headers)
    if settings.auth == "token":
        secret = _bearer(headers)
        if secret is None:
            raise Unauthorized(
                "this server needs an API token: send 'Authorization: Bearer <token>'"
            )
        with db.session() as session:
            token = lookup(session, secret)
            if token is None:
                raise Unauthorized("the API token is unknown or revoked")
            return _token_principal(session, token)
    scoped = _scoped_token(db, headers)
    if scoped is not None:
        return scoped
    if not _trusted(settings, client_host):
        raise Unauthorized("requests must come through a trusted proxy")
    name = headers.get(settings.proxy_header.lower(), "").strip()
    if not name:
        raise Unauthorized(f"the trusted proxy sent no {settings.proxy_header} header")
    with db.session() as session:
        user = session.get(User, name)
        admin = name in settings.admin_users or bool(user and user.admin)
    return Principal(name, admin=admin, authenticated=True)
