"""Blobs a job has written before its transaction exists: recording and discarding them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from conveyor.db.engine import Database
from conveyor.db.models import Consumer, File, MirrorRun, MirrorRunFile, SpentBlob, StagedBlob
from conveyor.db.types import utcnow
from conveyor.db.upsert import insert_many_missing
from conveyor.ingest.bundle import StagedMember
from conveyor.mirror import states as mirror_states
from conveyor.storage.archive import Archive, blob_key
from conveyor.storage.errors import ArchiveError

log = logging.getLogger(__name__)

BATCH = 1000
GC_BATCH = 500
# Flush at least this often, so a crash leaves few written blobs that no row knows of.
FLUSH_SECONDS = 1.0
# The staged row of a job's metadata document; no file key can start with "/".
METADATA_KEY = "/metadata.txt"


class StagingBuffer:
    """Collects staged members and writes them to the database in batches."""

    def __init__(self, db: Database, job_id: int) -> None:
        self._db = db
        self._job_id = job_id
        self._pending: list[dict[str, object]] = []
        self._flushed = time.monotonic()

    def add(self, member: StagedMember, created: bool = True) -> None:
        """Remember one staged member; flushes every :data:`BATCH` members."""
        self._pending.append(
            {
                "job_id": self._job_id,
                "name": member.key,
                "sha256": member.sha256,
                "size": member.size,
                "hashes": member.hashes,
                "mtime": member.mtime,
                "created": created,
            }
        )
        if len(self._pending) >= BATCH or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what is pending."""
        if not self._pending:
            return
        with self._db.session() as session:
            session.execute(insert(StagedBlob), self._pending)
        self._pending = []
        self._flushed = time.monotonic()


def stage_metadata(db: Database, job_id: int, sha256: str, size: int, created: bool) -> None:
    """Remember the job's metadata document, so a failed job's copy is cleaned up too."""
    with db.session() as session:
        session.add(
            StagedBlob(job_id=job_id, name=METADATA_KEY, sha256=sha256, size=size, created=created)
        )


class StagedFile(NamedTuple):
    """A staged file as the checks and the publish step need it (lighter than an ORM row)."""

    sha256: str
    size: int
    hashes: dict[str, str]
    created: bool


def staged_members(db: Database, job_id: int) -> dict[str, StagedFile]:
    """The job's staged files by normalised path (its metadata document excluded)."""
    query = select(
        StagedBlob.name, StagedBlob.sha256, StagedBlob.size, StagedBlob.hashes, StagedBlob.created
    ).where(StagedBlob.job_id == job_id, StagedBlob.name != METADATA_KEY)
    with db.session() as session:
        return {
            name: StagedFile(sha256, size, hashes or {}, created)
            for name, sha256, size, hashes, created in session.execute(query)
        }


def discard(db: Database, archive: Archive, job_id: int, grace_seconds: float) -> int:
    """Forget a failed job's staged blobs; release those it created (see release_blobs)."""
    with db.session() as session:
        created = set(
            session.scalars(
                select(StagedBlob.sha256).where(
                    StagedBlob.job_id == job_id, StagedBlob.created.is_(True)
                )
            )
        )
        session.execute(delete(StagedBlob).where(StagedBlob.job_id == job_id))
    return release_blobs(db, archive, created, grace_seconds)


def release_blobs(db: Database, archive: Archive, shas: set[str], grace_seconds: float) -> int:
    """Blobs a job created and no longer needs: deleted when nothing refers to them.

    Not at once (unless the grace is 0): another job that found the same content already
    stored reuses the blob, and its reference is written a moment later (staging rows go
    in batches). They are queued as spent and deleted by :func:`drop_spent` after the
    grace period, if still unreferenced then. The number deleted now.
    """
    if not shas:
        return 0
    if grace_seconds <= 0:
        return delete_unreferenced(db, archive, shas)
    with db.session() as session:
        insert_many_missing(
            session, SpentBlob, [{"sha256": sha256, "spent_at": utcnow()} for sha256 in shas]
        )
    return 0


def drop_spent(db: Database, archive: Archive, grace_seconds: float, limit: int = 500) -> int:
    """Delete spent blobs older than the grace period that nothing refers to; how many."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    with db.session() as session:
        due = set(
            session.scalars(
                select(SpentBlob.sha256).where(SpentBlob.spent_at <= cutoff).limit(limit)
            )
        )
    if not due:
        return 0
    removed = delete_unreferenced(db, archive, due)
    with db.session() as session:
        session.execute(delete(SpentBlob).where(SpentBlob.sha256.in_(due)))
    return removed


def referenced(session: Session, candidates: Iterable[str]) -> set[str]:
    """The blobs among ``candidates`` a file, a staging job, a consumer package or a mirror
    run still going uses."""
    wanted = list(candidates)
    used = set(session.scalars(select(File.sha256).where(File.sha256.in_(wanted))))
    used |= set(session.scalars(select(StagedBlob.sha256).where(StagedBlob.sha256.in_(wanted))))
    # A run's files are referenced only once it publishes, which for a large bank can be
    # longer after their download than the age `archive gc` trusts to mean "abandoned".
    used |= set(
        session.scalars(
            select(MirrorRunFile.sha256)
            .join(MirrorRun, MirrorRun.id == MirrorRunFile.run_id)
            .where(MirrorRun.state.in_(mirror_states.ACTIVE), MirrorRunFile.sha256.in_(wanted))
        )
    )
    used |= set(session.scalars(select(Consumer.sha256).where(Consumer.sha256.in_(wanted))))
    used |= set(
        session.scalars(select(Consumer.pending_sha256).where(Consumer.pending_sha256.in_(wanted)))
    )
    return used


def delete_unreferenced(db: Database, archive: Archive, candidates: set[str]) -> int:
    """Delete the blobs among ``candidates`` that nothing refers to."""
    removed = 0
    for sha256 in candidates:
        with db.session() as session:
            used = referenced(session, [sha256])
        if not used:
            try:
                archive.delete(sha256)
                removed += 1
            except ArchiveError:
                log.warning("could not delete orphan blob %s", sha256, exc_info=True)
    return removed


@dataclass
class GarbageReport:
    """What a garbage collection found."""

    checked: int = 0
    unreferenced: int = 0
    removed: int = 0
    kept_young: int = 0


def collect_garbage(
    db: Database, archive: Archive, min_age_seconds: float, dry_run: bool = False
) -> GarbageReport:
    """Delete blobs no file and no staging job refers to, older than ``min_age_seconds``.

    Such blobs are left by processes that crashed between writing a blob and recording it.
    The age margin protects writes in progress, whose rows may not be flushed yet.
    """
    report = GarbageReport()
    cutoff = time.time() - min_age_seconds
    batch: list[str] = []
    for sha256 in archive.blobs():
        batch.append(sha256)
        if len(batch) >= GC_BATCH:
            _collect_batch(db, archive, batch, cutoff, dry_run, report)
            batch = []
    if batch:
        _collect_batch(db, archive, batch, cutoff, dry_run, report)
    return report


def _collect_batch(
    db: Database,
    archive: Archive,
    batch: list[str],
    cutoff: float,
    dry_run: bool,
    report: GarbageReport,
) -> None:
    report.checked += len(batch)
    with db.session() as session:
        used = referenced(session, batch)
    for sha256 in batch:
        if sha256 in used:
            continue
        report.unreferenced += 1
        written = archive.store.modified(blob_key(sha256))
        if written is None or written > cutoff:
            report.kept_young += 1
            continue
        if not dry_run:
            delete_unreferenced(db, archive, {sha256})
        report.removed += 1
