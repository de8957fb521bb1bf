"""Cart states: waiting → staging → bundling → ready, or error."""

from __future__ import annotations

from typing import Final

WAITING: Final = "waiting"
STAGING: Final = "staging"
BUNDLING: Final = "bundling"
READY: Final = "ready"
ERROR: Final = "error"

IN_PROGRESS: Final = (WAITING, STAGING, BUNDLING)
FINISHED: Final = (READY, ERROR)
