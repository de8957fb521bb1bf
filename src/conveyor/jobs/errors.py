"""How a job step reports failure."""

from __future__ import annotations

from typing import Any


class StepFailed(Exception):
    """A job step failed for a reason a person can read; the job ends in ``failed``.

    ``items`` lists per-file errors (``{"item": name, "error": reason}``).
    """

    def __init__(self, task: str, message: str, items: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.message = message
        self.items = items or []


class RetryLater(Exception):
    """A transient failure (a store or server briefly unreachable): try the job again later."""
