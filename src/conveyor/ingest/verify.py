"""Checking staged files against what ``metadata.txt`` declares."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from conveyor.ingest.metadata import BundleMetadata, FileEntry
from conveyor.ingest.staging import StagedFile
from conveyor.storage.archive import Archive

ProgressFn = Callable[[float], None]
PROGRESS_INTERVAL = 1.0


def _digest(archive: Archive, sha256: str, hashtype: str) -> str:
    hasher = hashlib.new(hashtype)
    for chunk in archive.read_range(sha256):
        hasher.update(chunk)
    return hasher.hexdigest()


def check_entry(archive: Archive, entry: FileEntry, staged: StagedFile | None) -> str | None:
    """Why the staged blob does not match the entry, or ``None`` when it does."""
    if staged is None:
        return "listed in metadata.txt but not in the bundle"
    if staged.size != entry.size:
        return f"holds {staged.size} bytes; metadata.txt says {entry.size}"
    if not staged.created and archive.size(staged.sha256) != staged.size:
        return "its blob disappeared from the archive while the job ran; submit it again"
    if entry.hashtype and entry.hashsum:
        actual = staged.hashes.get(entry.hashtype)
        if actual is None:
            actual = _digest(archive, staged.sha256, entry.hashtype)
        if actual != entry.hashsum:
            return f"{entry.hashtype} is {actual}; metadata.txt says {entry.hashsum}"
    return None


def verify_staged(
    archive: Archive,
    metadata: BundleMetadata,
    staged: dict[str, StagedFile],
    progress: ProgressFn,
) -> list[dict[str, str]]:
    """Per-file errors: missing, wrong size, wrong hash, or present but not declared."""
    errors: list[dict[str, str]] = []
    declared = set()
    last = time.monotonic()
    total = max(1, len(metadata.files))
    for index, entry in enumerate(metadata.files):
        declared.add(entry.key)
        problem = check_entry(archive, entry, staged.get(entry.key))
        if problem:
            errors.append({"item": entry.key, "error": problem})
        if time.monotonic() - last > PROGRESS_INTERVAL:
            last = time.monotonic()
            progress(round(100.0 * index / total, 1))
    errors.extend(
        {"item": key, "error": "in the bundle but not listed in metadata.txt"}
        for key in sorted(set(staged) - declared)
    )
    return errors


def summarise(errors: list[dict[str, str]]) -> str:
    """One line for the job's error field: the first problem and how many more."""
    first = f"{errors[0]['item']}: {errors[0]['error']}"
    return first if len(errors) == 1 else f"{first} (and {len(errors) - 1} more file errors)"
