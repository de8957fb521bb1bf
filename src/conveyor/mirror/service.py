"""Mirrors as users see them: defining, listing, running, following and cancelling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.db.models import Mirror, MirrorRun, MirrorRunFile
from conveyor.db.notices import listening
from conveyor.db.types import iso_z, utcnow
from conveyor.errors import Conflict, NotFound
from conveyor.jobs.service import create_job
from conveyor.mirror import states
from conveyor.mirror.definition import MirrorDefinition, describe
from conveyor.mirror.schedule import next_run
from conveyor.runtime import Runtime

KIND_MIRROR_RUN = "mirror run"
MAX_FILES_PAGE = 1000
# The longest a request may wait for a run to end, and how often a wait looks at the
# database for an end committed by another process.
MAX_WAIT_SECONDS = 60.0
ENDED_RECHECK_SECONDS = 1.0


def stored_form(runtime: Runtime, definition: MirrorDefinition) -> dict[str, Any]:
    """The definition as stored: JSON with its passwords sealed."""
    return definition.model_dump(mode="json", context={"sealer": runtime.sealer})


def definition_of(runtime: Runtime, mirror: Mirror) -> MirrorDefinition:
    """The stored definition, passwords opened; a 409 saying why when it cannot be read
    (its passwords were sealed with another ``CONVEYOR_SECRET_KEY``)."""
    try:
        return MirrorDefinition.model_validate(
            mirror.definition, context={"sealer": runtime.sealer}
        )
    except ValidationError as error:
        raise Conflict(f"mirror {mirror.name} cannot be read: {describe(error)}") from None


def save_mirror(
    runtime: Runtime,
    principal: Principal,
    definition: MirrorDefinition,
    origin: str,
    *,
    replace: bool = False,
) -> dict[str, Any]:
    """Add a mirror, or with ``replace`` change one the caller owns; its view."""
    with runtime.db.session() as session:
        mirror = session.scalars(
            select(Mirror).where(Mirror.name == definition.name).with_for_update()
        ).one_or_none()
        if mirror is not None and not principal.may_see(mirror.owner):
            raise Conflict(f"the name {definition.name!r} is taken by another user's mirror")
        if mirror is not None and not replace:
            raise Conflict(f"mirror {definition.name!r} exists; replace it to change it")
        if mirror is None:
            mirror = Mirror(name=definition.name, owner=principal.user)
            session.add(mirror)
        mirror.definition = stored_form(runtime, definition)
        mirror.origin = origin
        if mirror.schedule != definition.schedule:
            mirror.schedule = definition.schedule
            mirror.next_run_at = (
                next_run(definition.schedule, utcnow()) if definition.schedule else None
            )
        session.flush()
        return mirror_view(runtime, mirror)


def visible_mirror(session: Session, principal: Principal, name: str) -> Mirror:
    """The mirror named ``name`` if the caller may see it, else NotFound."""
    mirror = session.scalars(select(Mirror).where(Mirror.name == name)).one_or_none()
    if mirror is None or not principal.may_see(mirror.owner):
        raise NotFound(f"no mirror named {name!r}")
    return mirror


def get_mirror(runtime: Runtime, principal: Principal, name: str) -> dict[str, Any]:
    """One mirror's view."""
    with runtime.db.session() as session:
        return mirror_view(runtime, visible_mirror(session, principal, name))


def list_mirrors(runtime: Runtime, principal: Principal) -> list[dict[str, Any]]:
    """The mirrors the caller may see, by name."""
    query = select(Mirror).order_by(Mirror.name)
    if not principal.admin:
        query = query.where(Mirror.owner == principal.user)
    with runtime.db.session() as session:
        return [mirror_view(runtime, mirror) for mirror in session.scalars(query)]


def delete_mirror(runtime: Runtime, principal: Principal, name: str) -> None:
    """Remove a mirror and its run history; its published releases stay."""
    with runtime.db.session() as session:
        mirror = visible_mirror(session, principal, name)
        if _active_run(session, mirror.id) is not None:
            raise Conflict(f"mirror {name!r} is running; cancel the run first")
        session.delete(mirror)


def start_run(runtime: Runtime, principal: Principal, name: str) -> dict[str, Any]:
    """Queue a run of the mirror; one run at a time per mirror."""
    with runtime.db.session() as session:
        mirror = session.scalars(
            select(Mirror).where(Mirror.name == name).with_for_update()
        ).one_or_none()
        if mirror is None or not principal.may_see(mirror.owner):
            raise NotFound(f"no mirror named {name!r}")
        active = _active_run(session, mirror.id)
        if active is not None:
            raise Conflict(f"mirror {name!r} is already running (run {active.id})")
        job = create_job(session, KIND_MIRROR_RUN, principal.user, {"mirror": name})
        run = MirrorRun(mirror_id=mirror.id, job_id=job.id, state=states.QUEUED)
        session.add(run)
        session.flush()
        job.payload = {"mirror": name, "run_id": run.id}
        view = run_view(run, name)
        job_id = job.id
    runtime.submit(job_id)
    return view


def cancel_run(runtime: Runtime, principal: Principal, run_id: int) -> dict[str, Any]:
    """Ask a run to stop; it stops between files and in the middle of a transfer."""
    with runtime.db.session() as session:
        run, name = _visible_run(session, principal, run_id)
        if run.state in states.FINISHED:
            raise Conflict(f"run {run_id} has finished ({run.state})")
        session.execute(
            update(MirrorRun).where(MirrorRun.id == run_id).values(cancel_requested=True)
        )
        run.cancel_requested = True
        return run_view(run, name)


