"""Scheduled runs: cron expressions (UTC), fired by every sweeper and by Celery beat.

The next due time lives on the mirror row. Whoever ticks first moves it forward with a
compare-and-set update and starts the run; every other process (API replicas, workers,
beat) sees the row already moved and does nothing, so a due run starts exactly once.
Cron arithmetic is Celery's ``crontab``, which Celery beat itself uses.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from celery.schedules import crontab
from sqlalchemy import select, update

from conveyor.auth.principal import Principal
from conveyor.db.models import Mirror
from conveyor.db.types import utcnow
from conveyor.errors import ConveyorError
from conveyor.mirror.errors import DefinitionError

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

TICK_SECONDS = 30.0


def next_run(schedule: str, after: datetime) -> datetime:
    """The first time ``schedule`` fires after ``after`` (a timezone-aware UTC time)."""
    fields = schedule.split()
    if len(fields) != 5:
        raise DefinitionError(
            f"schedule {schedule!r} needs five fields: minute hour day month weekday"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        cron = crontab(minute, hour, day_of_week, day_of_month, month, nowfun=lambda: after)
        return after + cron.remaining_estimate(after)
    except (ValueError, KeyError) as error:
        raise DefinitionError(f"schedule {schedule!r} is not a cron expression: {error}") from None


def tick(runtime: Runtime) -> int:
    """Start the runs that are due; how many were started."""
    from conveyor.mirror.service import start_run

    now = utcnow()
    with runtime.db.session() as session:
        due = session.execute(
            select(Mirror.id, Mirror.name, Mirror.owner, Mirror.schedule, Mirror.next_run_at).where(
                Mirror.schedule.is_not(None),
                (Mirror.next_run_at.is_(None)) | (Mirror.next_run_at <= now),
            )
        ).all()
    started = 0
    for mirror_id, name, owner, schedule, was in due:
        if not _claim(runtime, mirror_id, was, next_run(str(schedule), now)) or was is None:
            continue
        try:
            start_run(runtime, Principal(owner, admin=False, authenticated=True), name)
            started += 1
            log.info("scheduled run of mirror %s started", name)
        except ConveyorError as error:
            log.info("scheduled run of mirror %s skipped: %s", name, error.message)
    return started


def _claim(runtime: Runtime, mirror_id: int, was: datetime | None, upcoming: datetime) -> bool:
    with runtime.db.session() as session:
        condition = Mirror.next_run_at.is_(None) if was is None else Mirror.next_run_at == was
        moved = session.execute(
            update(Mirror)
            .where(Mirror.id == mirror_id, condition)
            .values(next_run_at=upcoming)
            .execution_options(synchronize_session=False)
        )
        return bool(moved.rowcount)  # type: ignore[attr-defined]
