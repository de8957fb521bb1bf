"""A run of a mirror, as a job: list the files, detect the release, download, publish.

The run row and one row per selected file are the state: a run taken over by another
worker (or retried) skips a listing it already finished and downloads only what is still
pending. Nothing is published unless every selected file arrived whole; a failed or
cancelled run keeps what it downloaded, and the next run reuses those blobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import tenacity
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from conveyor.db.models import (
    File,
    Job,
    Mirror,
    MirrorRun,
    MirrorRunFile,
    StagedBlob,
    Transaction,
    TransactionKeyValue,
)
from conveyor.db.notices import note
from conveyor.db.types import utcnow
from conveyor.events.outbox import Event, record_event
from conveyor.ingest.events import stored_transaction_event
from conveyor.ingest.staging import discard
from conveyor.jobs import service as jobs
from conveyor.jobs import states as job_states
from conveyor.jobs.celery_app import bound_runtime, celery_app
from conveyor.jobs.context import JobContext, LeaseLost
from conveyor.jobs.errors import RetryLater, StepFailed
from conveyor.jobs.executors import SWEEP_HOOKS, SweepHook
from conveyor.jobs.registry import job_handler
from conveyor.mirror import schedule, states
from conveyor.mirror.definition import MirrorDefinition
from conveyor.mirror.downloads import DOWNLOAD_STEP, Downloader, RunCancelled
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import MirrorError, SourceError
from conveyor.mirror.matching import compile_patterns, path_selected, select_files
from conveyor.mirror.release import release_from_dates, release_from_source
from conveyor.mirror.remote_list import read_remote_list
from conveyor.mirror.retry import retry_policy
from conveyor.mirror.service import KIND_MIRROR_RUN, definition_of
from conveyor.mirror.sources import open_source
from conveyor.mirror.spec import SourceSpec
from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

LIST_TASK = "list files"
RELEASE_TASK = "detect release"
DOWNLOAD_TASK = DOWNLOAD_STEP
PUBLISH_TASK = "publish release"
INSERT_BATCH = 1000
MAX_ITEM_ERRORS = 100
RELEASE_PUBLISHED = "org.conveyor.mirror.release.published"
RELEASE_FAILED = "org.conveyor.mirror.release.failed"
# BioMAJ's suffix for a second local release of one remote release (release.control).
LOCAL_SUFFIX = re.compile(r"__\d+$")


MIRROR_SCHEDULES = "conveyor.mirror_schedules"


@celery_app.task(name=MIRROR_SCHEDULES, ignore_result=True)
def mirror_schedules_task() -> None:
    """Celery beat's tick: start the mirror runs that are due."""
    schedule.tick(bound_runtime())


# Every sweeper (serve, worker) ticks; Celery beat, when run, ticks as well. The mirror row
# decides who starts a due run, so more tickers never mean more runs.
SWEEP_HOOKS.append(SweepHook(schedule.tick, schedule.TICK_SECONDS))
celery_app.conf.beat_schedule = {
    "conveyor-mirror-schedules": {"task": MIRROR_SCHEDULES, "schedule": schedule.TICK_SECONDS}
}


@job_handler(KIND_MIRROR_RUN)
def run_mirror(context: JobContext) -> None:
    """Run one mirror run; its outcome is written to the run row and the outbox."""
    run_id = int(context.payload["run_id"])
    try:
        MirrorRunner(context, run_id).run()
    except RunCancelled as stopped:
        _finish_failed(context.runtime, run_id, stopped.message, [], states.CANCELLED)
        raise
    except StepFailed as failure:
        _finish_failed(context.runtime, run_id, failure.message, failure.items, states.FAILED)
        raise
    except RetryLater as exc:
        if context.attempt >= context.runtime.settings.max_attempts:
            _finish_failed(context.runtime, run_id, str(exc), [], states.FAILED)
        raise
    except LeaseLost:
        raise
    except Exception as exc:
        message = f"internal error: {type(exc).__name__}: {exc}"
        _finish_failed(context.runtime, run_id, message, [], states.FAILED)
        raise