def get_run(runtime: Runtime, principal: Principal, run_id: int) -> dict[str, Any]:
    """One run with its progress."""
    with runtime.db.session() as session:
        run, name = _visible_run(session, principal, run_id)
        return run_view(run, name)


async def wait_for_run(
    runtime: Runtime,
    principal: Principal,
    run_id: int,
    seconds: float,
    client_gone: Callable[[], Awaitable[bool]] | None = None,
) -> dict[str, Any]:
    """The run as soon as it has ended, or as it is after ``seconds``.

    A run ended in this process wakes the wait at its commit; one ended by another process
    (a Celery worker) is seen at the next look, ``ENDED_RECHECK_SECONDS`` apart. Once
    ``client_gone`` says the asker has left, the wait ends at that look: nobody would read
    the answer, and each look costs a query.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    woken = _LoopWakeup(loop)
    # Listening before the first look: an end committed in between is not missed.
    with listening(states.ended_topic(run_id), woken):
        while True:
            view = await asyncio.to_thread(get_run, runtime, principal, run_id)
            left = deadline - loop.time()
            if view["state"] in states.FINISHED or left <= 0:
                return view
            if client_gone is not None and await client_gone():
                return view
            await woken.wait(min(left, ENDED_RECHECK_SECONDS))


class _LoopWakeup:
    """An :class:`asyncio.Event` that any thread may set (the commit's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def set(self) -> None:
        # A wait that has just returned may have closed its loop: nothing is left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        self._event.clear()


def list_runs(
    runtime: Runtime, principal: Principal, name: str, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest runs of a mirror, newest first."""
    with runtime.db.session() as session:
        mirror = visible_mirror(session, principal, name)
        runs = session.scalars(
            select(MirrorRun)
            .where(MirrorRun.mirror_id == mirror.id)
            .order_by(MirrorRun.id.desc())
            .limit(limit)
        )
        return [run_view(run, name) for run in runs]


def run_files(
    runtime: Runtime,
    principal: Principal,
    run_id: int,
    state: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> dict[str, Any]:
    """A page of a run's files (keyset pagination by id), optionally in one state."""
    limit = max(1, min(limit, MAX_FILES_PAGE))
    with runtime.db.session() as session:
        _visible_run(session, principal, run_id)
        query = (
            select(MirrorRunFile)
            .where(MirrorRunFile.run_id == run_id, MirrorRunFile.id > after)
            .order_by(MirrorRunFile.id)
            .limit(limit)
        )
        if state:
            query = query.where(MirrorRunFile.state == state)
        rows = [file_view(row) for row in session.scalars(query)]
    following = rows[-1]["id"] if len(rows) == limit else None
    return {"files": rows, "next_after": following}


def _visible_run(session: Session, principal: Principal, run_id: int) -> tuple[MirrorRun, str]:
    found = session.execute(
        select(MirrorRun, Mirror.name, Mirror.owner)
        .join(Mirror, Mirror.id == MirrorRun.mirror_id)
        .where(MirrorRun.id == run_id)
    ).one_or_none()
    if found is None or not principal.may_see(found[2]):
        raise NotFound(f"no mirror run {run_id}")
    return found[0], found[1]


def _active_run(session: Session, mirror_id: int) -> MirrorRun | None:
    return session.scalars(
        select(MirrorRun)
        .where(MirrorRun.mirror_id == mirror_id, MirrorRun.state.in_(states.ACTIVE))
        .limit(1)
    ).one_or_none()


def mirror_view(runtime: Runtime, mirror: Mirror) -> dict[str, Any]:
    """A mirror in the API: its definition with passwords shown as stars."""
    definition = definition_of(runtime, mirror)
    return {
        "name": mirror.name,
        "owner": mirror.owner,
        "origin": mirror.origin,
        "definition": definition.model_dump(mode="json"),
        "last_release": mirror.last_release,
        "last_transaction_id": mirror.last_transaction_id,
        "next_run": iso_z(mirror.next_run_at),
        "created": iso_z(mirror.created_at),
        "updated": iso_z(mirror.updated_at),
    }


def run_view(run: MirrorRun, name: str) -> dict[str, Any]:
    """A run with its progress: files and bytes done, rate and time left."""
    elapsed = ((run.finished_at or utcnow()) - run.created_at).total_seconds()
    rate = run.bytes_done / elapsed if elapsed > 0 and run.bytes_done else 0.0
    left = max(0, (run.bytes_total or 0) - run.bytes_done)
    return {
        "id": run.id,
        "mirror": name,
        "job_id": run.job_id,
        "state": run.state,
        "release": run.release,
        "files_total": run.files_total,
        "files_done": run.files_done,
        "files_reused": run.files_reused,
        "files_failed": run.files_failed,
        "bytes_total": run.bytes_total,
        "bytes_done": run.bytes_done,
        "rate_bytes_per_second": round(rate),
        "eta_seconds": round(left / rate) if rate and run.state == states.DOWNLOADING else None,
        "error": run.error,
        "cancel_requested": run.cancel_requested,
        "transaction_id": run.transaction_id,
        "created": iso_z(run.created_at),
        "finished": iso_z(run.finished_at),
    }


def file_view(row: MirrorRunFile) -> dict[str, Any]:
    """One selected file and what became of it."""
    return {
        "id": row.id,
        "path": row.path,
        "save_as": row.save_as,
        "url": row.url,
        "size": row.size,
        "mtime": iso_z(row.mtime),
        "state": row.state,
        "bytes_done": row.bytes_done,
        "attempts": row.attempts,
        "sha256": row.sha256,
        "error": row.error,
    }
