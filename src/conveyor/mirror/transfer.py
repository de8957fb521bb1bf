"""Downloading one file: resume from where it stopped, check it, then give it its name.

Bytes go to ``<target>.part``; a cut connection resumes from the part's length (FTP REST,
HTTP Range, SFTP offset), a stall raises after the source's stall timeout and is retried
under the mirror's policy, and permanent errors (404, 550, bad credentials) end the file at
once. The whole file is checked (size against the listing, archive structure) before the
rename, so a truncated or corrupt file is never visible under its real name: it is
deleted and fetched again, as BioMAJ does for archives but also for sizes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

import tenacity
from isal.isal_zlib import crc32  # zlib's values, 8x faster (see storage.archive.Crc32)

from conveyor.mirror.errors import MirrorError, SourceError
from conveyor.mirror.gate import HostGate
from conveyor.mirror.integrity import CorruptFile, check_archive
from conveyor.mirror.retry import RetryPolicy
from conveyor.mirror.sources.base import AsyncReader, Source
from conveyor.mirror.sources.parts import PartWriter, open_part

PART_SUFFIX = ".part"
HASH_CHUNK = 1024 * 1024
# A file at least this big is checked (read through, if an archive) off the event loop.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Wanted:
    """A file to fetch: remote path, the name to report, the listed size, where to put it,
    and the digest a sidecar (``.md5``, ``.sha256``) says it has, as ``(algorithm, hex)``.
    With ``keep_part`` the checked file stays under its ``.part`` name, for a caller that
    moves it on itself (the archive takes it by one rename). Without ``may_resume`` the
    caller knows no part was left by an earlier run (see :func:`holds_parts`), so none is
    looked for."""

    path: str
    name: str
    size: int | None
    target: Path
    digest: tuple[str, str] | None = None
    keep_part: bool = False
    may_resume: bool = True


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


class _Digests:
    """sha256 (the archive's name) and CRC-32 (zip's) always; md5 only for an md5 sidecar,
    as it costs as much as both together."""

    def __init__(self, with_md5: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        self.crc32 = 0
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
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
    transfer = _Transfer(wanted, attempt_seconds, on_bytes)
    transfer.load()
    attempts = 1
    with _FirstAttempt(transfer) as first:
        _try_once(source, transfer, gate, check_archives)
    if first.failure is not None:
        retrying = _retrying(policy, sleep)
        try:
            for attempt in retrying:
                with attempt:
                    first.replay(attempt.retry_state)
                    _try_once(source, transfer, gate, check_archives)
        except MirrorError as error:
            transfer.gave_up(error, _attempts(retrying))
            raise
        attempts = _attempts(retrying)
    gate.succeeded()
    return transfer.fetched(attempts)


async def fetch_async(
    reader: AsyncReader,
    wanted: Wanted,
    policy: RetryPolicy,
    *,
    gate: HostGate,
    attempt_seconds: float,
    check_archives: bool = True,
    on_bytes: Callable[[int], None] = lambda count: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Fetched:
    """:func:`fetch` on an event loop, through ``reader``: the same resumes, checks and retries.

    Bytes are written and hashed on the loop, which suits small files; an existing part is
    hashed, and a large file's archive check run, in a thread.
    """
    transfer = _Transfer(wanted, attempt_seconds, on_bytes)
    await transfer.load_async()
    attempts = 1
    with _FirstAttempt(transfer) as first:
        await _try_once_async(reader, transfer, gate, check_archives)
    if first.failure is not None:
        retrying = policy.async_retrying(retry=_RETRYABLE, sleep=sleep)
        try:
            async for attempt in retrying:
                with attempt:
                    first.replay(attempt.retry_state)
                    await _try_once_async(reader, transfer, gate, check_archives)
        except MirrorError as error:
            transfer.gave_up(error, _attempts(retrying))
            raise
        attempts = _attempts(retrying)
    gate.succeeded()
    return transfer.fetched(attempts)


class _FirstAttempt:
    """Around a file's first attempt, made outside the policy's retry loop: nearly every
    file succeeds at once, and tenacity's loop costs about 30 us a file on the event loop
    (a sixth of what fetching added to a bare transfer of a small file), so only a file
    whose first attempt failed pays for it.

    A failure the policy may retry is kept as :attr:`failure` (not raised); any other ends
    the file there.
    """

    def __init__(self, transfer: _Transfer) -> None:
        self.transfer = transfer
        self.failure: MirrorError | None = None
        self.started = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: object
    ) -> bool:
        if not isinstance(error, MirrorError):
            return False
        if not _retryable(error):
            self.transfer.gave_up(error, 1)
            return False
        self.failure = error
        return True

    def replay(self, state: tenacity.RetryCallState) -> None:
        """On the policy loop's first attempt, raise the kept failure as that attempt's
        own, the loop's clock set back to when the first attempt started, so that stop
        and wait conditions count it as they would have."""
        if state.attempt_number == 1 and self.failure is not None:
            state.start_time = self.started
            raise self.failure


def _attempts(retrying: tenacity.BaseRetrying) -> int:
    return int(retrying.statistics.get("attempt_number", 1))


class _Transfer:
    """One file across its attempts: its part file, what the part holds, and the checks."""

    def __init__(
        self, wanted: Wanted, attempt_seconds: float, on_bytes: Callable[[int], None]
    ) -> None:
        self.wanted = wanted
        self.part = wanted.target.with_name(wanted.target.name + PART_SUFFIX)
        self.digests = _Digests(_wants_md5(wanted))
        self.resumed = 0
        self._attempt_seconds = attempt_seconds
        self._on_bytes = on_bytes
        self._deadline = 0.0

    def load(self) -> None:
        """Hash what a part left by an earlier attempt or run holds, to resume after it."""
        existing = self._existing_part()
        if existing is not None:
            with existing:
                self.digests = _digest_file(existing, _wants_md5(self.wanted))

    async def load_async(self) -> None:
        """:meth:`load` with the hashing in a thread (a part may hold many GiB); a missing
        part, the common case, costs no hand-over to a thread."""
        existing = self._existing_part()
        if existing is not None:
            with existing:
                md5 = _wants_md5(self.wanted)
                self.digests = await asyncio.to_thread(_digest_file, existing, md5)

    def _existing_part(self) -> BinaryIO | None:
        if not self.wanted.may_resume:
            return None
        try:
            return self.part.open("rb", buffering=0)
        except FileNotFoundError:
            return None

    def begin(self) -> None:
        """Start an attempt (its slot held): the ``timeout.download`` clock starts."""
        if self.digests.size:
            self.resumed += 1
        self._deadline = time.monotonic() + self._attempt_seconds

    @property
    def wants_more(self) -> bool:
        """Whether the part is still shorter than the listed size (or the size is unknown)."""
        return self.wanted.size is None or self.digests.size < self.wanted.size

    def make_part(self) -> None:
        """Make the part when nothing is left to read (an empty file, or a whole one left by
        an earlier attempt): the file is still checked and handed over."""
        os.close(open_part(self.part, self.digests.size))

    def take(self, chunk: bytes | memoryview) -> None:
        """Count a chunk that reached the part."""
        self.digests.update(chunk)
        self._on_bytes(len(chunk))
        if time.monotonic() > self._deadline:
            raise SourceError(
                f"{self.wanted.name}: not done after {self._attempt_seconds:g} s (timeout.download)"
            )

    def ended(self) -> None:
        """The stream ended: what arrived against the listed size."""
        name, expected, got = self.wanted.name, self.wanted.size, self.digests.size
        if expected is not None and got < expected:
            raise SourceError(f"{name}: connection cut at {got} of {expected} bytes")
        if expected is not None and got > expected:
            raise CorruptFile(f"{name}: {got} bytes arrived, the listing said {expected}")

    def check(self, check_archives: bool) -> None:
        """The whole part against its sidecar's digest, and read through if an archive."""
        _check_digest(self.wanted, self.digests)
        if check_archives:
            check_archive(self.part, self.wanted.name)

    def discard(self) -> None:
        """Throw a corrupt part away: the next attempt starts from nothing."""
        self.part.unlink(missing_ok=True)
        self.digests = _Digests(_wants_md5(self.wanted))

    def gave_up(self, error: MirrorError, attempts: int) -> None:
        """Note the attempts on the final error; an empty part is of no use to a resume."""
        error.attempts = attempts
        if self.part.exists() and self.part.stat().st_size == 0:
            self.part.unlink()

    def fetched(self, attempts: int) -> Fetched:
        """The checked file, renamed to its target unless the part is to be kept."""
        wanted = self.wanted
        if not wanted.keep_part:
            self.part.replace(wanted.target)
        digests = self.digests
        return Fetched(
            self.part if wanted.keep_part else wanted.target,
            digests.size,
            digests.sha256.hexdigest(),
            digests.md5.hexdigest() if digests.md5 is not None else None,
            digests.crc32,
            attempts=attempts,
            resumed=self.resumed,
        )


