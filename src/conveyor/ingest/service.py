"""Ingest: receiving bundles and move requests, and publishing their transactions."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import IO, Any, cast

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.db.models import File, Job, StagedBlob, Transaction, TransactionKeyValue
from conveyor.db.types import utcnow
from conveyor.events.outbox import record_event
from conveyor.ingest import events
from conveyor.ingest.bundle import (
    UPLOAD_TASK,
    BundleError,
    BundleLimits,
    BundleReader,
    StagedMember,
)
from conveyor.ingest.metadata import BundleMetadata, MetadataError, parse_metadata
from conveyor.ingest.policy import record_names
from conveyor.ingest.provenance import PAYLOAD_KEY, ProvenanceRefused, resolve
from conveyor.ingest.staging import (
    METADATA_KEY,
    StagedFile,
    StagingBuffer,
    discard,
    release_blobs,
    stage_metadata,
)
from conveyor.jobs import service as jobs
from conveyor.jobs import states
from conveyor.jobs.context import JobContext, LeaseLost
from conveyor.observability import metrics
from conveyor.runtime import Runtime
from conveyor.storage.errors import ArchiveError

log = logging.getLogger(__name__)

KIND_INGEST = "ingest"
KIND_MOVE = "move"
PROGRESS_INTERVAL = 1.0
INSERT_BATCH = 1000


def limits(runtime: Runtime) -> BundleLimits:
    """The bundle limits from the settings."""
    settings = runtime.settings
    return BundleLimits(settings.max_members, settings.max_metadata_bytes, settings.max_name_bytes)


def _payload(principal: Principal) -> dict[str, Any]:
    return {"principal": principal.user, "authenticated": principal.authenticated}


def start_upload(runtime: Runtime, principal: Principal) -> int:
    """A new ingest job in the ``receiving`` state, before the first byte is read."""
    with runtime.db.session() as session:
        job = jobs.create_job(
            session, KIND_INGEST, principal.user, _payload(principal), UPLOAD_TASK
        )
        job.state = states.RECEIVING
        job_id = job.id
    metrics.JOBS_SUBMITTED.labels(kind=KIND_INGEST).inc()
    return job_id


class _ProgressReader:
    """Passes reads through, recording the upload's percent (and liveness) once a second."""

    def __init__(self, stream: IO[bytes], runtime: Runtime, job_id: int, total: int | None):
        self._stream = stream
        self._runtime = runtime
        self._job_id = job_id
        self._total = total
        self._done = 0
        self._last = time.monotonic()

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self._done += len(data)
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._record()
        return data

    def _record(self) -> None:
        percent = min(99.0, 100.0 * self._done / self._total) if self._total else 0.0
        with self._runtime.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == self._job_id, Job.state == states.RECEIVING)
                .values(task_percent=round(percent, 1), updated_at=utcnow())
            )


def receive_bundle(
    runtime: Runtime,
    principal: Principal,
    job_id: int,
    stream: IO[bytes],
    content_length: int | None,
) -> None:
    """Stream a bundle into the archive for ``job_id``, then queue the job or fail it.

    Runs in the API process while the request body arrives; the bundle never touches a
    local disk except as archive blobs. A bundle whose ``conveyor.`` key-values cannot be
    recorded fails its job and raises :class:`ProvenanceRefused` (a 400 for the client).
    """
    staging = StagingBuffer(runtime.db, job_id)

    def on_member(member: StagedMember) -> None:
        staging.add(member)
        metrics.INGEST_FILES.inc()
        metrics.INGEST_BYTES.inc(member.size)

    reader = BundleReader(runtime.archive, limits(runtime), on_member)
    counted = _ProgressReader(stream, runtime, job_id, content_length)
    try:
        summary = reader.read(cast(IO[bytes], counted))
    except BundleError as failure:
        staging.flush()
        _stage_metadata_of(runtime, job_id, reader)
        fail_received(runtime, job_id, failure.task, failure.message)
        return
    except Exception as exc:
        staging.flush()
        fail_received(runtime, job_id, UPLOAD_TASK, f"internal error: {type(exc).__name__}: {exc}")
        raise
    staging.flush()
    _stage_metadata_of(runtime, job_id, reader)
    assert summary.metadata is not None  # the reader refuses a bundle without one
    try:
        recorded = _provenance(runtime, principal, summary.metadata.key_values)
    except ProvenanceRefused as refused:
        fail_received(runtime, job_id, "load metadata", refused.message)
        raise
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = states.QUEUED
        job.task_percent = 0.0
        job.payload = {
            **job.payload,
            "metadata_sha256": summary.metadata_sha256,
            PAYLOAD_KEY: recorded,
        }
    runtime.submit(job_id)


