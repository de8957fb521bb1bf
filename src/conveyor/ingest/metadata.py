"""The Pacifica ``metadata.txt`` list: parsing and validation.

Entries are routed by ``destinationTable``. Entries for tables we do not store (the
uploader's UI keys, ``NothingReally`` …) are accepted and ignored, as the published service does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from conveyor.ingest.paths import UnsafePath, file_key

# shake_* digests need a length, so they cannot name a fixed hash.
HASHTYPES = frozenset(
    name for name in hashlib.algorithms_available if not name.startswith("shake")
) | frozenset(hashlib.algorithms_guaranteed - {"shake_128", "shake_256"})
MIMETYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]{0,126}/[A-Za-z0-9][\w!#$&^.+-]{0,126}$")
ZONES = {
    "UTC": 0, "GMT": 0, "Z": 0, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
    "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "CET": 1, "CEST": 2,
}  # fmt: skip
CTIME = re.compile(r"^\w{3} (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?: ([A-Z]{1,5}))? (\d{4})$")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MetadataError(ValueError):
    """``metadata.txt`` cannot be used; the message says which entry and why."""


@dataclass(slots=True)
class FileEntry:
    """One ``Files`` entry."""

    key: str
    subdir: str
    name: str
    size: int
    hashtype: str | None
    hashsum: str | None
    mimetype: str
    mtime: datetime | None
    ctime: datetime | None
    source: str | None


@dataclass
class BundleMetadata:
    """What a bundle says about itself."""

    submitter: str | None = None
    project: str | None = None
    instrument: str | None = None
    key_values: list[tuple[str, str]] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)

    def hashtypes(self) -> set[str]:
        """Every hash type the files declare."""
        return {entry.hashtype for entry in self.files if entry.hashtype}


def parse_time(value: Any) -> datetime | None:
    """A timestamp from ISO 8601, epoch seconds or ``date``/``ctime`` text; ``None`` if unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        pass
    match = CTIME.match(text)
    if match and match.group(1) in MONTHS:
        month = MONTHS.index(match.group(1)) + 1
        day, hour, minute, second = (int(match.group(i)) for i in (2, 3, 4, 5))
        offset = ZONES.get(match.group(6) or "UTC", 0)
        zone = timezone(timedelta(hours=offset))
        try:
            local = datetime(int(match.group(7)), month, day, hour, minute, second, tzinfo=zone)
        except ValueError:
            return None
        return local.astimezone(UTC)
    return None


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if value is None or isinstance(value, dict | list):
        raise MetadataError(f"{where}: {key!r} is missing or not a scalar")
    return str(value)


def _file_entry(entry: dict[str, Any], where: str) -> FileEntry:
    name = _text(entry, "name", where)
    subdir = str(entry.get("subdir") or "")
    try:
        key = file_key(subdir, name)
    except UnsafePath as exc:
        raise MetadataError(f"{where}: {exc}") from None
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise MetadataError(f"{where} ({key}): size {size!r} is not a whole number")
    try:
        size_value = int(size)
    except ValueError:
        raise MetadataError(f"{where} ({key}): size {size!r} is not a whole number") from None
    if size_value < 0:
        raise MetadataError(f"{where} ({key}): size {size_value} is negative")
    hashtype = entry.get("hashtype")
    hashsum = entry.get("hashsum")
    if hashsum is not None:
        hashsum = str(hashsum).strip().lower()
        if ":" in hashsum:
            prefix, _, hashsum = hashsum.partition(":")
            hashtype = hashtype or prefix
    if hashtype is not None:
        hashtype = str(hashtype).strip().lower()
        if hashtype not in HASHTYPES:
            raise MetadataError(
                f"{where} ({key}): hashtype {hashtype!r} is not a hashlib algorithm"
            )
    if hashsum and not hashtype:
        raise MetadataError(f"{where} ({key}): hashsum given without hashtype")
    return FileEntry(
        key=key,
        subdir=key.rpartition("/")[0],
        name=name,
        size=size_value,
        hashtype=hashtype if hashsum else None,
        hashsum=hashsum or None,
        mimetype=str(entry.get("mimetype") or "application/octet-stream"),
        mtime=parse_time(entry.get("mtime")),
        ctime=parse_time(entry.get("ctime")),
        source=str(entry["source"]) if entry.get("source") is not None else None,
    )


def _route(result: BundleMetadata, entry: dict[str, Any], where: str) -> None:
    table = entry.get("destinationTable")
    if table == "Files":
        result.files.append(_file_entry(entry, where))
    elif table == "TransactionKeyValue":
        result.key_values.append((_text(entry, "key", where), _text(entry, "value", where)))
    elif table == "Transactions.submitter":
        result.submitter = _text(entry, "value", where)
    elif table in ("Transactions.project", "Transactions.proposal"):
        result.project = _text(entry, "value", where)
    elif table == "Transactions.instrument":
        result.instrument = _text(entry, "value", where)


def parse_metadata(document: bytes | str) -> BundleMetadata:
    """Parse and check a metadata list; raise :class:`MetadataError` saying what is wrong."""
    try:
        entries = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise MetadataError("metadata must be a JSON list of entries")
    result = BundleMetadata()
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise MetadataError(f"{where} is not a JSON object")
        _route(result, entry, where)
        if entry.get("destinationTable") == "Files":
            key = result.files[-1].key
            if key in seen:
                raise MetadataError(f"{where}: file {key!r} is listed twice")
            seen.add(key)
    return result


def check_mimetypes(metadata: BundleMetadata) -> list[dict[str, str]]:
    """Per-file errors for mimetypes that are not ``type/subtype``."""
    return [
        {"item": entry.key, "error": f"mimetype {entry.mimetype!r} is not type/subtype"}
        for entry in metadata.files
        if not MIMETYPE.match(entry.mimetype)
    ]