class MirrorRunner:
    """The steps of one run."""

    def __init__(self, context: JobContext, run_id: int) -> None:
        self.context = context
        self.runtime = context.runtime
        self.run_id = run_id
        with self.runtime.db.session() as session:
            run = session.scalars(select(MirrorRun).where(MirrorRun.id == run_id)).one()
            mirror = session.scalars(select(Mirror).where(Mirror.id == run.mirror_id)).one()
            self.mirror_id = mirror.id
            self.name = mirror.name
            self.owner = mirror.owner
            self.last_release = mirror.last_release
            self.last_transaction = mirror.last_transaction_id
            self.listed = run.listed
            self.cancel_requested = run.cancel_requested
            self.definition: MirrorDefinition = definition_of(self.runtime, mirror)
        self.specs = _specs(self.definition)
        mirror_dir = self.runtime.settings.mirror_dir
        assert mirror_dir is not None
        self.workdir = mirror_dir / self.name

    def run(self) -> None:
        """List, decide, download, publish."""
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled before it started")
        with self.context.step(LIST_TASK):
            self._set_state(states.LISTING)
            if self.definition.remote_list and not Path(self.definition.remote_list).exists():
                # BioMAJ: no list file, no new release.
                self._up_to_date()
                return
            if not self.listed:
                self._list_with_retries()
        with self.context.step(RELEASE_TASK):
            release = self._release()
        if release is None:
            self._up_to_date()
            return
        with self.context.step(DOWNLOAD_TASK):
            self._set_state(states.DOWNLOADING, release=release)
            downloader = Downloader(
                self.context,
                self.run_id,
                self.definition,
                self.specs,
                self.workdir,
                self.last_transaction,
                self._interrupted_run(),
            )
            errors = downloader.run()
            if errors:
                raise StepFailed(
                    DOWNLOAD_TASK,
                    f"{len(errors)} file(s) could not be downloaded; first: "
                    f"{errors[0]['item']}: {errors[0]['error']}",
                    errors[:MAX_ITEM_ERRORS],
                )
        with self.context.step(PUBLISH_TASK):
            self._set_state(states.PUBLISHING)
            self._publish(release)

    # --- listing ------------------------------------------------------------------------

    def _list_with_retries(self) -> None:
        policy = retry_policy(self.definition.stop_condition, self.definition.wait_policy)
        try:
            for attempt in policy.retrying(retry=tenacity.retry_if_exception(_transient_listing)):
                with attempt:
                    self._list()
        except MirrorError as error:
            raise StepFailed(LIST_TASK, str(error)) from None

    def _list(self) -> None:
        with self.runtime.db.session() as session:
            session.execute(delete(MirrorRunFile).where(MirrorRunFile.run_id == self.run_id))
        pending: list[dict[str, Any]] = []
        for row in self._selected():
            pending.append(row)
            if len(pending) >= INSERT_BATCH:
                self._insert(pending)
                pending = []
        self._insert(pending)
        self._check_unique_paths()
        with self.runtime.db.session() as session:
            count, total = session.execute(
                select(func.count(), func.coalesce(func.sum(MirrorRunFile.size), 0)).where(
                    MirrorRunFile.run_id == self.run_id
                )
            ).one()
            session.execute(
                update(MirrorRun)
                .where(MirrorRun.id == self.run_id)
                .values(
                    listed=True,
                    files_total=count,
                    bytes_total=total,
                    listing_digest=_listing_digest(session, self.run_id),
                )
            )

    def _selected(self) -> Iterator[dict[str, Any]]:
        definition = self.definition
        if definition.remote_list is not None:
            folder = definition.source.remote_dir if definition.source else "/"
            for path, save_as, entry in read_remote_list(definition.remote_list, folder):
                yield self._row(0, path, save_as, entry)
        elif definition.source is not None:
            with open_source(definition.source) as source:
                for chosen in select_files(source, definition.remote_files):
                    yield self._row(0, chosen.entry.name, chosen.save_as, chosen.entry)
        for index, direct in enumerate(definition.files, start=1):
            with open_source(direct.source) as source:
                entry = source.stat(direct.path)
            yield self._row(index, direct.path, direct.save_as, entry)

    def _row(self, index: int, path: str, save_as: str, entry: RemoteEntry) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source_index": index,
            "path": path,
            "save_as": save_as,
            "url": file_url(self.specs[index], path),
            "size": entry.size,
            "mtime": entry.mtime,
            "fingerprint": (entry.fingerprint or "")[:255] or None,
            "state": states.FILE_PENDING,
        }

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self.runtime.db.session() as session:
                session.execute(insert(MirrorRunFile), rows)
        self.context.check_lease()

    def _check_unique_paths(self) -> None:
        with self.runtime.db.session() as session:
            clashes = session.scalars(
                select(MirrorRunFile.save_as)
                .where(MirrorRunFile.run_id == self.run_id)
                .group_by(MirrorRunFile.save_as)
                .having(func.count() > 1)
                .limit(5)
            ).all()
        if clashes:
            raise StepFailed(
                LIST_TASK,
                "several remote files would be saved at the same path: " + ", ".join(clashes),
            )

    # --- release ------------------------------------------------------------------------

    def _release(self) -> str | None:
        """The release to publish, or None when the last published one is current."""
        rule = self.definition.release
        if rule.file:
            spec = rule.source or self.specs[0]
            try:
                with open_source(spec) as source:
                    release = release_from_source(rule, source)
            except MirrorError as error:
                raise StepFailed(RELEASE_TASK, str(error)) from None
        else:
            with self.runtime.db.session() as session:
                newest = session.scalar(
                    select(func.max(MirrorRunFile.mtime)).where(MirrorRunFile.run_id == self.run_id)
                )
            release = release_from_dates([newest], rule.format) or _today(rule.format)
        if release != _remote_release(self.last_release):
            return release
        if not rule.control or self._same_files_as_last_release():
            return None
        return self._next_suffix(release)

    def _same_files_as_last_release(self) -> bool:
        with self.runtime.db.session() as session:
            digests = session.execute(
                select(MirrorRun.id, MirrorRun.listing_digest).where(
                    MirrorRun.transaction_id == self.last_transaction,
                    MirrorRun.mirror_id == self.mirror_id,
                )
            ).all()
            mine = session.scalar(
                select(MirrorRun.listing_digest).where(MirrorRun.id == self.run_id)
            )
        return any(digest == mine for _, digest in digests)

    def _next_suffix(self, release: str) -> str:
        with self.runtime.db.session() as session:
            taken = session.scalar(
                select(func.count()).where(
                    MirrorRun.mirror_id == self.mirror_id,
                    MirrorRun.state == states.PUBLISHED,
                    MirrorRun.release.like(f"{release}__%"),
                )
            )
        return f"{release}__{int(taken or 0) + 1}"

    def _up_to_date(self) -> None:
        with self.runtime.db.session() as session:
            self._end(session, states.UP_TO_DATE, release=self.last_release)
            jobs.finish(
                session, self.context.job_id, job_states.SUCCEEDED, task=RELEASE_TASK, percent=100.0
            )
        log.info("mirror %s is up to date (release %s)", self.name, self.last_release)

    def _interrupted_run(self) -> int | None:
        with self.runtime.db.session() as session:
            return session.scalar(
                select(MirrorRun.id)
                .where(
                    MirrorRun.mirror_id == self.mirror_id,
                    MirrorRun.id != self.run_id,
                    MirrorRun.state.in_((states.FAILED, states.CANCELLED)),
                )
                .order_by(MirrorRun.id.desc())
                .limit(1)
            )

    # --- publishing ---------------------------------------------------------------------

    def _publish(self, release: str) -> None:
        patterns = compile_patterns(self.definition.local_files)
        # As an ingest does, a release is never published over blobs a crash could still
        # lose; the flush runs while the release's rows are written, and the commit waits
        # for it (1,000 small files: the flush took 0.05-0.14 s, the rows 0.05-0.09 s).
        with ThreadPoolExecutor(1, "mirror-flush") as flusher, self.runtime.db.session() as session:
            flushed = flusher.submit(self.runtime.archive.sync)
            held = session.execute(
                update(Job)
                .where(Job.id == self.context.job_id, Job.lease_owner == self.context.worker)
                .values(updated_at=utcnow())
            )
            if not held.rowcount:  # type: ignore[attr-defined]
                raise LeaseLost(f"job {self.context.job_id} lease lost before publishing")
            transaction = Transaction(
                job_id=self.context.job_id,
                origin="mirror",
                submitter=self.owner,
                owner=self.owner,
            )
            session.add(transaction)
            session.flush()
            count, size = self._insert_files(session, transaction.id, patterns)
            transaction.file_count, transaction.total_size = count, size
            session.execute(
                insert(TransactionKeyValue),
                [
                    {"transaction_id": transaction.id, "key": key, "value": value}
                    for key, value in self._key_values(release)
                ],
            )
            session.flush()
            record_event(session, stored_transaction_event(session, transaction))
            record_event(session, self._published_event(transaction.id, release, count, size))
            session.execute(
                update(Mirror)
                .where(Mirror.id == self.mirror_id)
                .values(last_release=release, last_transaction_id=transaction.id)
            )
            self._end(session, states.PUBLISHED, release=release, transaction_id=transaction.id)
            earlier_jobs = self._earlier_jobs(session)
            session.execute(delete(StagedBlob).where(StagedBlob.job_id == self.context.job_id))
            jobs.finish(
                session,
                self.context.job_id,
                job_states.SUCCEEDED,
                task=PUBLISH_TASK,
                percent=100.0,
                transaction_id=transaction.id,
            )
            transaction_id = transaction.id
            flushed.result()
        for job_id in earlier_jobs:
            runtime = self.runtime
            discard(runtime.db, runtime.archive, job_id, runtime.settings.spent_blob_grace_seconds)
        log.info(
            "mirror %s published release %s as transaction %s", self.name, release, transaction_id
        )

    def _insert_files(
        self, session: Session, transaction_id: int, patterns: Any
    ) -> tuple[int, int]:
        count = size = 0
        batch: list[dict[str, Any]] = []
        files = cast(Table, File.__table__)
        # Columns, not ORM objects, and a Core INSERT: a release can hold 100,000 files.
        rows = session.execute(
            select(
                MirrorRunFile.save_as,
                MirrorRunFile.bytes_done,
                MirrorRunFile.sha256,
                MirrorRunFile.crc32,
                MirrorRunFile.mtime,
                MirrorRunFile.md5,
                MirrorRunFile.url,
            )
            .where(
                MirrorRunFile.run_id == self.run_id,
                MirrorRunFile.state.in_((states.FILE_DONE, states.FILE_REUSED)),
            )
            .order_by(MirrorRunFile.id)
            .execution_options(yield_per=INSERT_BATCH)
        )
        for row in rows:
            if not path_selected(row.save_as, patterns):
                continue
            subdir, _, name = row.save_as.rpartition("/")
            batch.append(
                {
                    "transaction_id": transaction_id,
                    "subdir": subdir,
                    "name": name,
                    "size": row.bytes_done,
                    "sha256": row.sha256,
                    "crc32": row.crc32,
                    "mtime": row.mtime,
                    "hashtype": "md5" if row.md5 else None,
                    "hashsum": row.md5,
                    "source": row.url,
                }
            )
            count += 1
            size += row.bytes_done
            if len(batch) >= INSERT_BATCH:
                session.connection().execute(insert(files), batch)
                batch = []
        if batch:
            session.connection().execute(insert(files), batch)
        return count, size

    def _key_values(self, release: str) -> Iterable[tuple[str, str]]:
        yield "mirror", self.name
        yield "release", release
        if self.definition.source is not None:
            yield "source", file_url(self.definition.source, "")

    def _published_event(self, transaction_id: int, release: str, count: int, size: int) -> Event:
        return Event(
            type=RELEASE_PUBLISHED,
            source="/api/v1/mirrors",
            subject=f"mirrors/{self.name}/runs/{self.run_id}",
            owner=self.owner,
            data={
                "mirror": self.name,
                "run": self.run_id,
                "release": release,
                "transaction_id": transaction_id,
                "file_count": count,
                "total_size": size,
            },
        )

    def _earlier_jobs(self, session: Session) -> list[int]:
        """Jobs of this mirror's unpublished runs, whose leftover blobs can now go."""
        return list(
            session.scalars(
                select(MirrorRun.job_id).where(
                    MirrorRun.mirror_id == self.mirror_id,
                    MirrorRun.id != self.run_id,
                    MirrorRun.state.in_((states.FAILED, states.CANCELLED)),
                )
            )
        )

    # --- run row ------------------------------------------------------------------------

    def _set_state(self, state: str, **values: Any) -> None:
        with self.runtime.db.session() as session:
            session.execute(
                update(MirrorRun).where(MirrorRun.id == self.run_id).values(state=state, **values)
            )

    def _end(self, session: Session, state: str, **values: Any) -> None:
        session.execute(
            update(MirrorRun)
            .where(MirrorRun.id == self.run_id)
            .values(state=state, finished_at=utcnow(), **values)
        )
        note(session, states.ended_topic(self.run_id))


