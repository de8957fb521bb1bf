"""Installed consumers: adding one (a setup job makes it ready), listing, removing.

The package is kept in the archive under its sha256, so any worker can install it; the
consumer's subscription is made by the setup job once its venv is built, and removed with
it. A consumer is named by ``--name``, or by its package's top folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.consumers.package import ConsumerPackage, PackageError, read_package
from conveyor.consumers.workspace import MIN_MEMORY_BYTES
from conveyor.db.models import Consumer, Subscription
from conveyor.db.types import iso_z, utcnow
from conveyor.errors import BadRequest, NotFound
from conveyor.events import subscriptions
from conveyor.events.filters import FilterError, compile_filter
from conveyor.jobs import service as jobs
from conveyor.runtime import Runtime

KIND_SETUP = "consumer.setup"
KIND_RUN = "consumer.run"
INSTALLING, READY, FAILED = "installing", "ready", "failed"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Without a jsonpath2.txt a consumer runs on every new transaction.
DEFAULT_FILTER = '$[?(@["eventType"] = "org.pacifica.metadata.ingest")]'
READ_CHUNK = 1024 * 1024


class ConsumerOptions(BaseModel):
    """How a consumer is installed: its name and limits (defaults from the settings)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100)
    allow_self: bool = Field(False, description="may its own outputs trigger it again")
    max_depth: int | None = Field(None, ge=1, le=100)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    memory_bytes: int | None = Field(None, ge=MIN_MEMORY_BYTES)


def add(
    runtime: Runtime, principal: Principal, package_path: Path, options: ConsumerOptions
) -> tuple[dict[str, Any], int]:
    """Check and store the package, record the consumer, queue its setup job.

    A ready consumer of that name keeps running its version until the new one is set up
    (and keeps it when the setup fails); its limits change at once.
    """
    try:
        package = read_package(package_path)
    except PackageError as error:
        raise BadRequest(str(error)) from None
    filter_text = package.filter_text or DEFAULT_FILTER
    try:
        compile_filter("jsonpath2", filter_text)
    except FilterError as error:
        raise BadRequest(f"jsonpath2.txt: {error}") from None
    name = options.name or package.root
    if not name or not NAME.match(name):
        raise BadRequest(
            f"consumer name {name!r} must be 1 to 100 letters, digits, '.', '_' or '-' "
            "(give one with name=…)"
        )
    _store(runtime, package)
    settings = runtime.settings
    with runtime.db.session() as session:
        row = session.get(Consumer, name)
        if row is None or row.state != READY:
            if row is None:
                row = Consumer(name=name, subscription_id=None)
                session.add(row)
            row.sha256, row.filter, row.state = package.sha256, filter_text, INSTALLING
        row.pending_sha256 = package.sha256 if row.state == READY else None
        row.pending_filter = filter_text if row.state == READY else None
        row.owner = principal.user
        row.error = ""
        row.allow_self = options.allow_self
        row.max_depth = options.max_depth or settings.consumer_max_depth
        row.timeout_seconds = options.timeout_seconds or settings.consumer_timeout_seconds
        row.memory_bytes = options.memory_bytes or settings.consumer_memory_bytes
        job = jobs.create_job(
            session, KIND_SETUP, principal.user, {"consumer": name, "sha256": package.sha256}
        )
        row.setup_job_id = job.id
        session.flush()
        answer, job_id = view(row), job.id
    runtime.submit(job_id)
    return answer, job_id


def _store(runtime: Runtime, package: ConsumerPackage) -> None:
    with runtime.archive.writer() as writer, package.path.open("rb") as source:
        while chunk := source.read(READ_CHUNK):
            writer.write(chunk)


def write_package(runtime: Runtime, sha256: str, target: Path) -> None:
    """Copy the stored package ``sha256`` to ``target``."""
    runtime.archive.copy_to(sha256, target)


def installed_version(session: Session, name: str, sha256: str, runtime: Runtime) -> bool:
    """Make ``sha256`` the consumer's running version (and subscribe it); False when the
    consumer is gone or has moved on to another version since."""
    row = session.get(Consumer, name)
    if row is None:
        return False
    if row.pending_sha256 == sha256 and row.pending_filter is not None:
        row.sha256, row.filter = sha256, row.pending_filter
    elif row.state == READY or row.sha256 != sha256:
        return False
    row.pending_sha256, row.pending_filter = None, None
    row.state, row.error = READY, ""
    row.updated_at = utcnow()
    subscribe(session, row, runtime)
    return True


def failed_version(session: Session, name: str, sha256: str, reason: str) -> None:
    """Record that ``sha256`` could not be set up: a new consumer fails; an upgrade is
    dropped and the running version stays, with the reason in ``error``."""
    row = session.get(Consumer, name)
    if row is None:
        return
    if row.pending_sha256 == sha256:
        row.pending_sha256, row.pending_filter = None, None
        row.error = f"version {sha256[:12]} was not installed: {reason}"
    elif row.state == INSTALLING and row.sha256 == sha256:
        row.state, row.error = FAILED, reason


def subscribe(session: Session, row: Consumer, runtime: Runtime) -> None:
    """Give the consumer its subscription (or bring the one it has up to date)."""
    current = session.get(Subscription, row.subscription_id) if row.subscription_id else None
    if current is not None and current.deleted_at is None:
        current.filter, current.owner = row.filter, row.owner
        current.updated_at = row.updated_at
        return
    spec = subscriptions.SubscriptionSpec(
        name=f"consumer {row.name}",
        target=subscriptions.consumer_target(row.name),
        filter=row.filter,
        dialect="jsonpath2",
        shape="pacifica",
    )
    owner = Principal(row.owner, admin=True, authenticated=True)
    created, _ = subscriptions.create(
        session, owner, spec, runtime.sealer, runtime.target_policy, consumer=row.name
    )
    row.subscription_id = created.id


def get(session: Session, name: str) -> Consumer:
    """The consumer named ``name``, or NotFound."""
    row = session.get(Consumer, name)
    if row is None:
        raise NotFound(f"no consumer {name!r}")
    return row


def listing(session: Session) -> list[Consumer]:
    """Every consumer, by name."""
    return list(session.scalars(select(Consumer).order_by(Consumer.name)))


def remove(session: Session, name: str) -> None:
    """Remove the consumer and its subscription (runs already queued still finish)."""
    row = get(session, name)
    if row.subscription_id:
        current = session.get(Subscription, row.subscription_id)
        if current is not None and current.deleted_at is None:
            subscriptions.delete(session, current)
    session.delete(row)


def view(row: Consumer) -> dict[str, Any]:
    """The consumer as the API shows it."""
    return {
        "name": row.name,
        "owner": row.owner,
        "version": row.sha256[:12],
        "sha256": row.sha256,
        "pending_version": row.pending_sha256[:12] if row.pending_sha256 else None,
        "state": row.state,
        "error": row.error,
        "filter": row.filter,
        "allow_self": row.allow_self,
        "max_depth": row.max_depth,
        "timeout_seconds": row.timeout_seconds,
        "memory_bytes": row.memory_bytes,
        "subscription_id": row.subscription_id,
        "setup_job_id": row.setup_job_id,
        "created_at": iso_z(row.created_at),
        "updated_at": iso_z(row.updated_at),
    }
