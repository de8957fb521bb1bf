"""BioMAJ's ``remote.list``: a JSON file naming the files to take, instead of a listing.

The file holds a list of file records as BioMAJ writes them: ``name`` (the path under
``root``, the remote folder, which defaults to ``remote.dir`` and must lie within it), and
optionally ``save_as`` (default: ``name``), ``size`` and the remote date as ``year``,
``month`` and ``day``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.ingest.paths import UnsafePath, relative_parts
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError

MAX_LIST_BYTES = 64 * 1024 * 1024


def read_remote_list(path: str, remote_dir: str) -> Iterator[tuple[str, str, RemoteEntry]]:
    """``(path under remote_dir, saved path, entry)`` for each record of the file ``path``."""
    records = _load(Path(path))
    base = "/" + "/".join(relative_parts(remote_dir))
    for number, record in enumerate(records, start=1):
        yield _record(record, base, f"{path}, record {number}")


def _load(path: Path) -> list[Any]:
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise SourceError(
                f"remote.list {path} is larger than {MAX_LIST_BYTES} bytes", permanent=True
            )
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"remote.list {path} cannot be read: {error}", permanent=True) from None
    if not isinstance(records, list):
        raise SourceError(f"remote.list {path} is not a JSON list of files", permanent=True)
    return records


def _record(record: Any, base: str, where: str) -> tuple[str, str, RemoteEntry]:
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise SourceError(f"{where}: a file record needs a name", permanent=True)
    name = record["name"]
    try:
        root = "/" + "/".join(relative_parts(str(record.get("root") or base)))
        full = "/".join([root.rstrip("/"), *relative_parts(name)])
        save_as = "/".join(relative_parts(str(record.get("save_as") or name)))
    except UnsafePath as error:
        raise SourceError(f"{where}: {error}", permanent=True) from None
    inside = full.startswith(base.rstrip("/") + "/")
    if not inside or not save_as:
        raise SourceError(f"{where}: {full!r} is not a file under {base}", permanent=True)
    path = full[len(base.rstrip("/")) + 1 :]
    size = record.get("size")
    entry = RemoteEntry(
        path.rsplit("/", 1)[-1],
        size=int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
        mtime=_date(record),
        fingerprint=str(record.get("hash") or "") or None,
    )
    return path, save_as, entry


def _date(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime(int(record["year"]), int(record["month"]), int(record["day"]), tzinfo=UTC)
    except (KeyError, TypeError, ValueError):
        return None