def _provenance(
    runtime: Runtime, principal: Principal, key_values: list[tuple[str, str]]
) -> dict[str, str]:
    """The ``conveyor.`` key-values the ingest records (see :mod:`conveyor.ingest.provenance`)."""
    with runtime.db.session() as session:
        return resolve(session, principal, key_values)


def _stage_metadata_of(runtime: Runtime, job_id: int, reader: BundleReader) -> None:
    summary = reader.summary
    if summary.metadata_sha256 is not None:
        size = runtime.archive.size(summary.metadata_sha256) or 0
        stage_metadata(runtime.db, job_id, summary.metadata_sha256, size, summary.metadata_created)


def fail_received(runtime: Runtime, job_id: int, task: str, message: str) -> None:
    """End a job that failed while its bundle was arriving, and drop what it staged."""
    with runtime.db.session() as session:
        jobs.finish(session, job_id, states.FAILED, task=task, percent=0.0, error=message)
    discard(runtime.db, runtime.archive, job_id, runtime.settings.spent_blob_grace_seconds)
    log.info("ingest job %s failed at %r: %s", job_id, task, message)


def submit_move(runtime: Runtime, principal: Principal, document: bytes) -> int:
    """A queued move job for a metadata list whose files name ``source`` paths.

    The job exists before its metadata is stored, so an archive that cannot be written
    fails the job at ``move files`` (as the published service does) instead of the request.
    Key-values under ``conveyor.`` that cannot be recorded refuse the request first.
    """
    try:
        key_values = parse_metadata(document).key_values
    except MetadataError:
        key_values = []  # the job fails at ``load metadata``, saying why
    payload = {**_payload(principal), PAYLOAD_KEY: _provenance(runtime, principal, key_values)}
    with runtime.db.session() as session:
        job = jobs.create_job(session, KIND_MOVE, principal.user, payload, UPLOAD_TASK)
        job.state = states.RECEIVING  # not runnable until its metadata is stored
        job_id = job.id
    metrics.JOBS_SUBMITTED.labels(kind=KIND_MOVE).inc()
    try:
        stored = runtime.archive.put_bytes(document)
    except ArchiveError as exc:
        with runtime.db.session() as session:
            jobs.finish(
                session, job_id, states.FAILED, task="move files", percent=0.0, error=str(exc)
            )
        return job_id
    stage_metadata(runtime.db, job_id, stored.sha256, stored.size, stored.created)
    with runtime.db.session() as session:
        queued = session.get(Job, job_id)
        assert queued is not None
        queued.payload = {**queued.payload, "metadata_sha256": stored.sha256}
        queued.state = states.QUEUED
    runtime.submit(job_id)
    return job_id


def load_metadata(context: JobContext) -> BundleMetadata:
    """Read and parse the job's stored ``metadata.txt`` (bounded by the configured limit)."""
    runtime = context.runtime
    sha256 = str(context.payload["metadata_sha256"])
    size = runtime.archive.size(sha256) or 0
    if size > runtime.settings.max_metadata_bytes:
        raise MetadataError(
            f"metadata is {size} bytes; the limit is {runtime.settings.max_metadata_bytes}"
        )
    with runtime.archive.open(sha256) as handle:
        return parse_metadata(handle.read())


def submitter_of(context: JobContext, metadata: BundleMetadata) -> str:
    """The authenticated user when auth is on; otherwise who the metadata names."""
    if context.payload.get("authenticated"):
        return str(context.payload["principal"])
    return metadata.submitter or str(context.payload.get("principal") or "")


