"""Publishing what a consumer left in ``DST/uploads`` as one new transaction.

The files are copied into the archive under the run's job, checked, and published with
the provenance key-values, all or nothing, exactly as a moved bundle is.
"""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime

from conveyor.consumers.workspace import ConsumerFailed, Workspace, publishable
from conveyor.ingest.metadata import BundleMetadata, FileEntry
from conveyor.ingest.move import MoveRefused, copy_into_archive, staged_from
from conveyor.ingest.service import publish
from conveyor.ingest.staging import StagingBuffer, staged_members
from conveyor.ingest.verify import summarise, verify_staged
from conveyor.jobs import service as jobs
from conveyor.jobs import states
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import StepFailed

TASK = "publish outputs"


def publish_outputs(
    context: JobContext,
    space: Workspace,
    owner: str,
    attributes: tuple[str | None, str | None],
    key_values: dict[str, str],
    max_bytes: int,
) -> None:
    """Publish ``DST/uploads`` (project and instrument of the input) and end the job.

    A run that wrote nothing ends without a transaction; one that wrote more than
    ``max_bytes`` in all fails, before anything is copied.
    """
    runtime = context.runtime
    project, instrument = attributes
    with context.step(TASK):
        staging = StagingBuffer(runtime.db, context.job_id)
        entries: list[FileEntry] = []
        try:
            for path, subdir in publishable(space, max_bytes):
                status = path.stat()
                entry = _entry(path.name, subdir, status.st_size, status.st_mtime)
                stored = copy_into_archive(runtime.archive, entry, path)
                staging.add(staged_from(entry, stored, path), created=stored.created)
                entries.append(entry)
        except (ConsumerFailed, MoveRefused) as error:
            raise StepFailed(TASK, str(error)) from None
        staging.flush()
        if not entries:
            with runtime.db.session() as session:
                jobs.finish(session, context.job_id, states.SUCCEEDED, task=TASK, percent=100.0)
            return
        metadata = BundleMetadata(
            submitter=owner,
            project=project or "",
            instrument=instrument,
            key_values=sorted(key_values.items()),
            files=entries,
        )
        staged = staged_members(runtime.db, context.job_id)
        errors = verify_staged(runtime.archive, metadata, staged, context.progress)
        if errors:
            raise StepFailed(TASK, summarise(errors), errors)
        publish(context, metadata, owner, staged)


def _entry(name: str, subdir: str, size: int, mtime: float) -> FileEntry:
    moment = datetime.fromtimestamp(mtime, UTC)
    return FileEntry(
        key=f"{subdir}/{name}" if subdir else name,
        subdir=subdir,
        name=name,
        size=size,
        hashtype=None,
        hashsum=None,
        mimetype=mimetypes.guess_type(name)[0] or "application/octet-stream",
        mtime=moment,
        ctime=moment,
        source=None,
    )
