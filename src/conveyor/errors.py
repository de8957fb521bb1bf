"""Errors that carry an HTTP status and a message a person can read."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error a client may see; ``status`` is the HTTP status it maps to."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ConveyorError):
    """The request is malformed."""

    status = 400
    title = "Bad Request"


class Unauthorized(ConveyorError):
    """No valid credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(ConveyorError):
    """Valid credentials, but not allowed."""

    status = 403
    title = "Forbidden"


class NotFound(ConveyorError):
    """No such thing (or not visible to the caller)."""

    status = 404
    title = "Not Found"


class Conflict(ConveyorError):
    """The request conflicts with the current state."""

    status = 409
    title = "Conflict"


class RangeNotSatisfiable(ConveyorError):
    """The requested byte range lies outside the content."""

    status = 416
    title = "Range Not Satisfiable"


class Unavailable(ConveyorError):
    """A backing service is down; try again later."""

    status = 503
    title = "Service Unavailable"
