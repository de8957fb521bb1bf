"""Job administration: forced states, retries, and the sweeper's housekeeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from conveyor.auth.principal import Principal
from conveyor.db.models import Job, OutboxEvent, SpentBlob
from conveyor.db.types import utcnow
from conveyor.ingest import policy
from conveyor.ingest.bundle import StagedMember
from conveyor.ingest.service import start_upload
from conveyor.ingest.staging import StagingBuffer, discard
from conveyor.jobs import service, states
from conveyor.jobs.context import JobContext
from conveyor.jobs.executors import Sweeper
from conveyor.jobs.registry import HANDLERS
from conveyor.jobs.runner import run_job
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import good_tar


def test_policy_refusal_keeps_the_bundle_for_an_admin_retry(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(policy="strict")
    with runtime.db.session() as session:
        policy.add_project(session, "1234a")
        policy.add_user(session, "10")
        policy.add_instrument(session, "54", projects=["1234a"])
    with TestClient(create_app(runtime=runtime)) as client:
        job = client.post("/api/v1/ingest", content=good_tar()).json()
        assert (job["state"], job["task"]) == ("failed", "Policy Validation")
        assert job["error"] == "submitter '10' is not a member of project '1234a'"
        with runtime.db.session() as session:
            policy.add_user(session, "10", projects=["1234a"])
        retried = client.post(f"/api/v1/jobs/{job['id']}/retry").json()
        assert retried["state"] == "succeeded", retried
        assert retried["transaction_id"] is not None
        again = client.post(f"/api/v1/jobs/{job['id']}/retry")
        assert again.status_code == 409


def test_failed_bundle_cannot_be_retried_once_discarded(client: TestClient) -> None:
    job = client.post("/api/v1/ingest", content=b"not a tar at all" * 64).json()
    answer = client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert answer.status_code == 409
    assert (
        "submit it again" in answer.json()["detail"] or "upload it again" in answer.json()["detail"]
    )


def test_set_state_with_the_published_flags(client: TestClient) -> None:
    job = client.post("/api/v1/ingest", content=good_tar()).json()
    forced = client.post(
        f"/api/v1/jobs/{job['id']}/state",
        json={
            "state": "FAILED",
            "task": "ingest files",
            "task_percent": 0,
            "exception": "Failed by administrator",
        },
    ).json()
    assert (forced["state"], forced["task"], forced["error"]) == (
        "failed",
        "ingest files",
        "Failed by administrator",
    )
    pacifica = client.get(f"/pacifica/ingest/get_state/{job['id']}").json()
    assert (pacifica["state"], pacifica["exception"]) == ("FAILED", "Failed by administrator")
    bad = client.post(f"/api/v1/jobs/{job['id']}/state", json={"state": "MAYBE"})
    assert bad.status_code == 400
    assert "MAYBE" in bad.json()["detail"]


def job_events(runtime: Runtime, job_id: int) -> list[OutboxEvent]:
    """The events recorded about one job, oldest first."""
    with runtime.db.session() as session:
        found = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.subject == f"jobs/{job_id}")
            .order_by(OutboxEvent.time)
        )
        return list(found.all())


def test_a_forced_end_records_the_finished_event_once(client: TestClient, runtime: Runtime) -> None:
    """As a job that ends by itself does; forcing the ended state it is in records nothing."""
    job_id = start_upload(runtime, Principal("u", admin=False, authenticated=True))
    url = f"/api/v1/jobs/{job_id}/state"
    forced = {"state": "FAILED", "task": "ingest files", "exception": "Failed by administrator"}
    assert client.post(url, json=forced).status_code == 200
    [failed] = job_events(runtime, job_id)
    assert (failed.type, failed.owner) == ("org.conveyor.job.failed", "u")
    assert failed.data["state"] == "failed"
    assert failed.data["task"] == "ingest files"
    assert failed.data["error"] == "Failed by administrator"
    again = client.post(url, json={**forced, "exception": "still failed"})
    assert again.status_code == 200, again.text
    assert len(job_events(runtime, job_id)) == 1
    done = {"state": "OK", "task": "ingest metadata", "task_percent": 100}
    assert client.post(url, json=done).json()["state"] == "succeeded"
    assert [event.type for event in job_events(runtime, job_id)] == [
        "org.conveyor.job.failed",
        "org.conveyor.job.succeeded",
    ]


def test_sweeper_fails_uploads_that_stopped_arriving(runtime: Runtime) -> None:
    job_id = start_upload(runtime, Principal("u", admin=False, authenticated=True))
    blob = runtime.archive.put_bytes(b"half of an upload")
    staging = StagingBuffer(runtime.db, job_id)
    staging.add(StagedMember("a/x", blob.sha256, blob.size, blob.hashes, 0.0))
    staging.flush()
    with runtime.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                updated_at=utcnow() - timedelta(seconds=runtime.settings.upload_stall_seconds + 5)
            )
        )
    Sweeper(runtime, runtime.executor).sweep()
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.task) == ("failed", "UPLOADING")
        assert "stopped arriving" in job.error
    assert not runtime.archive.exists(blob.sha256)


def test_sweeper_purges_temporary_writes_whose_writer_died(runtime: Runtime) -> None:
    import os
    import time

    writer = runtime.archive.store.open_write("tmp/dead-writer")
    writer.write(b"partial")
    writer.close()
    fresh = runtime.archive.store.open_write("tmp/live-writer")
    fresh.close()
    old = time.time() - runtime.settings.temp_max_age_seconds - 60
    path = runtime.archive.store.local_path("tmp/dead-writer")
    assert path is not None
    os.utime(path, (old, old))
    Sweeper(runtime, runtime.executor).sweep()
    assert runtime.archive.store.size("tmp/dead-writer") is None
    assert runtime.archive.store.size("tmp/live-writer") == 0


def test_archive_gc_deletes_only_old_unreferenced_blobs(
    client: TestClient, runtime: Runtime
) -> None:
    import os
    import time

    from conveyor.ingest.staging import collect_garbage
    from conveyor.storage.archive import blob_key

    job = client.post("/api/v1/ingest", content=good_tar()).json()
    assert job["state"] == "succeeded"
    kept = set(runtime.archive.blobs())
    orphan_old = runtime.archive.put_bytes(b"left by a crashed writer").sha256
    orphan_new = runtime.archive.put_bytes(b"being recorded right now").sha256
    path = runtime.archive.store.local_path(blob_key(orphan_old))
    assert path is not None
    old = time.time() - 7200
    os.utime(path, (old, old))

    dry = collect_garbage(runtime.db, runtime.archive, 3600, dry_run=True)
    assert (dry.checked, dry.unreferenced, dry.removed, dry.kept_young) == (4, 2, 1, 1)
    assert runtime.archive.exists(orphan_old)

    report = collect_garbage(runtime.db, runtime.archive, 3600)
    assert report.removed == 1
    assert set(runtime.archive.blobs()) == kept | {orphan_new}


def test_archive_gc_keeps_the_blobs_of_a_mirror_run_still_going(runtime: Runtime) -> None:
    """A run publishes its files at its end, maybe days after their download."""
    import os
    import time

    from conveyor.db.models import Mirror, MirrorRun, MirrorRunFile
    from conveyor.ingest.staging import collect_garbage
    from conveyor.storage.archive import blob_key

    blob = runtime.archive.put_bytes(b"downloaded at the start of a long run").sha256
    path = runtime.archive.store.local_path(blob_key(blob))
    assert path is not None
    old = time.time() - 3 * 86400
    os.utime(path, (old, old))
    with runtime.db.session() as session:
        job_id = service.create_job(session, "mirror.run", "someone", {}).id
        mirror = Mirror(name="bank", owner="someone", definition={})
        session.add(mirror)
        session.flush()
        run = MirrorRun(mirror_id=mirror.id, job_id=job_id, state="downloading")
        session.add(run)
        session.flush()
        session.add(MirrorRunFile(run_id=run.id, path="a", save_as="a", url="x", sha256=blob))
        run_id = run.id

    assert collect_garbage(runtime.db, runtime.archive, 86400).removed == 0
    assert runtime.archive.exists(blob)

    with runtime.db.session() as session:
        session.execute(update(MirrorRun).where(MirrorRun.id == run_id).values(state="failed"))
    assert collect_garbage(runtime.db, runtime.archive, 86400).removed == 1
    assert not runtime.archive.exists(blob)


def test_archive_gc_keeps_an_old_blob_a_writer_has_just_reused(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The writer's reference comes a moment after it found the blob already stored."""
    import hashlib
    import os
    import time

    from conveyor.ingest.staging import collect_garbage
    from conveyor.storage.archive import blob_key

    data = b"the same bytes, downloaded again"
    blob = runtime.archive.put_bytes(data).sha256
    path = runtime.archive.store.local_path(blob_key(blob))
    assert path is not None
    old = time.time() - 3 * 86400
    os.utime(path, (old, old))
    again = tmp_path / "again"
    again.write_bytes(data)

    stored = runtime.archive.adopt(again, {"sha256": hashlib.sha256(data).hexdigest()})

    assert stored.created is False
    assert collect_garbage(runtime.db, runtime.archive, 86400).removed == 0
    assert runtime.archive.exists(blob)


