"""The FastAPI application."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor import __version__
from conveyor.config import Settings
from conveyor.observability import metrics
from conveyor.runtime import Runtime
from conveyor.web import health, problems
from conveyor.web.api_v1 import (
    admin,
    carts,
    consumers,
    events,
    ingest,
    jobs,
    mirrors,
    transactions,
)
from conveyor.web.compat import (
    biomaj_download,
    motrpac,
    pacifica_archive,
    pacifica_cartd,
    pacifica_ingest,
    pacifica_notifications,
    pacifica_policy,
)

DESCRIPTION = (
    "Conveyor moves research data: ingest bundles into a checksummed archive, follow jobs, "
    "read transactions and files. `/pacifica/...` mounts speak the published Pacifica APIs."
)


class RequestMetrics:
    """Times every request by route template, without buffering streamed bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], path, str(status["code"])).observe(
                time.perf_counter() - started
            )


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, close_runtime: bool = False
) -> FastAPI:
    """The app; it opens (and later closes) a runtime unless one is given, and closes a
    given one with ``close_runtime``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            try:
                yield
            finally:
                if close_runtime:
                    runtime.close()
            return
        assert settings is not None, "create_app needs settings or a runtime"
        opened = Runtime.open(settings)
        opened.executor.start()
        app.state.runtime = opened
        try:
            yield
        finally:
            opened.close()

    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    if runtime is not None:
        app.state.runtime = runtime
    problems.install(app)
    # Routes are matched in this order: the ones clients poll come first.
    for router in (
        carts.router,
        mirrors.router,
        events.router,
        consumers.router,
        biomaj_download.router,
        pacifica_cartd.router,
        jobs.router,
        pacifica_ingest.router,
        health.router,
        ingest.router,
        transactions.router,
        admin.router,
        pacifica_policy.router,
        pacifica_archive.router,
        pacifica_notifications.router,
        motrpac.router,
    ):
        app.include_router(router)
    app.add_middleware(RequestMetrics)
    active = settings or (runtime.settings if runtime else None)
    if active is not None and active.tracing:
        from conveyor.observability.tracing import enable_tracing

        enable_tracing(app)
    return app


def app_from_environment() -> FastAPI:
    """The app of one of several server processes: settings from the environment."""
    from conveyor.config import load_settings
    from conveyor.heap import freeze_startup_objects
    from conveyor.observability.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings=settings)
    freeze_startup_objects()
    return app


def describe(app: FastAPI) -> dict[str, Any]:
    """Routes, for diagnostics."""
    return {"routes": [getattr(route, "path", "") for route in app.routes]}