def _finish_failed(
    runtime: Runtime, run_id: int, message: str, items: list[dict[str, Any]], state: str
) -> None:
    """End the run in ``state`` and record the failure event."""
    with runtime.db.session() as session:
        found = session.execute(
            select(MirrorRun, Mirror.name, Mirror.owner)
            .join(Mirror, Mirror.id == MirrorRun.mirror_id)
            .where(MirrorRun.id == run_id)
        ).one_or_none()
        if found is None or found[0].state in states.FINISHED:
            return
        run, name, owner = found
        session.execute(
            update(MirrorRun)
            .where(MirrorRun.id == run_id)
            .values(state=state, error=message, finished_at=utcnow())
        )
        note(session, states.ended_topic(run_id))
        record_event(
            session,
            Event(
                type=RELEASE_FAILED,
                source="/api/v1/mirrors",
                subject=f"mirrors/{name}/runs/{run_id}",
                owner=owner,
                data={
                    "mirror": name,
                    "run": run_id,
                    "release": run.release,
                    "state": state,
                    "error": message,
                    "failed_files": items[:10],
                },
            ),
        )


def _specs(definition: MirrorDefinition) -> list[SourceSpec]:
    """The sources by index: 0 the mirrored folder, N the (N-1)th direct file's."""
    folder = definition.source or definition.files[0].source
    return [folder, *(direct.source for direct in definition.files)]


