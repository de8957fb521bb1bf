"""Which function runs which kind of job. Domain packages register their handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.jobs.context import JobContext

JobHandler = Callable[["JobContext"], None]
HANDLERS: dict[str, JobHandler] = {}


def job_handler(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Register the decorated function as the handler of jobs of ``kind``."""

    def register(function: JobHandler) -> JobHandler:
        HANDLERS[kind] = function
        return function

    return register