def _try_once(source: Source, transfer: _Transfer, gate: HostGate, check_archives: bool) -> None:
    """One attempt, resuming from what the part holds; a corrupt part is thrown away."""
    try:
        with gate.slot(on_wait=source.close), _reporting_throttles(gate):
            transfer.begin()
            if transfer.wants_more:  # read_into creates the part
                offset = transfer.digests.size
                for chunk in source.read_into(transfer.wanted.path, transfer.part, offset):
                    transfer.take(chunk)
            else:
                transfer.make_part()
            transfer.ended()
        transfer.check(check_archives)
    except CorruptFile:
        transfer.discard()
        raise


async def _try_once_async(
    reader: AsyncReader, transfer: _Transfer, gate: HostGate, check_archives: bool
) -> None:
    """:func:`_try_once` on the event loop."""
    try:
        async with gate.async_slot():
            with _reporting_throttles(gate):
                transfer.begin()
                if transfer.wants_more:
                    await _stream(reader, transfer)  # which creates the part
                else:
                    transfer.make_part()
                transfer.ended()
        if transfer.digests.size >= OFFLOAD_BYTES:  # an archive check reads it all
            await asyncio.to_thread(transfer.check, check_archives)
        else:
            transfer.check(check_archives)
    except CorruptFile:
        transfer.discard()
        raise


