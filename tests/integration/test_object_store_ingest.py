"""Ingest, read back and stream carts with the archive in S3 (moto_server) and GCS (emulator)."""

from __future__ import annotations

import hashlib
import io
import zipfile
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


def test_built_carts_in_an_object_store(
    make_runtime: Callable[..., Runtime], archive_url: str
) -> None:
    bundles_url = archive_url.replace("/archive?", "/bundles?", 1)
    runtime = make_runtime(archive_url=archive_url, cart_store_url=bundles_url)
    with TestClient(create_app(runtime=runtime)) as client:
        job = client.post("/api/v1/ingest", content=good_tar()).json()
        request = {"transactions": [job["transaction_id"]], "mode": "build"}
        streamed = client.post("/api/v1/carts", json={**request, "mode": "stream"}).json()
        built = client.post("/api/v1/carts", json=request).json()
        assert built["status"] == "ready", built
        whole = client.get(built["bundle"]).content
        assert whole == client.get(streamed["bundle"]).content
        resumed = client.get(built["bundle"], headers={"Range": "bytes=1000-"})
        assert (resumed.status_code, whole[:1000] + resumed.content) == (206, whole)
        deflated = client.post(
            "/api/v1/carts", json={**request, "format": "zip", "compression": "deflate"}
        ).json()
        assert deflated["status"] == "ready", deflated
        data = client.get(deflated["bundle"]).content
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            assert archive.read("a/b/foo.txt") == GOOD_MEMBERS["data/a/b/foo.txt"]
        assert len(list(runtime.bundles.keys("bundles"))) == 2
        assert client.delete(f"/api/v1/carts/{built['id']}").status_code == 204
        assert len(list(runtime.bundles.keys("bundles"))) == 1
    assert list(runtime.bundles.keys("tmp")) == []
