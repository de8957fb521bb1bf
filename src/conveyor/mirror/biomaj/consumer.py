"""Consuming BioMAJ ``Operation`` messages from RabbitMQ, as its download service does.

Downloads run in a pool of threads; the thread that talks to the broker acknowledges each
message only once its outcome (progress, and errors with their reasons) is in Redis. A
message that is not an Operation is dead-lettered to ``QUEUE.dead`` at once; one whose
outcome cannot be recorded (Redis away) goes back to the queue. A failed download is an
outcome: it is recorded and acknowledged, as BioMAJ's client expects.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from google.protobuf.message import DecodeError

from conveyor.mirror.biomaj.downloads import FileResult, download_operation
from conveyor.mirror.biomaj.messages import DOWNLOAD, Operation
from conveyor.mirror.biomaj.sessions import BadName, DownloadSessions
from conveyor.mirror.gate import HostGate
from conveyor.observability import metrics
from conveyor.queues import serve_queue

log = logging.getLogger(__name__)

QUEUE = "biomajdownload"
RETRY_PAUSE_SECONDS = 1.0


class BadOperation(ValueError):
    """Bytes that are not a usable Operation message."""


@dataclass(frozen=True)
class Finished:
    """A message whose work is over: ``done`` (record it), ``gone`` (its session was
    cleaned: drop it) or ``retry`` (Redis was away: put it back)."""

    message: Any
    operation: Any
    outcome: str
    results: list[FileResult] = field(default_factory=list)


def decode_operation(body: bytes) -> Any:
    """A complete Operation, or :class:`BadOperation` saying why not."""
    operation = Operation()
    try:
        operation.ParseFromString(body)
    except DecodeError as error:
        raise BadOperation(f"not a biomaj.download.Operation: {error}") from None
    if not operation.IsInitialized():
        missing = ", ".join(operation.FindInitializationErrors())
        raise BadOperation(f"an Operation without its required fields: {missing}")
    if not operation.HasField("download"):
        raise BadOperation("an Operation without its download part names no bank or session")
    try:
        DownloadSessions.check_names(operation.download.bank, operation.download.session)
    except BadName as error:
        raise BadOperation(str(error)) from None
    return operation


class OperationConsumer:
    """Takes messages from the broker thread, downloads in a pool, settles in order."""

    def __init__(
        self, sessions: DownloadSessions, threads: int, metrics_url: str | None = None
    ) -> None:
        self.sessions = sessions
        self.threads = threads
        self.metrics_url = metrics_url
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="biomaj-download")
        self.finished: queue.Queue[Finished] = queue.Queue()
        self.gates: dict[str, HostGate] = {}
        self.handled = 0
        self.host = socket.gethostname()

    def __call__(self, message: Any) -> None:
        """A raw message from the broker (called in the broker thread)."""
        try:
            operation = decode_operation(bytes(message.body))
        except BadOperation as error:
            log.warning("dead-lettered a BioMAJ message: %s", error)
            message.reject(requeue=False)
            return
        self.pool.submit(self._work, message, operation)

    def _work(self, message: Any, operation: Any) -> None:
        download = operation.download
        try:
            alive = self.sessions.exists(download.bank, download.session)
        except redis.RedisError:
            log.warning("Redis is away; a BioMAJ message goes back to the queue")
            time.sleep(RETRY_PAUSE_SECONDS)
            self.finished.put(Finished(message, operation, "retry"))
            return
        if not alive:
            log.info("session %s of %s is gone; skipped", download.session, download.bank)
            self.finished.put(Finished(message, operation, "gone"))
            return
        try:
            results = self._download(operation)
        except Exception as error:
            # Whatever went wrong is this message's outcome: it is recorded, never lost.
            log.exception("a BioMAJ download failed unexpectedly")
            results = [FileResult("operation", "", error=f"internal error: {error}")]
        self.finished.put(Finished(message, operation, "done", results))

    def _download(self, operation: Any) -> list[FileResult]:
        if operation.type != DOWNLOAD:
            reason = "only DOWNLOAD operations are served (LIST and PROCESS are not)"
            return [FileResult("operation", "", error=reason)]
        return download_operation(operation.download, gates=self.gates, threads=self.threads)

    def settle(self) -> None:
        """Record and acknowledge what finished (called in the broker thread)."""
        while True:
            try:
                done = self.finished.get_nowait()
            except queue.Empty:
                return
            self._settle(done)

    def _settle(self, done: Finished) -> None:
        if done.outcome == "gone":
            done.message.ack()
            return
        if done.outcome == "retry":
            done.message.requeue()
            return
        download = done.operation.download
        errors = [result.error for result in done.results if result.error]
        try:
            self.sessions.record(download.bank, download.session, errors)
        except redis.RedisError:
            log.exception("could not record a BioMAJ outcome; the message goes back")
            done.message.requeue()
            return
        done.message.ack()
        self.handled += 1
        self._count(download.bank, done.results)

    def _count(self, bank: str, results: list[FileResult]) -> None:
        report = []
        for result in results:
            if result.error:
                metrics.BIOMAJ_DOWNLOAD_ERRORS.labels(bank).inc()
                report.append({"bank": bank, "error": 1})
                continue
            metrics.BIOMAJ_DOWNLOADS.labels(bank).inc()
            metrics.BIOMAJ_FILE_SIZE.labels(bank, self.host).inc(result.size)
            metrics.BIOMAJ_FILE_TIME.labels(bank, self.host).inc(result.seconds)
            report.append(
                {
                    "bank": bank,
                    "host": self.host,
                    "size": result.size,
                    "download_time": int(result.seconds),
                }
            )
        if self.metrics_url and report:
            try:
                httpx.post(f"{self.metrics_url.rstrip('/')}/api/download/metrics", json=report)
            except httpx.HTTPError:
                log.warning("could not post download metrics to %s", self.metrics_url)

    def close(self) -> None:
        """Wait for downloads in progress."""
        self.pool.shutdown(wait=True)


def consume(
    url: str,
    sessions: DownloadSessions,
    stop: threading.Event,
    *,
    name: str = QUEUE,
    threads: int = 4,
    metrics_url: str | None = None,
    limit: int | None = None,
) -> int:
    """Serve ``name`` until ``stop`` is set (or ``limit`` messages are settled)."""
    handler = OperationConsumer(sessions, threads, metrics_url)

    def finish() -> None:
        handler.close()
        handler.settle()

    try:
        serve_queue(
            url,
            name,
            handler,
            stop,
            prefetch=threads,
            keep_going=lambda: limit is None or handler.handled < limit,
            between=handler.settle,
            finish=finish,
        )
    finally:
        handler.pool.shutdown(wait=False, cancel_futures=True)
    return handler.handled
