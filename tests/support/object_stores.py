"""Object store emulators for tests: moto's S3 server and the GCS emulator, one per session.

The session fixtures start a server on a free loopback port and yield its endpoint URL; the
function fixtures give each test a fresh, uniquely named bucket and return an archive URL for
it, emptying and removing the bucket afterwards. The plain functions (``make_s3_bucket`` …)
are there for tests that want a bucket without the fixtures.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.services import free_port, require_command, start_server, stop_server

S3_REGION = "eu-west-1"  # moto refuses the location constraint s3fs sends for us-east-1
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": S3_REGION,
}
# Without this gcsfs probes every bucket over gRPC for hierarchical namespaces and stalls 60 s.
GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def unique_bucket_name(prefix: str = "conveyor-test") -> str:
    """A bucket name valid for both S3 and GCS, unique to this call."""
    return f"{prefix}-{uuid.uuid4().hex}"


# --- S3 (moto) ---------------------------------------------------------------------------


@functools.cache
def s3_filesystem(endpoint: str) -> Any:
    """An s3fs filesystem for managing buckets at ``endpoint``, apart from the archive's own."""
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_ENV["AWS_ACCESS_KEY_ID"],
        secret=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": endpoint, "region_name": S3_REGION},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def make_s3_bucket(endpoint: str, prefix: str = "archive") -> str:
    """Create a fresh bucket at ``endpoint`` and return an archive URL under it."""
    bucket = unique_bucket_name()
    s3_filesystem(endpoint).mkdir(bucket, region_name=S3_REGION)
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region={S3_REGION}"


def remove_s3_bucket(endpoint: str, url: str) -> None:
    """Delete everything in the bucket of archive ``url``, then the bucket itself."""
    bucket = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    fs = s3_filesystem(endpoint)
    keys = fs.find(bucket)
    if keys:
        fs.rm(keys)
    fs.rmdir(bucket)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server for the session; yields its endpoint URL."""
    command = require_command("moto_server")
    port = free_port()
    log = tmp_path_factory.mktemp("moto_s3") / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_ENV.items():
            patch.setenv(name, value)
        process = start_server([command, "-H", "127.0.0.1", "-p", str(port)], port, log, env=S3_ENV)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_server(process)


@pytest.fixture
def s3_archive_url(moto_s3: str) -> Iterator[str]:
    """An archive URL in a fresh S3 bucket, emptied and removed after the test."""
    url = make_s3_bucket(moto_s3)
    yield url
    remove_s3_bucket(moto_s3, url)


# --- Google Cloud Storage (gcp-storage-emulator) -----------------------------------------


@functools.cache
def gcs_filesystem(endpoint: str) -> Any:
    """A gcsfs filesystem for managing buckets at ``endpoint``, apart from the archive's own."""
    import gcsfs

    return gcsfs.GCSFileSystem(
        endpoint_url=endpoint,
        token="anon",
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def make_gcs_bucket(endpoint: str, prefix: str = "archive") -> str:
    """Create a fresh bucket at ``endpoint`` and return an archive URL under it."""
    bucket = unique_bucket_name()
    gcs_filesystem(endpoint).mkdir(bucket)
    return f"gs://{bucket}/{prefix}?endpoint_url={endpoint}&token=anon"


def remove_gcs_bucket(endpoint: str, url: str) -> None:
    """Delete everything in the bucket of archive ``url``, then the bucket itself."""
    bucket = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    fs = gcs_filesystem(endpoint)
    keys = fs.find(bucket)
    if keys:
        fs.rm(keys)
    fs.rmdir(bucket)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The in-memory GCS emulator for the session; yields its endpoint URL."""
    command = require_command("gcp-storage-emulator")
    port = free_port()
    log = tmp_path_factory.mktemp("gcs_emulator") / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in GCS_ENV.items():
            patch.setenv(name, value)
        process = start_server(
            [command, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
            port,
            log,
            env=GCS_ENV,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_server(process)


@pytest.fixture
def gcs_archive_url(gcs_emulator: str) -> Iterator[str]:
    """An archive URL in a fresh GCS bucket, emptied and removed after the test."""
    url = make_gcs_bucket(gcs_emulator)
    yield url
    remove_gcs_bucket(gcs_emulator, url)
