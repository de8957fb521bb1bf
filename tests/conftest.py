"""Shared fixtures: settings, an inline runtime and an in-process API client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.config import Settings, load_settings
from conveyor.runtime import Runtime
from conveyor.web.app import create_app

# S3 and GCS emulator fixtures (moto_s3, s3_archive_url, gcs_emulator, gcs_archive_url).
pytest_plugins = ["tests.support.object_stores"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the settings they set."""
    import os

    for key in list(os.environ):
        if key.startswith("CONVEYOR_"):
            monkeypatch.delenv(key)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings in a fresh data dir, with test-friendly lease and sweep times."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "lease_seconds": 5.0,
            "sweep_seconds": 0.5,
            "db_connect_attempts": 2,
            "db_connect_wait": 0.1,
            # Spent blobs go at once: tests see the archive settle without a sweep.
            "spent_blob_grace_seconds": 0.0,
        }
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def make_runtime(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Runtime]]:
    """Open runtimes (inline executor by default); all are closed after the test."""
    opened: list[Runtime] = []

    def build(inline: bool = True, **overrides: Any) -> Runtime:
        runtime = Runtime.open(make_settings(**overrides), inline=inline)
        opened.append(runtime)
        return runtime

    yield build
    for runtime in opened:
        runtime.close()


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    """An inline runtime on SQLite and a local archive folder."""
    return make_runtime()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The API over the inline runtime: jobs finish before the request that queued them."""
    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client
