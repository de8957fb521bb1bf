"""Waiting for a server at start-up, as the published services' DATABASE_CONNECT_* do."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """A server did not answer within the configured attempts."""


def wait_until_reachable(
    what: str,
    probe: Callable[[], None],
    *,
    attempts: int,
    wait: float,
    errors: tuple[type[Exception], ...],
    failure: type[Unreachable],
    reason: Callable[[Exception], str] = str,
) -> None:
    """Call ``probe`` until it succeeds, up to ``attempts`` times ``wait`` seconds apart.

    Raises ``failure`` with one line naming ``what`` and the last reason.
    """
    for attempt in range(1, attempts + 1):
        try:
            probe()
            return
        except errors as exc:
            why = reason(exc)
            if attempt == attempts:
                raise failure(f"{what} is unreachable after {attempts} attempts: {why}") from None
            log.warning("%s not ready (attempt %d of %d): %s", what, attempt, attempts, why)
            time.sleep(wait)