async def _stream(reader: AsyncReader, transfer: _Transfer) -> None:
    """Append the remote file to the part, from what the part holds on."""
    with PartWriter(transfer.part, transfer.digests.size) as out:
        chunks = reader.read(transfer.wanted.path, transfer.digests.size)
        async with aclosing(chunks):
            async for chunk in chunks:
                out.write(chunk)
                transfer.take(chunk)


@contextmanager
def _reporting_throttles(gate: HostGate) -> Iterator[None]:
    """Tell the gate of a throttle reply, while the transfer still counts as active."""
    try:
        yield
    except SourceError as error:
        if error.throttled:
            gate.throttled(error.retry_after)
        raise


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


def _digest_file(handle: BinaryIO, with_md5: bool) -> _Digests:
    digests = _Digests(with_md5)
    while chunk := handle.read(HASH_CHUNK):
        digests.update(chunk)
    return digests


def holds_parts(folder: Path) -> bool:
    """Whether a part file lies anywhere under ``folder`` (it stops at the first one).

    Looking once per run spares each file a failed open when none is left, the common
    case: a run of small files spent 5 % of its event loop's time on those.
    """
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return False
    with entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if holds_parts(Path(entry.path)):
                    return True
            elif entry.name.endswith(PART_SUFFIX):
                return True
    return False
