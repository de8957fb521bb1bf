"""Downloading one file: resume from where it stopped, check it, then give it its name.

Bytes go to ``<target>.part``; a cut connection resumes from the part's length (FTP REST,
HTTP Range, SFTP offset), a stall raises after the source's stall timeout and is retried
under the mirror's policy, and permanent errors (404, 550, bad credentials) end the file at
once. The whole file is checked (size against the listing, archive structure) before the
rename, so a truncated or corrupt file is never visible under its real name: it is
deleted and fetched again, as BioMAJ does for archives but also for sizes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity
from isal.isal_zlib import crc32  # zlib's values, 8x faster (see storage.archive.Crc32)

from conveyor.mirror.errors import MirrorError, SourceError
from conveyor.mirror.integrity import CorruptFile, check_archive
from conveyor.mirror.retry import RetryPolicy
from conveyor.mirror.sources.base import Source

PART_SUFFIX = ".part"
HASH_CHUNK = 1024 * 1024
# After this many transfers in a row without a throttle reply, one more connection is allowed.
RECOVER_AFTER = 20


@dataclass(frozen=True)
class Wanted:
    """A file to fetch: remote path, the name to report, the listed size, where to put it,
    and the digest a sidecar (``.md5``, ``.sha256``) says it has, as ``(algorithm, hex)``.
    With ``keep_part`` the checked file stays under its ``.part`` name, for a caller that
    moves it on itself (the archive takes it by one rename)."""

    path: str
    name: str
    size: int | None
    target: Path
    digest: tuple[str, str] | None = None
    keep_part: bool = False


@dataclass(frozen=True)
class Fetched:
    """A checked file on disk (under its final name, or its part name with ``keep_part``),
    with its digests and what it took."""

    path: Path
    size: int
    sha256: str
    md5: str | None
    crc32: int
    attempts: int
    resumed: int


class HostGate:
    """At most ``limit`` transfers at once to one host, fewer after it says it is busy.

    A throttle reply (FTP 421, HTTP 429 or 503) lowers the limit by one, down to one, and
    holds new transfers back for the ``Retry-After`` it gave; a run of successes raises the
    limit again, up to the configured maximum (lftp's dynamic connection limit).
    """

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = limit
        self.limit = limit
        self._active = 0
        self._calm = 0
        self._paused_until = 0.0
        self._clock = clock
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, on_wait: Callable[[], None] | None = None) -> Any:
        """Hold one transfer slot; ``on_wait`` runs once if the caller has to wait."""
        with self._changed:
            waited = False
            while self._active >= self.limit or self._clock() < self._paused_until:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                pause = self._paused_until - self._clock()
                self._changed.wait(timeout=pause if pause > 0 else None)
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()

    def throttled(self, retry_after: float | None) -> None:
        """The host said it is busy: one connection fewer, and a pause if it asked for one."""
        with self._changed:
            self.limit = max(1, min(self.limit, self._active) - 1)
            self._calm = 0
            if retry_after:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)
            self._changed.notify_all()

    def succeeded(self) -> None:
        """A transfer went through; after enough of them, allow one more connection."""
        with self._changed:
            self._calm += 1
            if self._calm >= RECOVER_AFTER and self.limit < self.maximum:
                self.limit += 1
                self._calm = 0
                self._changed.notify_all()


class _Digests:
    """sha256 (the archive's name) and CRC-32 (zip's) always; md5 only for an md5 sidecar,
    as it costs as much as both together."""

    def __init__(self, with_md5: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        self.crc32 = 0
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.md5 is not None:
            self.md5.update(chunk)
        self.crc32 = crc32(chunk, self.crc32)
        self.size += len(chunk)


def _retryable(error: BaseException) -> bool:
    if isinstance(error, SourceError):
        return not error.permanent
    return isinstance(error, MirrorError)


_RETRYABLE = tenacity.retry_if_exception(_retryable)


def _retrying(policy: RetryPolicy, sleep: Callable[[float], None]) -> tenacity.Retrying:
    """The policy's retry loop; with the real clock, one shared by every transfer thread."""
    if sleep is time.sleep:
        return _shared_retrying(policy)
    return policy.retrying(retry=_RETRYABLE, sleep=sleep)


@functools.lru_cache(maxsize=128)
def _shared_retrying(policy: RetryPolicy) -> tenacity.Retrying:
    # tenacity keeps each loop's state and statistics per thread, so one object serves all;
    # making one per file was 6 % of a 1,000-file run's interpreter time.
    return policy.retrying(retry=_RETRYABLE)


def fetch(
    source: Source,
    wanted: Wanted,
    policy: RetryPolicy,
    *,
    gate: HostGate,
    attempt_seconds: float,
    check_archives: bool = True,
    on_bytes: Callable[[int], None] = lambda count: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Fetch ``wanted`` through ``source`` under ``policy``; raises the last error when it gives up.

    A ``.part`` left by an earlier run is resumed; its bytes are hashed first.
    """
    part = wanted.target.with_name(wanted.target.name + PART_SUFFIX)
    progress = _Progress(_digest_existing(part, _wants_md5(wanted)))
    retrying = _retrying(policy, sleep)
    try:
        for attempt in retrying:
            with attempt:
                _try_once(
                    source, wanted, part, progress, gate, attempt_seconds, check_archives, on_bytes
                )
    except MirrorError as error:
        error.attempts = retrying.statistics.get("attempt_number", 1)
        if part.exists() and part.stat().st_size == 0:
            part.unlink()  # nothing to resume from
        raise
    gate.succeeded()
    if not wanted.keep_part:
        part.replace(wanted.target)
    digests = progress.digests
    return Fetched(
        part if wanted.keep_part else wanted.target,
        digests.size,
        digests.sha256.hexdigest(),
        digests.md5.hexdigest() if digests.md5 is not None else None,
        digests.crc32,
        attempts=retrying.statistics.get("attempt_number", 1),
        resumed=progress.resumed,
    )


@dataclass
class _Progress:
    digests: _Digests
    resumed: int = 0


def _try_once(
    source: Source,
    wanted: Wanted,
    part: Path,
    progress: _Progress,
    gate: HostGate,
    attempt_seconds: float,
    check_archives: bool,
    on_bytes: Callable[[int], None],
) -> None:
    """One attempt, resuming from what the part holds; a corrupt part is thrown away."""
    _create(part)  # an empty file is fetched by reading nothing, and still checked and renamed
    try:
        with gate.slot(on_wait=source.close):
            if progress.digests.size:
                progress.resumed += 1
            try:
                _attempt(source, wanted, part, progress.digests, attempt_seconds, on_bytes)
            except SourceError as error:
                if error.throttled:
                    # While this transfer still holds its slot, so that it counts as active.
                    gate.throttled(error.retry_after)
                raise
        _check_digest(wanted, progress.digests)
        if check_archives:
            check_archive(part, wanted.name)
    except CorruptFile:
        part.unlink(missing_ok=True)
        progress.digests = _Digests(_wants_md5(wanted))
        raise


def _attempt(
    source: Source,
    wanted: Wanted,
    part: Path,
    digests: _Digests,
    attempt_seconds: float,
    on_bytes: Callable[[int], None],
) -> None:
    deadline = time.monotonic() + attempt_seconds
    expected = wanted.size
    if expected is None or digests.size < expected:
        for chunk in source.read_into(wanted.path, part, digests.size):
            digests.update(chunk)
            on_bytes(len(chunk))
            if time.monotonic() > deadline:
                raise SourceError(
                    f"{wanted.name}: not done after {attempt_seconds:g} s (timeout.download)"
                )
    if expected is not None and digests.size < expected:
        raise SourceError(f"{wanted.name}: connection cut at {digests.size} of {expected} bytes")
    if expected is not None and digests.size > expected:
        got = digests.size
        raise CorruptFile(f"{wanted.name}: {got} bytes arrived, the listing said {expected}")


def _check_digest(wanted: Wanted, digests: _Digests) -> None:
    if wanted.digest is None:
        return
    algorithm, expected = wanted.digest
    hasher = digests.md5 if algorithm == "md5" else digests.sha256
    got = hasher.hexdigest() if hasher is not None else ""
    if got != expected:
        raise CorruptFile(f"{wanted.name}: {algorithm} is {got}, its sidecar says {expected}")


def _wants_md5(wanted: Wanted) -> bool:
    return wanted.digest is not None and wanted.digest[0] == "md5"


def _digest_existing(part: Path, with_md5: bool) -> _Digests:
    digests = _Digests(with_md5)
    try:
        existing = part.open("rb", buffering=0)
    except FileNotFoundError:
        return digests
    with existing:
        while chunk := existing.read(HASH_CHUNK):
            digests.update(chunk)
    return digests


def _create(part: Path) -> None:
    """Create ``part`` if missing, and its folder the first time one is missing.

    Plain calls, not ``mkdir(exist_ok=True)`` and ``touch()``: each system call lets another
    transfer thread take the interpreter, and a run of small files makes thousands.
    """
    flags = os.O_CREAT | os.O_WRONLY
    try:
        os.close(os.open(part, flags, 0o644))
    except FileNotFoundError:
        part.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(part, flags, 0o644))
