"""Fixtures for the conformance suites: the object store emulators and their buckets."""

from tests.support.object_stores import (  # noqa: F401
    gcs_archive_url,
    gcs_emulator,
    moto_s3,
    s3_archive_url,
)
