"""Consumer jobs: setting a version up, and running one on an event.

A matching event reaches the consumer's internal target, which records one run per
(consumer, event) and queues a ``consumer.run`` job on the consumers' own lane, unless
the input's provenance says the consumer made it (or the chain is too deep). The run lays
out SRC and DST, runs the entry point under its limits with a token that may only
publish and read (and whatever it ingests records the run's provenance), and publishes
``DST/uploads`` as a linked transaction, unless the consumer published itself (its
transaction names the run).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.auth import tokens
from conveyor.auth.scopes import CONSUMER_RUN, RUN_TOKEN_MARGIN_SECONDS
from conveyor.consumers import provenance, registry
from conveyor.consumers.environments import ConsumerSetupError
from conveyor.consumers.installed import Installed, installed
from conveyor.consumers.outputs import publish_outputs
from conveyor.consumers.package import PackageError
from conveyor.consumers.provenance import Lineage
from conveyor.consumers.workspace import (
    ConsumerFailed,
    InputFile,
    RunLimits,
    input_files,
    lay_out,
    run_entry_point,
)
from conveyor.db.models import (
    Consumer,
    ConsumerRun,
    File,
    Job,
    OutboxEvent,
    Transaction,
    TransactionKeyValue,
)
from conveyor.db.types import utcnow
from conveyor.events.internal import internal_target
from conveyor.events.outbox import EventRecord
from conveyor.events.shapes import document
from conveyor.events.sinks import Outcome
from conveyor.ingest.provenance import PAYLOAD_KEY
from conveyor.jobs import service as jobs
from conveyor.jobs import states
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import StepFailed
from conveyor.jobs.executors import CONSUMERS_LANE
from conveyor.jobs.registry import job_handler
from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

INSTALL_TASK = "install consumer"


@internal_target("consumer")
def launch(runtime: Runtime, event: EventRecord, target_url: str) -> Outcome:
    """Queue the consumer's run for ``event`` (once), or say why it is skipped."""
    name = urlsplit(target_url).netloc
    transaction_id = transaction_of(event)
    try:
        with runtime.db.session() as session:
            row = session.get(Consumer, name)
            if row is None:
                return Outcome(True, excerpt=f"skipped: consumer {name!r} was removed")
            known = _run_of(session, name, event.id)
            if known is not None:
                return Outcome(True, excerpt=f"job {known}")
            lineage = (
                Lineage.of_transaction(session, transaction_id)
                if transaction_id is not None
                else Lineage()
            )
            refusal = lineage.refusal(name, row.allow_self, row.max_depth)
            if refusal is not None:
                return Outcome(True, excerpt=f"skipped: {refusal}")
            job = jobs.create_job(
                session,
                registry.KIND_RUN,
                row.owner,
                {"consumer": name, "event_id": event.id, "transaction_id": transaction_id},
            )
            session.add(ConsumerRun(consumer=name, event_id=event.id, job_id=job.id))
            job_id = job.id
    except IntegrityError:  # another dispatcher recorded this run first
        with runtime.db.session() as session:
            return Outcome(True, excerpt=f"job {_run_of(session, name, event.id)}")
    runtime.submit(job_id, CONSUMERS_LANE)
    return Outcome(True, status=202, excerpt=f"job {job_id}")


def transaction_of(event: EventRecord) -> int | None:
    """The transaction an event is about (``transactions/<id>`` subjects), if any."""
    subject = event.subject or ""
    prefix, _, number = subject.partition("/")
    return int(number) if prefix == "transactions" and number.isdigit() else None


def _run_of(session: Session, name: str, event_id: str) -> int | None:
    return session.scalar(
        select(ConsumerRun.job_id).where(
            ConsumerRun.consumer == name, ConsumerRun.event_id == event_id
        )
    )


def consumer_home(runtime: Runtime) -> Path:
    """Where this machine keeps installed consumers and run folders."""
    assert runtime.settings.consumer_dir is not None
    return runtime.settings.consumer_dir


def install(runtime: Runtime, sha256: str) -> Installed:
    """The version ``sha256``, installed on this machine (from the archived package)."""
    try:
        return installed(
            consumer_home(runtime),
            sha256,
            lambda target: registry.write_package(runtime, sha256, target),
        )
    except (ConsumerSetupError, PackageError) as error:
        raise StepFailed(INSTALL_TASK, str(error)) from None


@job_handler(registry.KIND_SETUP)
def run_setup(context: JobContext) -> None:
    """Install the version on this machine, then subscribe the consumer and mark it ready."""
    runtime = context.runtime
    name, sha256 = str(context.payload["consumer"]), str(context.payload["sha256"])
    try:
        with context.step(INSTALL_TASK):
            install(runtime, sha256)
    except StepFailed as failure:
        with runtime.db.session() as session:
            registry.failed_version(session, name, sha256, f"{failure.task}: {failure.message}")
        raise
    with context.step("subscribe"), runtime.db.session() as session:
        registry.installed_version(session, name, sha256, runtime)
        jobs.finish(session, context.job_id, states.SUCCEEDED, task="subscribe", percent=100.0)
    log.info("consumer %s version %s is ready", name, sha256[:12])


