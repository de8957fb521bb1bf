"""Errors as RFC 9457 problem details (Pacifica-shaped JSON under /pacifica); never a traceback."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from conveyor import __version__
from conveyor.errors import ConveyorError

log = logging.getLogger(__name__)
PROBLEM_TYPE = "application/problem+json"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(request: Request, status: int, detail: str, **extra: Any) -> JSONResponse:
    """A problem-details answer, or the Pacifica error body on a /pacifica mount."""
    if request.url.path.startswith("/pacifica/"):
        body = {
            "status": f"{status} {_reason(status)}",
            "message": detail,
            "traceback": "",
            "version": f"conveyor {__version__}",
        }
        return JSONResponse(body, status_code=status)
    content = {
        "type": "about:blank",
        "title": _reason(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(content, status_code=status, media_type=PROBLEM_TYPE)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        errors.append({"location": location or "body", "message": str(error.get("msg", ""))})
    first = errors[0] if errors else {"location": "body", "message": "invalid request"}
    return f"{first['location']}: {first['message']}", errors


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a readable JSON answer."""

    @app.exception_handler(ConveyorError)
    async def conveyor_error(request: Request, exc: ConveyorError) -> JSONResponse:
        response = problem(request, exc.status, exc.message)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_detail(exc)
        return problem(request, 422, detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = problem(request, exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error(
            "unhandled error %s on %s %s",
            reference,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return problem(
            request, 500, f"internal error; the server log has the details under {reference}"
        )
