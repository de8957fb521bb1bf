"""States of a mirror run and of each file it selected."""

from __future__ import annotations

QUEUED = "queued"
LISTING = "listing"
DOWNLOADING = "downloading"
PUBLISHING = "publishing"
PUBLISHED = "published"
UP_TO_DATE = "up_to_date"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE = (QUEUED, LISTING, DOWNLOADING, PUBLISHING)
FINISHED = (PUBLISHED, UP_TO_DATE, FAILED, CANCELLED)

FILE_PENDING = "pending"
FILE_DONE = "done"
FILE_REUSED = "reused"
FILE_FAILED = "failed"


def ended_topic(run_id: int) -> str:
    """The commit notice (:mod:`conveyor.db.notices`) of the transaction that ends a run."""
    return f"mirror-run/{run_id}"
