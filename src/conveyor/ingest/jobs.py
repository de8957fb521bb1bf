"""The ingest and move job handlers: Pacifica's task sequence, step by step."""

from __future__ import annotations

import time

from conveyor.ingest.metadata import BundleMetadata, MetadataError, check_mimetypes
from conveyor.ingest.move import MoveRefused, copy_into_archive, resolve_source, staged_from
from conveyor.ingest.policy import PolicyError, check_strict
from conveyor.ingest.provenance import PAYLOAD_KEY, apply
from conveyor.ingest.service import (
    KIND_INGEST,
    KIND_MOVE,
    fail_abandoned_uploads,
    load_metadata,
    publish,
    submitter_of,
)
from conveyor.ingest.staging import (
    StagedFile,
    StagingBuffer,
    discard,
    drop_spent,
    staged_members,
)
from conveyor.ingest.verify import summarise, verify_staged
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import StepFailed
from conveyor.jobs.executors import SWEEP_HOOKS, SweepHook
from conveyor.jobs.registry import job_handler
from conveyor.runtime import Runtime
from conveyor.storage.errors import ArchiveError

POLICY_TASK = "Policy Validation"


TEMP_PURGE_INTERVAL = 600.0
SPENT_SWEEP_SECONDS = 60.0


def _sweep_uploads(runtime: Runtime) -> int:
    return fail_abandoned_uploads(runtime, runtime.settings.upload_stall_seconds)


def _drop_spent(runtime: Runtime) -> int:
    return drop_spent(runtime.db, runtime.archive, runtime.settings.spent_blob_grace_seconds)


def _sweep_temp(runtime: Runtime) -> int:
    return runtime.archive.purge_temp(runtime.settings.temp_max_age_seconds)


SWEEP_HOOKS.extend(
    [
        SweepHook(_sweep_uploads),
        SweepHook(_sweep_temp, TEMP_PURGE_INTERVAL),
        SweepHook(_drop_spent, SPENT_SWEEP_SECONDS),
    ]
)


@job_handler(KIND_INGEST)
def run_ingest(context: JobContext) -> None:
    """Check and publish a bundle whose files the API already streamed into the archive."""
    try:
        with context.step("open tar"):
            pass
        metadata = _load(context)
        submitter = _validate(context, metadata)
        with context.step("ingest files"):
            staged = staged_members(context.runtime.db, context.job_id)
            errors = verify_staged(context.runtime.archive, metadata, staged, context.progress)
            if errors:
                raise StepFailed("ingest files", summarise(errors), errors)
        _publish(context, metadata, submitter, staged)
    except StepFailed as failure:
        _discard_unless_retryable(context, failure)
        raise


@job_handler(KIND_MOVE)
def run_move(context: JobContext) -> None:
    """Copy the named server files into the archive, check them and publish them."""
    try:
        metadata = _load(context)
        submitter = _validate(context, metadata)
        with context.step("move files"):
            staged = _move_files(context, metadata)
        _publish(context, metadata, submitter, staged)
    except StepFailed as failure:
        _discard_unless_retryable(context, failure)
        raise


def _discard_unless_retryable(context: JobContext, failure: StepFailed) -> None:
    # A policy refusal is fixed by an admin, not by the submitter: keep the staged files so
    # `conveyor job retry` can publish them without a new upload.
    if failure.task != POLICY_TASK:
        runtime = context.runtime
        discard(
            runtime.db, runtime.archive, context.job_id, runtime.settings.spent_blob_grace_seconds
        )


def _load(context: JobContext) -> BundleMetadata:
    with context.step("load metadata"):
        try:
            metadata = load_metadata(context)
        except MetadataError as exc:
            raise StepFailed("load metadata", str(exc)) from None
        # What the server resolved when the request came, never the bundle's own.
        metadata.key_values = apply(metadata.key_values, context.payload.get(PAYLOAD_KEY) or {})
        if not metadata.project:
            raise StepFailed("load metadata", "metadata names no Transactions.project")
    return metadata


def _validate(context: JobContext, metadata: BundleMetadata) -> str:
    # Pacifica writes only the 100 of this step; a failure leaves it at 0.
    with context.step(POLICY_TASK, report_start=False):
        submitter = submitter_of(context, metadata)
        if not submitter:
            raise StepFailed(POLICY_TASK, "no submitter: metadata names none")
        if context.runtime.settings.policy == "strict":
            with context.runtime.db.session() as session:
                try:
                    check_strict(session, submitter, metadata.project or "", metadata.instrument)
                except PolicyError as exc:
                    raise StepFailed(POLICY_TASK, str(exc)) from None
        context.progress(100.0)
    return submitter


def _move_files(context: JobContext, metadata: BundleMetadata) -> dict[str, StagedFile]:
    runtime = context.runtime
    done = staged_members(runtime.db, context.job_id)
    staging = StagingBuffer(runtime.db, context.job_id)
    errors: list[dict[str, str]] = []
    last = time.monotonic()
    for index, entry in enumerate(metadata.files):
        context.check_lease()
        if entry.key in done:
            continue  # copied by an earlier attempt of this job
        try:
            real = resolve_source(entry.source, runtime.settings.move_roots)
            stored = copy_into_archive(runtime.archive, entry, real)
        except MoveRefused as exc:
            errors.append({"item": entry.key, "error": str(exc)})
            continue
        except ArchiveError as exc:
            errors.append({"item": entry.key, "error": f"archive: {exc}"})
            continue
        staging.add(staged_from(entry, stored, real), created=stored.created)
        if time.monotonic() - last > 1.0:
            staging.flush()
            context.progress(round(100.0 * index / max(1, len(metadata.files)), 1))
            last = time.monotonic()
    staging.flush()
    if errors:
        raise StepFailed("move files", summarise(errors), errors)
    staged = staged_members(runtime.db, context.job_id)
    errors = verify_staged(runtime.archive, metadata, staged, context.progress)
    if errors:
        raise StepFailed("move files", summarise(errors), errors)
    return staged


def _publish(
    context: JobContext, metadata: BundleMetadata, submitter: str, staged: dict[str, StagedFile]
) -> None:
    with context.step("ingest metadata"):
        bad = check_mimetypes(metadata)
        if bad:
            raise StepFailed("ingest metadata", summarise(bad), bad)
        publish(context, metadata, submitter, staged)
