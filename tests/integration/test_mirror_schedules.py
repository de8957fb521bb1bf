"""Scheduled mirror runs: cron arithmetic, one run per due time, and Celery beat's tick."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from conveyor.auth.principal import Principal
from conveyor.db.models import Mirror, MirrorRun
from conveyor.jobs.celery_app import bind_runtime
from conveyor.mirror import schedule
from conveyor.mirror.definition import parse_definition
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.runs import mirror_schedules_task
from conveyor.mirror.service import save_mirror
from conveyor.runtime import Runtime

OWNER = Principal("maria", admin=False, authenticated=True)


def test_next_run_follows_the_cron_fields() -> None:
    at = datetime(2026, 11, 30, 0, 10, tzinfo=UTC)
    assert schedule.next_run("0 3 * * *", at) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    assert schedule.next_run("*/15 * * * *", at) == datetime(2026, 11, 30, 0, 15, tzinfo=UTC)
    # 2026-12-01 is a Tuesday; weekday 2 is Tuesday, as in cron.
    assert schedule.next_run("30 1 * * 2", at) == datetime(2026, 12, 1, 1, 30, tzinfo=UTC)
    assert schedule.next_run("0 0 1 1 *", at) == datetime(2027, 1, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "0 25 * * *", "a b c d e", ""])
def test_bad_schedules_are_refused(bad: str) -> None:
    with pytest.raises(DefinitionError, match="schedule"):
        schedule.next_run(bad, datetime(2026, 1, 1, tzinfo=UTC))


def _scheduled(runtime: Runtime, root: Path) -> None:
    (root / "f.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "f.txt").write_text("x")
    definition = parse_definition(
        {
            "name": "nightly",
            "source": {"protocol": "local", "remote_dir": str(root)},
            "schedule": "0 3 * * *",
        }
    )
    view = save_mirror(runtime, OWNER, definition, "native")
    assert view["next_run"] is not None


def _make_due(runtime: Runtime) -> None:
    with runtime.db.session() as session:
        session.execute(update(Mirror).values(next_run_at=datetime.now(UTC) - timedelta(minutes=1)))


def _runs(runtime: Runtime) -> int:
    with runtime.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(MirrorRun)) or 0)


def test_a_due_mirror_runs_once(runtime: Runtime, tmp_path: Path) -> None:
    _scheduled(runtime, tmp_path / "bank")
    assert schedule.tick(runtime) == 0  # not due before 03:00
    _make_due(runtime)
    assert schedule.tick(runtime) == 1
    assert schedule.tick(runtime) == 0
    assert _runs(runtime) == 1
    with runtime.db.session() as session:
        upcoming = session.scalar(select(Mirror.next_run_at))
        state = session.scalar(select(MirrorRun.state))
    assert upcoming is not None and upcoming > datetime.now(UTC)
    assert (upcoming.hour, upcoming.minute) == (3, 0)
    assert state == "published"


def test_many_tickers_start_one_run(make_runtime: Callable[..., Runtime], tmp_path: Path) -> None:
    runtimes = [make_runtime(inline=True) for _ in range(4)]
    _scheduled(runtimes[0], tmp_path / "bank")
    _make_due(runtimes[0])
    started: list[int] = []
    barrier = threading.Barrier(len(runtimes))

    def tick(runtime: Runtime) -> None:
        barrier.wait()
        started.append(schedule.tick(runtime))

    threads = [threading.Thread(target=tick, args=(runtime,)) for runtime in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(started) == 1
    assert _runs(runtimes[0]) == 1


def test_celery_beat_ticks_the_same_way(runtime: Runtime, tmp_path: Path) -> None:
    _scheduled(runtime, tmp_path / "bank")
    _make_due(runtime)
    bind_runtime(runtime)
    mirror_schedules_task()
    assert _runs(runtime) == 1