@job_handler(registry.KIND_RUN)
def run_consumer(context: JobContext) -> None:
    """Run the consumer on the event; publish its outputs unless it published them itself."""
    runtime = context.runtime
    payload = context.payload
    name = str(payload["consumer"])
    input_id = payload.get("transaction_id")
    with context.step("load event"), runtime.db.session() as session:
        consumer = session.get(Consumer, name)
        if consumer is None:
            raise StepFailed("load event", f"consumer {name!r} was removed")
        event = session.get(OutboxEvent, str(payload["event_id"]))
        if event is None:
            raise StepFailed("load event", f"event {payload['event_id']} no longer exists")
        doc = document(event, "pacifica", {})
        settings = _RunSettings.of(consumer, runtime)
        lineage = Lineage.of_transaction(session, input_id) if input_id else Lineage()
        origin = session.get(Transaction, input_id) if input_id else None
        attributes = (origin.project, origin.instrument) if origin else (None, None)
    if _finish_if_published(context, input_id):
        return
    with context.step(INSTALL_TASK):
        ready = install(runtime, settings.sha256)
    root = consumer_home(runtime) / "runs" / f"job-{context.job_id}"
    shutil.rmtree(root, ignore_errors=True)
    values = lineage.provenance(name, settings.sha256[:12], context.job_id, input_id)
    _record_provenance(runtime, context.job_id, values)
    token_id, secret = _run_token(runtime, settings, name, context.job_id)
    try:
        with context.step("download inputs"):
            space = lay_out(root, doc, input_files(doc), _archive_fetcher(runtime, input_id))
        with context.step("run consumer"):
            try:
                run_entry_point(
                    ready.environment,
                    ready.code,
                    space,
                    variables={
                        "CONVEYOR_URL": runtime.settings.public_url,
                        "CONVEYOR_TOKEN": secret,
                        "CONVEYOR_PROVENANCE": json.dumps(values),
                        "CONVEYOR_CONSUMER": name,
                    },
                    limits=settings.limits,
                    still_wanted=context.check_lease,
                )
            except ConsumerFailed as error:
                raise StepFailed("run consumer", str(error)) from None
        if not _finish_if_published(context, input_id):
            uploads_bytes = settings.limits.uploads_bytes
            publish_outputs(context, space, settings.owner, attributes, values, uploads_bytes)
    finally:
        _revoke(runtime, token_id)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class _RunSettings:
    """The consumer's row and the server's run limits, as a run needs them, read once."""

    owner: str
    sha256: str
    limits: RunLimits

    @classmethod
    def of(cls, row: Consumer, runtime: Runtime) -> _RunSettings:
        server = runtime.settings
        limits = RunLimits(
            timeout_seconds=row.timeout_seconds,
            memory_bytes=row.memory_bytes,
            file_bytes=server.consumer_file_bytes,
            open_files=server.consumer_open_files,
            uploads_bytes=server.consumer_uploads_bytes,
        )
        return cls(row.owner, row.sha256, limits)


def _archive_fetcher(runtime: Runtime, input_id: int | None) -> Callable[[InputFile, Path], None]:
    """Copies an input file from the archive; only files of the input transaction, if any."""

    def fetch(item: InputFile, target: Path) -> None:
        with runtime.db.session() as session:
            row = session.get(File, item.file_id)
            if row is None:
                raise StepFailed("download inputs", f"file {item.file_id} no longer exists")
            if input_id is not None and row.transaction_id != input_id:
                raise StepFailed(
                    "download inputs",
                    f"file {item.file_id} is not in transaction {input_id}",
                )
            sha256 = row.sha256
        # A copy, never a hard link: a consumer writing to its input would rewrite the
        # archived blob through a shared inode.
        runtime.archive.copy_to(sha256, target)

    return fetch


def _record_provenance(runtime: Runtime, job_id: int, values: dict[str, str]) -> None:
    """Keep the run's provenance on its job: what its token ingests records, whatever the
    consumer sends (see :mod:`conveyor.ingest.provenance`)."""
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None  # the job being run
        job.payload = {**job.payload, PAYLOAD_KEY: values}


def _run_token(runtime: Runtime, settings: _RunSettings, name: str, job_id: int) -> tuple[int, str]:
    lifetime = settings.limits.timeout_seconds + RUN_TOKEN_MARGIN_SECONDS
    with runtime.db.session() as session:
        issued = tokens.create_token(
            session,
            settings.owner,
            label=f"consumer {name} run {job_id}",
            scope=CONSUMER_RUN,
            expires_at=utcnow() + timedelta(seconds=lifetime),
            run_job_id=job_id,
        )
    return issued.id, issued.secret


def _revoke(runtime: Runtime, token_id: int) -> None:
    with runtime.db.session() as session:
        tokens.revoke_token(session, token_id)


def _finish_if_published(context: JobContext, input_id: int | None) -> bool:
    """End the job when the consumer's own upload already made this run's transaction."""
    with context.runtime.db.session() as session:
        made = session.scalar(
            select(TransactionKeyValue.transaction_id)
            .where(
                # Outputs come after their input: an index range, not the whole table.
                TransactionKeyValue.transaction_id > (input_id or 0),
                TransactionKeyValue.key == provenance.RUN,
                TransactionKeyValue.value == str(context.job_id),
            )
            .limit(1)
        )
        if made is None:
            return False
        jobs.finish(
            session,
            context.job_id,
            states.SUCCEEDED,
            task="run consumer",
            percent=100.0,
            transaction_id=made,
        )
    return True
