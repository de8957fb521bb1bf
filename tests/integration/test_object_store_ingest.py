"""Ingest, read back and stream carts with the archive in S3 (moto_server) and GCS (emulator)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import GOOD_MEMBERS, good_tar, make_tar, variant

pytestmark = pytest.mark.integration


@pytest.fixture(params=["s3", "gs"])
def archive_url(request: pytest.FixtureRequest) -> str:
    fixture = "s3_archive_url" if request.param == "s3" else "gcs_archive_url"
    return str(request.getfixturevalue(fixture))


def test_ingest_into_an_object_store(
    make_runtime: Callable[..., Runtime], archive_url: str
) -> None:
    runtime = make_runtime(archive_url=archive_url)
    with TestClient(create_app(runtime=runtime)) as client:
        job = client.post("/api/v1/ingest", content=good_tar(metadata_first=False)).json()
        assert job["state"] == "succeeded", job
        transaction = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()
        by_name = {f"{f['subdir']}/{f['name']}": f for f in transaction["files"]}
        for key, data in GOOD_MEMBERS.items():
            record = by_name[key.removeprefix("data/")]
            assert record["sha256"] == hashlib.sha256(data).hexdigest()
            assert client.get(f"/api/v1/files/{record['id']}/content").content == data
            part = client.get(
                f"/api/v1/files/{record['id']}/content", headers={"Range": "bytes=1-2"}
            )
            assert (part.status_code, part.content) == (206, data[1:3])
        for fmt in ("tar", "zip"):
            cart = client.post(
                "/api/v1/carts", json={"transactions": [transaction["id"]], "format": fmt}
            ).json()
            whole = client.get(cart["bundle"]).content
            assert len(whole) == cart["bytes_total"]
            resumed = client.get(cart["bundle"], headers={"Range": "bytes=700-"}).content
            assert whole[:700] + resumed == whole
        failed = client.post(
            "/api/v1/ingest", content=make_tar(GOOD_MEMBERS, variant("bad-hashsum"))
        ).json()
        assert (failed["state"], failed["task"]) == ("failed", "ingest files")
        assert client.get("/readyz").json()["ready"] is True
    # foo/bar blobs of the good bundle remain; nothing of the failed one is left behind
    assert sorted(runtime.archive.blobs()) == sorted(
        {hashlib.sha256(data).hexdigest() for data in GOOD_MEMBERS.values()}
    )
    assert list(runtime.archive.store.keys("tmp")) == []
