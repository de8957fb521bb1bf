"""The download step of a run: every pending file, in parallel, into the archive.

Where every source of the run offers an event-loop reader (FTP, HTTP and SFTP), one event loop
drives all transfers over a shared pool of connections; otherwise each of ``threads``
worker threads keeps one source (one connection) per remote and reuses it from file to
file. Either way a :class:`HostGate` per host caps transfers and backs off when the host
says it is busy. A runtime with transfer workers (``mirror_processes``) sends the small
files of a folder-archive run to them first, sharing the same cap among them. A file
unchanged since the last release (same size and time, or fingerprint) is not fetched
again: its blob is reused. Sidecars (``x.md5``, ``x.sha256``) are fetched first, so the
file they describe is checked against them. Counters reach the run row about once a
second; a cancelled run stops between chunks (with workers, between their tasks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

import uvloop
from prometheus_client import Counter
from sqlalchemy import Table, bindparam, insert, or_, select, tuple_, update

from conveyor.db.models import File, MirrorRun, MirrorRunFile, StagedBlob
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import StepFailed
from conveyor.mirror import states
from conveyor.mirror.definition import MirrorDefinition
from conveyor.mirror.errors import MirrorError, unwritable
from conveyor.mirror.gate import HostGate
from conveyor.mirror.integrity import sidecar_digest
from conveyor.mirror.retry import RetryPolicy, retry_policy
from conveyor.mirror.sources import AsyncReader, Source, open_async_reader, open_source
from conveyor.mirror.sources.base import offers_async_reader
from conveyor.mirror.spec import SourceSpec
from conveyor.mirror.transfer import Fetched, Wanted, fetch, fetch_async, holds_parts
from conveyor.mirror.workers import TASK_BYTES, TASK_FILES, FileResult, SmallFiles, TransferWorkers
from conveyor.observability import metrics

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

BATCH = 200
DOWNLOAD_STEP = "download files"
PROGRESS_SECONDS = 1.0
SIDECARS = {".md5": "md5", ".sha256": "sha256"}
MAX_SIDECAR_BYTES = 4096
# Larger files (and those of unknown size) are fetched by threads even in a run driven by
# an event loop: one loop moves small files faster than threads do, but hashes and writes
# every byte on one core (large HTTP files took 3.0-3.2 s on the loop, 2.3-2.5 s in threads).
LOOP_MAX_BYTES = 4 * 1024 * 1024


class RunCancelled(StepFailed):
    """The run was asked to stop. A step failure, so that the job's step passes it on as
    it is and the run ends "cancelled", not "failed"."""

    def __init__(self, message: str) -> None:
        super().__init__(DOWNLOAD_STEP, message)


class LocalWriteFailed(StepFailed):
    """A file could not be written here (a full disk, a read-only folder): no retry of
    that file or of the next can help, so the run stops at it and names it."""

    def __init__(self, name: str, error: OSError) -> None:
        reason = unwritable(error)
        super().__init__(DOWNLOAD_STEP, f"{name}: {reason}", [{"item": name, "error": reason}])


class PendingFile(NamedTuple):
    """A file row still to be fetched: what the download step reads of it."""

    id: int
    path: str
    save_as: str
    size: int | None
    mtime: datetime | None
    fingerprint: str | None
    source_index: int


PENDING_COLUMNS = tuple(getattr(MirrorRunFile, name) for name in PendingFile._fields)


@dataclass(frozen=True)
class Prior:
    """What an earlier release (or an interrupted run) holds at a path."""

    size: int
    mtime: datetime | None
    fingerprint: str | None
    sha256: str
    md5: str | None
    crc32: int | None


@dataclass(frozen=True)
class Outcome:
    """What became of one file."""

    row_id: int
    state: str
    fetched: Fetched | None = None
    prior: Prior | None = None
    crc32: int | None = None
    error: str = ""
    attempts: int = 0


class Downloader:
    """Runs the download step of one run."""

    def __init__(
        self,
        context: JobContext,
        run_id: int,
        definition: MirrorDefinition,
        specs: list[SourceSpec],
        workdir: Path,
        previous_transaction: int | None,
        interrupted_run: int | None,
    ) -> None:
        self.context = context
        self.runtime = context.runtime
        self.run_id = run_id
        self.definition = definition
        self.specs = specs
        self.workdir = workdir
        self.previous_transaction = previous_transaction
        self.interrupted_run = interrupted_run
        self.policy: RetryPolicy = retry_policy(definition.stop_condition, definition.wait_policy)
        self.gates = {_host_key(spec): HostGate(definition.threads) for spec in specs}
        self._counters = [_HostCounters.of(definition.name, spec) for spec in specs]
        self.stopping = threading.Event()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._bytes_moved = 0
        self._sources: list[Source] = []
        self._sidecars: dict[str, str] = {}
        self._archive_is_local = self.runtime.archive.store.is_local
        self._parts_left = True  # whether an earlier run left part files; run() looks
        self._task_slots = threading.BoundedSemaphore(1)  # tasks in worker processes at once

    def run(self) -> list[dict[str, str]]:
        """Download or reuse every pending file; the per-file errors."""
        self._parts_left = holds_parts(self.workdir)
        monitor = threading.Thread(target=self._monitor, name=f"mirror-run-{self.run_id}")
        monitor.start()
        errors: list[dict[str, str]] = []
        try:
            errors += self._pass(sidecars=True)
            self._sidecars = self._fetched_sidecars()
            # What the worker processes leave pending (large files, a dead worker's) goes
            # to the run's own transfers after them, so the host's connection cap holds.
            for rest in (self._pass_in_workers, functools.partial(self._pass, sidecars=False)):
                if self.stopping.is_set():
                    break
                errors += rest()
        finally:
            self.stopping.set()
            monitor.join()
            for source in self._sources:
                source.close()
        if self._cancelled():
            raise RunCancelled("the run was cancelled")
        self.context.check_lease()
        return errors

    def _pass(self, sidecars: bool) -> list[dict[str, str]]:
        readers = [open_async_reader(spec, self.definition.threads) for spec in self.specs]
        if all(reader is not None for reader in readers):
            return uvloop.run(self._pass_on_loop(sidecars, cast(list[AsyncReader], readers)))
        errors: list[dict[str, str]] = []
        running: list[tuple[PendingFile, Future[Outcome]]] = []
        with ThreadPoolExecutor(self.definition.threads, "mirror-download") as pool:
            for batch in self._pending(sidecars):
                if self.stopping.is_set():
                    break
                # The next batch is queued before the last one is recorded, so the
                # transfer threads never wait for the database between batches.
                priors = self._priors([row.save_as for row in batch])
                one = functools.partial(self._one, priors=priors)
                queued = [(row, pool.submit(one, row)) for row in batch]
                errors += self._settle(running)
                running = queued
            errors += self._settle(running)
        return errors

    def _pass_in_workers(self) -> list[dict[str, str]]:
        """The small files, fetched by the runtime's worker processes when it has them, the
        archive is a folder and every source offers an event-loop reader."""
        workers = self.runtime.transfer_workers
        if (
            workers is None
            or not self._archive_is_local
            or not all(offers_async_reader(spec) for spec in self.specs)
        ):
            return []
        at_once = min(workers.processes, self.definition.threads)
        connections = max(1, self.definition.threads // at_once)
        # With a worker for each task that may run, a second task each waits in the pool
        # (a worker runs one at a time), so no worker idles between tasks.
        waiting = at_once * 2 if at_once == workers.processes else at_once
        self._task_slots = threading.BoundedSemaphore(waiting)
        errors: list[dict[str, str]] = []
        running: list[tuple[PendingFile, Future[Outcome]]] = []
        for batch in self._pending(sidecars=False):
            if self.stopping.is_set():
                break
            small = [row for row in batch if row.size is not None and row.size <= LOOP_MAX_BYTES]
            if small:
                priors = self._priors([row.save_as for row in small])
                queued = self._queue_in_workers(workers, small, priors, connections)
                errors += self._settle(running)
                running = queued
        errors += self._settle(running)
        return errors

    def _queue_in_workers(
        self,
        workers: TransferWorkers,
        rows: list[PendingFile],
        priors: dict[str, Prior],
        connections: int,
    ) -> list[tuple[PendingFile, Future[Outcome]]]:
        """Send the rows not reused to the workers, in tasks; each row's outcome to come."""
        queued: list[tuple[PendingFile, Future[Outcome]]] = []
        by_source: dict[int, list[tuple[PendingFile, Future[Outcome]]]] = {}
        for row in rows:
            outcome: Future[Outcome] = Future()
            reused = self._reused(row, priors)
            if reused is not None:
                outcome.set_result(reused)
            else:
                by_source.setdefault(row.source_index, []).append((row, outcome))
            queued.append((row, outcome))
        for index, waiting in by_source.items():
            for chunk in _tasks(waiting):
                # Blocks while every worker has a task and one waiting.
                self._task_slots.acquire()
                task = self._task(index, [row for row, _ in chunk], connections)
                done = workers.fetch(task)
                done.add_done_callback(functools.partial(self._settle_task, chunk))
        return queued

    def _task(self, index: int, rows: list[PendingFile], connections: int) -> SmallFiles:
        spec = self.specs[index]
        return SmallFiles(
            spec,
            connections,
            self.policy.stop,
            self.policy.wait,
            self.definition.timeout_download,
            not spec.options.skip_check_uncompress,
            self.runtime.settings.archive_url,
            tuple((row.id, self._wanted(row)) for row in rows),
        )

    def _settle_task(
        self, chunk: list[tuple[PendingFile, Future[Outcome]]], done: Future[list[FileResult]]
    ) -> None:
        """A task's results as its rows' outcomes; a task lost with its worker leaves its
        files pending, for the run's own transfers."""
        self._task_slots.release()
        try:
            results = {result.row_id: result for result in done.result()}
        except (BrokenProcessPool, CancelledError):
            for row, outcome in chunk:
                outcome.set_result(Outcome(row.id, states.FILE_PENDING))
            return
        except BaseException as error:
            for _, outcome in chunk:
                outcome.set_exception(error)
            return
        for row, outcome in chunk:
            result = results[row.id]
            if result.fetched is not None:
                self._count_bytes(result.fetched.size)
                outcome.set_result(self._done(row, result.fetched, result.seconds))
            elif result.write_errno is not None:
                written = OSError(result.write_errno, result.error)
                outcome.set_exception(self._write_failed(row, written))
            else:
                outcome.set_result(self._failed_with(row, result.error, result.attempts))

    def _settle(self, running: list[tuple[PendingFile, Future[Outcome]]]) -> list[dict[str, str]]:
        """Wait for a batch, record its outcomes; the errors of its failed files."""
        # One wait for the whole batch: waiting on each future in turn woke this thread
        # for every file, and each wake-up took the interpreter from a transfer thread.
        wait([future for _, future in running])
        outcomes = [future.result() for _, future in running]
        self._record(outcomes)
        return _errors([row for row, _ in running], outcomes)

    async def _pass_on_loop(
        self, sidecars: bool, readers: list[AsyncReader]
    ) -> list[dict[str, str]]:
        """The pass with the transfers as tasks of one event loop (sources that offer a
        reader for it); large files go to threads, the database is used from a thread."""
        try:
            with ThreadPoolExecutor(self.definition.threads, "mirror-download") as pool:
                return await self._batches_on_loop(sidecars, readers, pool)
        finally:
            for reader in readers:
                await reader.close()

    async def _batches_on_loop(
        self, sidecars: bool, readers: list[AsyncReader], pool: ThreadPoolExecutor
    ) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        slots = asyncio.Semaphore(self.definition.threads)
        one = functools.partial(self._one_on_loop, readers=readers, slots=slots, pool=pool)
        running: list[tuple[PendingFile, asyncio.Task[Outcome]]] = []
        queued: list[tuple[PendingFile, asyncio.Task[Outcome]]] = []
        pending = self._pending(sidecars)
        try:
            while not self.stopping.is_set():
                batch = await asyncio.to_thread(next, pending, None)
                if batch is None:
                    break
                priors = await asyncio.to_thread(self._priors, [row.save_as for row in batch])
                queued = [(row, asyncio.create_task(one(row, priors=priors))) for row in batch]
                errors += await self._settle_on_loop(running)
                running, queued = queued, []
            errors += await self._settle_on_loop(running)
        except BaseException:
            # Tasks still going hold host slots a transfer thread may wait for: they end
            # before the pool is shut down (which waits for its threads).
            live = [task for _, task in running + queued]
            for task in live:
                task.cancel()
            await asyncio.gather(*live, return_exceptions=True)
            raise
        return errors

    async def _settle_on_loop(
        self, running: list[tuple[PendingFile, asyncio.Task[Outcome]]]
    ) -> list[dict[str, str]]:
        outcomes = list(await asyncio.gather(*(task for _, task in running)))
        await asyncio.to_thread(self._record, outcomes)
        return _errors([row for row, _ in running], outcomes)

    def _fetched_sidecars(self) -> dict[str, str]:
        """The blobs of the sidecars this run has, by the path of the file each describes."""
        with self.runtime.db.session() as session:
            rows = session.execute(
                select(MirrorRunFile.save_as, MirrorRunFile.sha256).where(
                    MirrorRunFile.run_id == self.run_id,
                    MirrorRunFile.state.in_((states.FILE_DONE, states.FILE_REUSED)),
                    or_(*(MirrorRunFile.save_as.endswith(suffix) for suffix in SIDECARS)),
                )
            ).all()
        return {save_as: str(sha256) for save_as, sha256 in rows if sha256}

    def _pending(self, sidecars: bool) -> Iterator[list[PendingFile]]:
        after = 0
        while True:
            with self.runtime.db.session() as session:
                rows = [
                    PendingFile(*row)
                    for row in session.execute(
                        select(*PENDING_COLUMNS)
                        .where(
                            MirrorRunFile.run_id == self.run_id,
                            MirrorRunFile.state == states.FILE_PENDING,
                            MirrorRunFile.id > after,
                        )
                        .order_by(MirrorRunFile.id)
                        .limit(BATCH)
                    )
                ]
            if not rows:
                return
            after = rows[-1].id
            chosen = [row for row in rows if _is_sidecar(row.save_as) == sidecars]
            if chosen:
                yield chosen

    def _one(self, row: PendingFile, *, priors: dict[str, Prior]) -> Outcome:
        if self.stopping.is_set():
            return Outcome(row.id, states.FILE_PENDING)
        reused = self._reused(row, priors)
        if reused is not None:
            return reused
        spec = self.specs[row.source_index]
        started = time.monotonic()
        try:
            fetched = fetch(
                self._source(row.source_index),
                self._wanted(row),
                self.policy,
                gate=self.gates[_host_key(spec)],
                attempt_seconds=self.definition.timeout_download,
                check_archives=not spec.options.skip_check_uncompress,
                on_bytes=self._moved,
            )
            self._store(fetched)
        except RunCancelled:
            return Outcome(row.id, states.FILE_PENDING)
        except MirrorError as error:
            return self._failed_with(row, str(error), error.attempts)
        except OSError as error:
            raise self._write_failed(row, error) from error
        return self._done(row, fetched, time.monotonic() - started)

    async def _one_on_loop(
        self,
        row: PendingFile,
        *,
        priors: dict[str, Prior],
        readers: list[AsyncReader],
        slots: asyncio.Semaphore,
        pool: ThreadPoolExecutor,
    ) -> Outcome:
        async with slots:
            if row.size is None or row.size > LOOP_MAX_BYTES:
                one = functools.partial(self._one, row, priors=priors)
                return await asyncio.get_running_loop().run_in_executor(pool, one)
            if self.stopping.is_set():
                return Outcome(row.id, states.FILE_PENDING)
            reused = await self._on_archive(self._reused, row, priors)
            if reused is not None:
                return reused
            spec = self.specs[row.source_index]
            started = time.monotonic()
            try:
                fetched = await fetch_async(
                    readers[row.source_index],
                    await self._on_archive(self._wanted, row),
                    self.policy,
                    gate=self.gates[_host_key(spec)],
                    attempt_seconds=self.definition.timeout_download,
                    check_archives=not spec.options.skip_check_uncompress,
                    on_bytes=self._moved,
                )
                await self._on_archive(self._store, fetched)
            except RunCancelled:
                return Outcome(row.id, states.FILE_PENDING)
            except MirrorError as error:
                return self._failed_with(row, str(error), error.attempts)
            except OSError as error:
                raise self._write_failed(row, error) from error
            return self._done(row, fetched, time.monotonic() - started)

    async def _on_archive(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run an archive call from the event loop: at once on a folder archive (a stat
        or a rename), in a thread on an object store (a request)."""
        if self._archive_is_local:
            return call(*args, **kwargs)
        return await asyncio.to_thread(call, *args, **kwargs)

    def _reused(self, row: PendingFile, priors: dict[str, Prior]) -> Outcome | None:
        """The outcome of a file unchanged since the copy the archive holds, if it is."""
        prior = priors.get(row.save_as)
        if (
            prior is not None
            and _unchanged(row, prior)
            and self.runtime.archive.exists(prior.sha256)
        ):
            metrics.MIRROR_REUSED.labels(mirror=self.definition.name).inc()
            return Outcome(row.id, states.FILE_REUSED, prior=prior)
        return None

    def _wanted(self, row: PendingFile) -> Wanted:
        return Wanted(
            row.path,
            row.save_as,
            row.size,
            self.workdir / row.save_as,
            digest=self._sidecar_digest(row.save_as),
            keep_part=True,
            may_resume=self._parts_left,
        )

    def _write_failed(self, row: PendingFile, error: OSError) -> LocalWriteFailed:
        """Stop the other transfers (each would fail the same way) and say which file."""
        self.stopping.set()
        log.warning(
            "mirror %s stopped: %s could not be written: %s",
            self.definition.name,
            row.save_as,
            error,
        )
        return LocalWriteFailed(row.save_as, error)

    def _failed_with(self, row: PendingFile, error: str, attempts: int) -> Outcome:
        self._counters[row.source_index].errors.inc()
        return Outcome(row.id, states.FILE_FAILED, error=error, attempts=attempts)

    def _done(self, row: PendingFile, fetched: Fetched, seconds: float) -> Outcome:
        counters = self._counters[row.source_index]
        counters.downloads.inc()
        counters.bytes.inc(fetched.size)
        counters.seconds.inc(seconds)
        return Outcome(row.id, states.FILE_DONE, fetched=fetched, crc32=fetched.crc32)

    def _store(self, fetched: Fetched) -> None:
        """Hand the file to the archive (a rename when it can be)."""
        hashes = {"sha256": fetched.sha256, "crc32": f"{fetched.crc32:08x}"}
        self.runtime.archive.adopt(fetched.path, hashes, fetched.size)

    def _source(self, index: int) -> Source:
        sources: dict[int, Source] | None = getattr(self._local, "sources", None)
        if sources is None:
            sources = self._local.sources = {}
        if index not in sources:
            source = open_source(self.specs[index])
            sources[index] = source
            with self._lock:
                self._sources.append(source)
        return sources[index]

    def _moved(self, count: int) -> None:
        if self.stopping.is_set():
            raise RunCancelled("the run was cancelled")
        self._count_bytes(count)

    def _count_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes_moved += count

    def _sidecar_digest(self, save_as: str) -> tuple[str, str] | None:
        for suffix, algorithm in SIDECARS.items():
            sha256 = self._sidecars.get(save_as + suffix)
            if sha256:
                with self.runtime.archive.open(sha256) as sidecar:
                    text = sidecar.read(MAX_SIDECAR_BYTES).decode("utf-8", "replace")
                return algorithm, sidecar_digest(text, algorithm, save_as + suffix)
        return None

    def _priors(self, names: list[str]) -> dict[str, Prior]:
        """Earlier copies of these paths: in the last release, or fetched by the last
        interrupted run of this mirror (which is how an interrupted update resumes)."""
        found: dict[str, Prior] = {}
        with self.runtime.db.session() as session:
            if self.interrupted_run is not None:
                for row in session.scalars(
                    select(MirrorRunFile).where(
                        MirrorRunFile.run_id == self.interrupted_run,
                        MirrorRunFile.save_as.in_(names),
                        MirrorRunFile.state.in_((states.FILE_DONE, states.FILE_REUSED)),
                    )
                ):
                    found[row.save_as] = Prior(
                        row.bytes_done,
                        row.mtime,
                        row.fingerprint,
                        row.sha256 or "",
                        row.md5,
                        row.crc32,
                    )
            if self.previous_transaction is not None:
                keys = [tuple(name.rpartition("/")[::2]) for name in names]
                for file in session.scalars(
                    select(File).where(
                        File.transaction_id == self.previous_transaction,
                        tuple_(File.subdir, File.name).in_(keys),
                    )
                ):
                    path = f"{file.subdir}/{file.name}" if file.subdir else file.name
                    found.setdefault(
                        path,
                        Prior(file.size, file.mtime, None, file.sha256, file.hashsum, file.crc32),
                    )
        return found

    def _record(self, outcomes: list[Outcome]) -> None:
        """Write a batch of outcomes in one transaction: rows, staged blobs, counters."""
        settled = [outcome for outcome in outcomes if outcome.state != states.FILE_PENDING]
        if not settled:
            return
        values = [_row_values(outcome) for outcome in settled]
        counts = dict.fromkeys((states.FILE_DONE, states.FILE_REUSED, states.FILE_FAILED), 0)
        for outcome in settled:
            counts[outcome.state] += 1
        with self.runtime.db.session() as session:
            # Core, not ORM: one executemany UPDATE keyed by row id.
            table = cast(Table, MirrorRunFile.__table__)
            session.connection().execute(
                update(table).where(table.c.id == bindparam("row_id")), values
            )
            # The blobs stay alive until the release is published (or the run is dropped).
            staged = [
                {
                    "job_id": self.context.job_id,
                    "name": str(row["row_id"]),
                    "sha256": row["sha256"],
                    "size": row["bytes_done"],
                    "created": outcome.fetched is not None,
                }
                for row, outcome in zip(values, settled, strict=True)
                if row["sha256"]
            ]
            if staged:
                session.execute(insert(StagedBlob), staged)
            session.execute(
                update(MirrorRun)
                .where(MirrorRun.id == self.run_id)
                .values(
                    files_done=MirrorRun.files_done + counts[states.FILE_DONE],
                    files_reused=MirrorRun.files_reused + counts[states.FILE_REUSED],
                    files_failed=MirrorRun.files_failed + counts[states.FILE_FAILED],
                )
            )

    def _monitor(self) -> None:
        reported = 0
        while not self.stopping.wait(PROGRESS_SECONDS):
            reported = self._report(reported)
            if self._cancelled():
                self.stopping.set()
        self._report(reported)

    def _report(self, reported: int) -> int:
        with self._lock:
            moved = self._bytes_moved
        if moved != reported:
            with self.runtime.db.session() as session:
                session.execute(
                    update(MirrorRun)
                    .where(MirrorRun.id == self.run_id)
                    .values(bytes_done=MirrorRun.bytes_done + (moved - reported))
                )
        return moved

    def _cancelled(self) -> bool:
        with self.runtime.db.session() as session:
            return bool(
                session.scalar(
                    select(MirrorRun.cancel_requested).where(MirrorRun.id == self.run_id)
                )
            )


class _HostCounters(NamedTuple):
    """One source's Prometheus counters, found once per run rather than once per file."""

    downloads: Counter
    errors: Counter
    bytes: Counter
    seconds: Counter

    @classmethod
    def of(cls, mirror: str, spec: SourceSpec) -> _HostCounters:
        labels = {"mirror": mirror, "host": spec.host or spec.protocol}
        return cls(
            metrics.MIRROR_DOWNLOADS.labels(**labels),
            metrics.MIRROR_DOWNLOAD_ERRORS.labels(**labels),
            metrics.MIRROR_DOWNLOAD_BYTES.labels(**labels),
            metrics.MIRROR_DOWNLOAD_SECONDS.labels(**labels),
        )


def _errors(rows: list[PendingFile], outcomes: list[Outcome]) -> list[dict[str, str]]:
    """The errors of a batch's failed files, by the path each is saved as."""
    return [
        {"item": row.save_as, "error": outcome.error}
        for row, outcome in zip(rows, outcomes, strict=True)
        if outcome.state == states.FILE_FAILED
    ]


def _tasks(
    waiting: list[tuple[PendingFile, Future[Outcome]]],
) -> Iterator[list[tuple[PendingFile, Future[Outcome]]]]:
    """``waiting`` cut into worker tasks of at most TASK_FILES files and TASK_BYTES."""
    chunk: list[tuple[PendingFile, Future[Outcome]]] = []
    size = 0
    for item in waiting:
        row_size = item[0].size or 0
        if chunk and (len(chunk) >= TASK_FILES or size + row_size > TASK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += row_size
    if chunk:
        yield chunk


def _host_key(spec: SourceSpec) -> str:
    return f"{spec.protocol}://{spec.server}"


def _is_sidecar(save_as: str) -> bool:
    return save_as.endswith(tuple(SIDECARS))


def _unchanged(row: PendingFile, prior: Prior) -> bool:
    if row.size is not None and row.size != prior.size:
        return False
    if row.fingerprint and prior.fingerprint:
        return row.fingerprint == prior.fingerprint
    return row.mtime is not None and prior.mtime is not None and row.mtime == prior.mtime


def _row_values(outcome: Outcome) -> dict[str, Any]:
    """The columns an outcome sets on its file row (every row of a batch sets all of them)."""
    values: dict[str, Any] = {
        "row_id": outcome.row_id,
        "state": outcome.state,
        "error": outcome.error,
        "attempts": outcome.attempts,
        "sha256": None,
        "md5": None,
        "crc32": None,
        "bytes_done": 0,
    }
    if outcome.fetched is not None:
        fetched = outcome.fetched
        values.update(
            sha256=fetched.sha256,
            md5=fetched.md5,
            crc32=outcome.crc32,
            bytes_done=fetched.size,
            attempts=fetched.attempts,
        )
    if outcome.prior is not None:
        prior = outcome.prior
        values.update(sha256=prior.sha256, md5=prior.md5, crc32=prior.crc32, bytes_done=prior.size)
    return values