def test_a_failure_after_a_job_ended_does_not_turn_it_into_a_failed_one(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cleanup after publishing (dropping a spent blob) may fail; the job stays succeeded."""

    def publish_then_break(context: JobContext) -> None:
        with runtime.db.session() as session:
            service.finish(session, context.job_id, states.SUCCEEDED, task="done", percent=100)
        raise OSError("the cleanup after publishing broke")

    monkeypatch.setitem(HANDLERS, "test.ends-then-breaks", publish_then_break)
    with runtime.db.session() as session:
        job_id = service.create_job(session, "test.ends-then-breaks", "someone", {}).id
    run_job(runtime, job_id)
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.task, job.error) == ("succeeded", "done", "")
        ended = session.scalars(
            select(OutboxEvent.type).where(OutboxEvent.subject == f"jobs/{job_id}")
        ).all()
    assert ended == ["org.conveyor.job.succeeded"]


def test_blobs_a_failed_job_made_wait_out_a_grace_period_before_they_go(
    make_runtime: Callable[..., Runtime],
) -> None:
    """Another upload may have found the same content stored and not yet written its
    reference: the blob a failed job made is deleted only after the grace period, and
    only if nothing refers to it by then."""
    runtime = make_runtime(spent_blob_grace_seconds=900.0)
    shared = runtime.archive.put_bytes(b"content two uploads carry")
    alone = runtime.archive.put_bytes(b"content only the failed upload carried")
    # Both are uploads still arriving, as when their bundles stream in side by side.
    failed_id = start_upload(runtime, Principal("u", admin=False, authenticated=True))
    other_id = start_upload(runtime, Principal("u", admin=False, authenticated=True))
    staging = StagingBuffer(runtime.db, failed_id)
    for blob in (shared, alone):
        staging.add(StagedMember(blob.sha256, blob.sha256, blob.size, blob.hashes, 0.0))
    staging.flush()
    discard(runtime.db, runtime.archive, failed_id, runtime.settings.spent_blob_grace_seconds)
    assert runtime.archive.exists(shared.sha256) and runtime.archive.exists(alone.sha256)
    # The other upload found the shared blob present and records its reference late.
    late = StagingBuffer(runtime.db, other_id)
    late.add(StagedMember("x", shared.sha256, shared.size, shared.hashes, 0.0), created=False)
    late.flush()
    Sweeper(runtime, runtime.executor).sweep()
    assert runtime.archive.exists(alone.sha256), "still within its grace period"
    with runtime.db.session() as session:
        session.execute(update(SpentBlob).values(spent_at=utcnow() - timedelta(seconds=901)))
    Sweeper(runtime, runtime.executor).sweep()
    assert runtime.archive.exists(shared.sha256), "referenced by the other upload"
    assert not runtime.archive.exists(alone.sha256)
    with runtime.db.session() as session:
        assert session.scalars(select(SpentBlob)).all() == []
