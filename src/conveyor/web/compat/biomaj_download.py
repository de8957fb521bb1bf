"""``/api/download``: the BioMAJ download service's web API, for its unchanged client.

Sessions, progress and errors live in the service's Redis, under its published keys, so a
BioMAJ installation and its ``DownloadClient`` keep working with Conveyor consuming the
``biomajdownload`` queue. Like the published service this API takes no credentials: it
only handles session counters, and belongs on the internal network with the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from conveyor.errors import BadRequest, Unavailable
from conveyor.mirror.biomaj.sessions import BadName, DownloadSessions
from conveyor.observability import metrics
from conveyor.web.deps import RuntimeDep

router = APIRouter(prefix="/api/download", tags=["biomaj download service"])
T = TypeVar("T")


class DownloadMetric(BaseModel):
    """One file's metrics, as BioMAJ's consumer posts them."""

    bank: str = Field(min_length=1, max_length=255)
    host: str = Field("na", max_length=255)
    error: Any = None
    size: int = Field(0, ge=0)
    download_time: float = Field(0, ge=0)


def _sessions(runtime: RuntimeDep) -> DownloadSessions:
    sessions = runtime.biomaj_sessions
    if sessions is None:
        raise Unavailable("the BioMAJ download service needs CONVEYOR_BIOMAJ_REDIS_URL")
    return sessions


async def _redis(call: Callable[[], T]) -> T:
    try:
        return await to_thread.run_sync(call)
    except BadName as error:
        raise BadRequest(str(error)) from None


@router.get("", summary="Health check")
async def ping() -> dict[str, str]:
    """Pong, as consul's check expects."""
    return {"msg": "pong"}


@router.post("/metrics", summary="Count downloads")
async def add_metrics(
    files: Annotated[list[DownloadMetric], Body(max_length=100_000)],
) -> dict[str, str]:
    """Per-file metrics from a consumer, added to the ``biomaj_download_*`` counters."""
    for file in files:
        if file.error:
            metrics.BIOMAJ_DOWNLOAD_ERRORS.labels(file.bank).inc()
            continue
        metrics.BIOMAJ_DOWNLOADS.labels(file.bank).inc()
        metrics.BIOMAJ_FILE_SIZE.labels(file.bank, file.host).inc(file.size)
        metrics.BIOMAJ_FILE_TIME.labels(file.bank, file.host).inc(file.download_time)
    return {"msg": "OK"}


@router.post("/session/{bank}", summary="Open a session")
async def create_session(bank: str, runtime: RuntimeDep) -> dict[str, str]:
    """A new session id for ``bank``."""
    sessions = _sessions(runtime)
    return {"session": await _redis(lambda: sessions.create(bank))}


@router.delete("/session/{bank}/{session}", summary="Clear a session")
async def clean_session(bank: str, session: str, runtime: RuntimeDep) -> dict[str, str]:
    """Forget the session; downloads still queued for it are skipped."""
    sessions = _sessions(runtime)
    await _redis(lambda: sessions.clean(bank, session))
    return {"msg": "session cleared"}


@router.get("/status/download/{bank}/{session}", summary="Download progress")
async def download_status(bank: str, session: str, runtime: RuntimeDep) -> dict[str, int]:
    """Messages finished (successes and failures) and failed; -1 when none yet."""
    sessions = _sessions(runtime)
    progress, errors = await _redis(lambda: sessions.status(bank, session))
    return {"progress": progress, "errors": errors}


@router.get("/error/download/{bank}/{session}", summary="Download errors")
async def download_errors(bank: str, session: str, runtime: RuntimeDep) -> dict[str, list[str]]:
    """The error messages, oldest first; reading them removes them, as BioMAJ does."""
    sessions = _sessions(runtime)
    return {"error": await _redis(lambda: sessions.drain_errors(bank, session))}


@router.get("/status/list/{bank}/{session}", summary="Listing status")
async def list_status(bank: str, session: str, runtime: RuntimeDep) -> dict[str, bool]:
    """Whether a listing finished."""
    sessions = _sessions(runtime)
    return {"status": await _redis(lambda: sessions.listed(bank, session))}


@router.get("/list/{bank}/{session}", summary="Listing result")
async def list_result(bank: str, session: str, runtime: RuntimeDep) -> dict[str, str | None]:
    """A listing's stored result, as stored."""
    sessions = _sessions(runtime)
    return {"files": await _redis(lambda: sessions.listing(bank, session))}