def publish(
    context: JobContext,
    metadata: BundleMetadata,
    submitter: str,
    staged: dict[str, StagedFile],
) -> int:
    """Create the transaction, its files, key-values and event, and end the job: all or nothing."""
    runtime = context.runtime
    runtime.archive.sync()
    project = metadata.project or ""
    with runtime.db.session() as session:
        held = session.execute(
            update(Job)
            .where(Job.id == context.job_id, Job.lease_owner == context.worker)
            .where(Job.state == states.RUNNING)
            .values(updated_at=utcnow())
        )
        if not held.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost(f"job {context.job_id} lease lost before publishing")
        transaction = Transaction(
            job_id=context.job_id,
            origin=context.kind,
            submitter=submitter,
            project=project,
            instrument=metadata.instrument,
            owner=submitter,
            file_count=len(metadata.files),
            total_size=sum(entry.size for entry in metadata.files),
        )
        session.add(transaction)
        session.flush()
        if metadata.key_values:
            session.execute(
                insert(TransactionKeyValue),
                [
                    {"transaction_id": transaction.id, "key": key, "value": value}
                    for key, value in metadata.key_values
                ],
            )
        file_ids = _insert_files(session, transaction.id, metadata, staged)
        if runtime.settings.policy == "open":
            record_names(session, submitter, project, metadata.instrument)
        record_event(
            session,
            events.ingest_event(transaction, metadata, file_ids),
        )
        spent = set(
            session.scalars(
                select(StagedBlob.sha256).where(
                    StagedBlob.job_id == context.job_id,
                    StagedBlob.name == METADATA_KEY,
                    StagedBlob.created.is_(True),
                )
            )
        )
        session.execute(delete(StagedBlob).where(StagedBlob.job_id == context.job_id))
        jobs.finish(
            session,
            context.job_id,
            states.SUCCEEDED,
            task="ingest metadata",
            percent=100.0,
            transaction_id=transaction.id,
        )
        transaction_id = transaction.id
    # The metadata document lives on in the transaction's rows and event; its blob is spent.
    # The job has ended: a failure here leaves an orphan for `archive gc`, not a failed job.
    try:
        release_blobs(runtime.db, runtime.archive, spent, runtime.settings.spent_blob_grace_seconds)
    except Exception:
        log.warning("job %s: could not release its metadata blob", context.job_id, exc_info=True)
    metrics.TRANSACTIONS.labels(origin=context.kind).inc()
    log.info(
        "job %s published transaction %s (%d files)",
        context.job_id,
        transaction_id,
        len(metadata.files),
    )
    return transaction_id


def _crc32(staged: StagedFile) -> int | None:
    value = staged.hashes.get("crc32")
    return int(value, 16) if value else None


def _insert_files(
    session: Session,
    transaction_id: int,
    metadata: BundleMetadata,
    staged: dict[str, StagedFile],
) -> list[int]:
    """Insert the file rows in batches (bounding the parameter lists); their ids, in order."""
    file_ids: list[int] = []
    statement = insert(File).returning(File.id, sort_by_parameter_order=True)
    for start in range(0, len(metadata.files), INSERT_BATCH):
        rows = [
            {
                "transaction_id": transaction_id,
                "subdir": entry.subdir,
                "name": entry.name,
                "size": entry.size,
                "sha256": staged[entry.key].sha256,
                "crc32": _crc32(staged[entry.key]),
                "mimetype": entry.mimetype,
                "mtime": entry.mtime,
                "ctime": entry.ctime,
                "hashtype": entry.hashtype,
                "hashsum": entry.hashsum,
                "source": entry.source,
            }
            for entry in metadata.files[start : start + INSERT_BATCH]
        ]
        file_ids.extend(session.scalars(statement, rows))
    return file_ids


def fail_abandoned_uploads(runtime: Runtime, idle_seconds: float) -> int:
    """Fail uploads whose bytes stopped arriving (their API process died); drop their blobs."""
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    with runtime.db.session() as session:
        stale = list(
            session.scalars(
                select(Job.id).where(Job.state == states.RECEIVING, Job.updated_at < cutoff)
            )
        )
    for job_id in stale:
        fail_received(
            runtime,
            job_id,
            UPLOAD_TASK,
            f"the upload stopped arriving for {idle_seconds:.0f} s (the receiving server "
            "stopped or the client went away); upload the bundle again",
        )
    return len(stale)
