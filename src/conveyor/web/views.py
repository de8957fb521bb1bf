"""JSON shapes of jobs, transactions and files, native and Pacifica."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row

from conveyor.db.models import Cart, File, Job, Transaction
from conveyor.db.types import iso_z
from conveyor.jobs import states


def job_view(job: Job) -> dict[str, Any]:
    """A job in the native API."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "task": job.task,
        "task_percent": job.task_percent,
        "complete": job.state in states.FINISHED,
        "error": job.error,
        "item_errors": job.item_errors,
        "attempts": job.attempts,
        "owner": job.owner,
        "transaction_id": job.transaction_id,
        "created_at": iso_z(job.created_at),
        "updated_at": iso_z(job.updated_at),
        "finished_at": iso_z(job.finished_at),
    }


def _pacifica_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def pacifica_state(job: Job) -> dict[str, Any]:
    """A job as the published ingest service's ``get_state`` answers it."""
    failed = job.state in (states.FAILED, states.CANCELLED)
    return {
        "job_id": job.id,
        "state": "FAILED" if failed else "OK",
        "task": job.task,
        "task_percent": str(float(job.task_percent)),
        "complete": job.state in states.FINISHED,
        "updated": _pacifica_time(job.updated_at),
        "created": _pacifica_time(job.created_at),
        "exception": job.error if failed else "",
    }


def file_view(row: File) -> dict[str, Any]:
    """A file in the native API."""
    return {
        "id": row.id,
        "transaction_id": row.transaction_id,
        "subdir": row.subdir,
        "name": row.name,
        "size": row.size,
        "sha256": row.sha256,
        "crc32": f"{row.crc32:08x}" if row.crc32 is not None else None,
        "mimetype": row.mimetype,
        "mtime": iso_z(row.mtime),
        "ctime": iso_z(row.ctime),
        "hashtype": row.hashtype,
        "hashsum": row.hashsum,
        "source": row.source,
    }


def transaction_view(row: Transaction) -> dict[str, Any]:
    """A transaction in the native API, without its files."""
    return {
        "id": row.id,
        "origin": row.origin,
        "submitter": row.submitter,
        "project": row.project,
        "instrument": row.instrument,
        "job_id": row.job_id,
        "created_at": iso_z(row.created_at),
        "file_count": row.file_count,
        "total_size": row.total_size,
        "key_values": [{"key": kv.key, "value": kv.value} for kv in row.key_values],
    }


def cart_view(cart: Cart | Row[Any]) -> dict[str, Any]:
    """A cart in the native API."""
    return {
        "id": cart.id,
        "format": cart.format,
        "mode": cart.mode,
        "compression": cart.compression,
        "status": cart.state,
        "file_count": cart.file_count,
        "bytes_total": cart.total_size,
        "bytes_done": cart.bytes_done,
        "error": cart.error,
        "item_errors": cart.item_errors,
        "etag": cart.etag,
        "job_id": cart.job_id,
        "created_at": iso_z(cart.created_at),
        "ready_at": iso_z(cart.ready_at),
        "expires_at": iso_z(cart.expires_at),
        "bundle": f"/api/v1/carts/{cart.id}/bundle",
    }
