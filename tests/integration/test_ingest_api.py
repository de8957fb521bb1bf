"""Ingest through the native API on the embedded default (SQLite, local folder, inline jobs)."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conveyor.db.models import File, OutboxEvent, StagedBlob, Transaction
from conveyor.runtime import Runtime
from tests.support.bundles import FOO, GOOD_MEMBERS, good_tar, make_tar, variant


def upload(client: TestClient, body: bytes, path: str = "/api/v1/ingest") -> dict:  # type: ignore[type-arg]
    response = client.post(path, content=body, headers={"Content-Type": "application/x-tar"})
    assert response.status_code in (200, 202), response.text
    return client.get(
        f"/api/v1/jobs/{response.json().get('id') or response.json()['job_id']}"
    ).json()  # type: ignore[no-any-return]


def counts(runtime: Runtime) -> tuple[int, int, int]:
    with runtime.db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Transaction)) or 0,
            session.scalar(select(func.count()).select_from(File)) or 0,
            session.scalar(select(func.count()).select_from(StagedBlob)) or 0,
        )


def blob_count(runtime: Runtime) -> int:
    return sum(1 for _ in runtime.archive.blobs())


def test_good_bundle_becomes_a_transaction_with_metadata_first_or_last(
    client: TestClient, runtime: Runtime
) -> None:
    for first in (True, False):
        job = upload(client, good_tar(metadata_first=first))
        assert job["state"] == "succeeded", job
        assert (job["task"], job["task_percent"]) == ("ingest metadata", 100.0)
        txn = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()
        assert txn["project"] == "1234a" and txn["submitter"] == "10"
        assert txn["instrument"] == "54"
        assert {"key": "Temp C", "value": "27"} in txn["key_values"]
        paths = {f"{f['subdir']}/{f['name']}": f for f in txn["files"]}
        assert set(paths) == {key.removeprefix("data/") for key in GOOD_MEMBERS}
        for key, data in GOOD_MEMBERS.items():
            record = paths[key.removeprefix("data/")]
            assert record["sha256"] == hashlib.sha256(data).hexdigest()
            assert record["crc32"] == f"{zlib.crc32(data):08x}"
            body = client.get(f"/api/v1/files/{record['id']}/content")
            assert body.content == data
    # foo.txt and the Japanese file share bytes, so foo and bar are stored once each;
    # the metadata documents are spent once their transactions exist.
    assert blob_count(runtime) == 2


def test_ingest_records_a_pacifica_event_in_the_outbox(
    client: TestClient, runtime: Runtime
) -> None:
    job = upload(client, good_tar())
    with runtime.db.session() as session:
        event = session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "org.pacifica.metadata.ingest")
        ).one()
    assert event.source == "/pacifica/metadata/ingest"
    tables = [entry["destinationTable"] for entry in event.data]
    assert tables.count("Files") == 3
    ids = {
        entry["value"] for entry in event.data if entry["destinationTable"] == "Transactions._id"
    }
    assert ids == {job["transaction_id"]}


def test_failures_name_the_step_and_leave_nothing(client: TestClient, runtime: Runtime) -> None:
    cases = {
        "bad-hashsum": ("ingest files", "sha1 is"),
        "bad-mimetype": ("ingest metadata", "lame-mime-type"),
    }
    for name, (task, words) in cases.items():
        job = upload(client, make_tar(GOOD_MEMBERS, variant(name)))
        assert (job["state"], job["task"], job["task_percent"]) == ("failed", task, 0.0), job
        assert words in job["error"]
        assert job["item_errors"] and job["item_errors"][0]["item"] == "a/b/foo.txt"
    assert counts(runtime) == (0, 0, 0)
    assert blob_count(runtime) == 0


def test_hostile_members_fail_at_open_tar(client: TestClient, runtime: Runtime) -> None:
    import io
    import tarfile

    def tar_with(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            ok = tarfile.TarInfo("data/ok.txt")
            ok.size = 4
            tar.addfile(ok, io.BytesIO(FOO))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        return buffer.getvalue()

    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("data/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "data/ok.txt"
    device = tarfile.TarInfo("data/dev")
    device.type = tarfile.CHRTYPE
    for info, data, words in (
        (tarfile.TarInfo("/etc/cron.d/evil"), b"x", "absolute"),
        (tarfile.TarInfo("data/../../evil"), b"x", "'..'"),
        (tarfile.TarInfo("outside.txt"), b"x", "outside data/"),
        (tarfile.TarInfo("data/ok.txt"), FOO, "twice"),
        (link, b"", "symbolic link"),
        (hard, b"", "hard link"),
        (device, b"", "device"),
    ):
        job = upload(client, tar_with(info, data))
        assert (job["state"], job["task"]) == ("failed", "open tar"), job
        assert words in job["error"], job["error"]
    assert counts(runtime) == (0, 0, 0)
    assert blob_count(runtime) == 0


def test_not_a_tar_and_bad_json(client: TestClient) -> None:
    job = upload(client, b"\x1f\x8b" + bytes(1022))
    assert (job["task"], job["error"]) == ("open tar", "Failed to open tarfile.")
    job = upload(client, make_tar(GOOD_MEMBERS, b"{not json"))
    assert (job["state"], job["task"]) == ("failed", "load metadata")
    job = upload(client, make_tar(GOOD_MEMBERS, None))
    assert (job["state"], job["task"]) == ("failed", "load metadata")
    assert "no metadata.txt" in job["error"]


def test_move_copies_files_under_allowed_roots(
    make_runtime,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    source = root / "foo.txt"
    source.write_bytes(FOO)
    runtime = make_runtime(move_roots=[root])
    from tests.support.bundles import move_metadata

    with TestClient(create_client_app(runtime)) as client:
        response = client.post(
            "/pacifica/ingest/move", content=json.dumps(move_metadata({str(source): FOO}))
        )
        state = response.json()
        state = client.get(f"/pacifica/ingest/get_state/{state['job_id']}").json()
        assert (state["state"], state["task"], state["task_percent"]) == (
            "OK",
            "ingest metadata",
            "100.0",
        )
        outside = tmp_path / "elsewhere.txt"
        outside.write_bytes(FOO)
        response = client.post(
            "/pacifica/ingest/move", content=json.dumps(move_metadata({str(outside): FOO}))
        )
        state = client.get(f"/pacifica/ingest/get_state/{response.json()['job_id']}").json()
        assert (state["state"], state["task"]) == ("FAILED", "move files")
        assert "outside the allowed move roots" in state["exception"]
    assert source.read_bytes() == FOO


def create_client_app(runtime: Runtime):  # type: ignore[no-untyped-def]
    from conveyor.web.app import create_app

    return create_app(runtime=runtime)


def test_file_content_answers_ranges_and_conditions(client: TestClient) -> None:
    job = upload(client, good_tar())
    record = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()["files"][0]
    url = f"/api/v1/files/{record['id']}/content"
    whole = client.get(url)
    etag = whole.headers["etag"]
    assert etag == f'"{record["sha256"]}"'
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    part = client.get(url, headers={"Range": "bytes=1-", "If-Range": etag})
    assert (part.status_code, part.content) == (206, whole.content[1:])
    stale = client.get(url, headers={"Range": "bytes=1-", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, whole.content)
    outside = client.get(url, headers={"Range": "bytes=99-"})
    assert outside.status_code == 416
    assert outside.headers["content-range"] == f"bytes */{record['size']}"
    assert "filename*=UTF-8''" in whole.headers["content-disposition"]