def file_url(spec: SourceSpec, path: str) -> str:
    """Where a file comes from, without credentials: ``protocol://server/remote_dir/path``."""
    remote = "/" + "/".join(
        part for part in f"{spec.remote_dir}/{path}".split("/") if part not in ("", ".")
    )
    host = spec.server.rsplit("@", 1)[-1]
    return f"{spec.protocol}://{host}{remote}"


def _transient_listing(error: BaseException) -> bool:
    return isinstance(error, SourceError) and not error.permanent


def _listing_digest(session: Session, run_id: int) -> str:
    digest = hashlib.sha256()
    rows = session.execute(
        select(MirrorRunFile.save_as, MirrorRunFile.size, MirrorRunFile.fingerprint)
        .where(MirrorRunFile.run_id == run_id)
        .order_by(MirrorRunFile.save_as)
        .execution_options(yield_per=INSERT_BATCH)
    )
    for save_as, size, fingerprint in rows:
        digest.update(json.dumps([save_as, size, fingerprint]).encode() + b"\n")
    return digest.hexdigest()


def _remote_release(published: str | None) -> str | None:
    """The remote release a published one was named after (``2.10__2`` was ``2.10``)."""
    return None if published is None else LOCAL_SUFFIX.sub("", published)


def _today(date_format: str | None) -> str:
    now = datetime.now(UTC)
    return now.strftime(date_format) if date_format else f"{now.year}-{now.month}-{now.day}"
