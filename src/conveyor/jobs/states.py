"""Job states and the Pacifica view of them."""

from __future__ import annotations

from typing import Final

RECEIVING: Final = "receiving"
QUEUED: Final = "queued"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

ACTIVE: Final = (QUEUED, RUNNING)
FINISHED: Final = (SUCCEEDED, FAILED, CANCELLED)
ALL: Final = (RECEIVING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
