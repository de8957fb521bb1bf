"""The runtime: settings, database, archive and executor, opened once per process."""

from __future__ import annotations

import functools
import importlib
import logging
import multiprocessing
from dataclasses import dataclass, field

from conveyor.config import Settings
from conveyor.db.engine import Database
from conveyor.db.migrate import upgrade
from conveyor.jobs.executors import JOBS_LANE, Executor, make_executor
from conveyor.mirror.biomaj.sessions import DownloadSessions
from conveyor.mirror.workers import TransferWorkers
from conveyor.netpolicy import TargetPolicy
from conveyor.secrets import Sealer
from conveyor.storage.archive import Archive, open_archive
from conveyor.storage.stores import BlobStore, open_store

log = logging.getLogger(__name__)

# Modules that register job handlers; importing them is what makes their jobs runnable.
JOB_MODULES = (
    "conveyor.ingest.jobs",
    "conveyor.carts.build",
    "conveyor.carts.notify",
    "conveyor.mirror.runs",
    "conveyor.consumers.jobs",
)


@dataclass
class Runtime:
    """Everything a request handler or a job needs, with one lifetime."""

    settings: Settings
    db: Database
    archive: Archive
    # Where built cart bundles are kept (any store URL, like the archive's).
    bundles: BlobStore
    # The shared input cache of files staged from remote archive interfaces.
    cache: Archive
    executor: Executor = field(init=False)

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True, inline: bool = False) -> Runtime:
        """Connect to the database (waiting for it), migrate, open the archive, pick an executor."""
        for module in JOB_MODULES:
            importlib.import_module(module)
        db = Database(settings.database_url)
        db.wait_until_ready(settings.db_connect_attempts, settings.db_connect_wait)
        if migrate:
            upgrade(db)
        archive = open_archive(settings.archive_url)
        bundles = open_store(settings.cart_store_url)
        cache = open_archive(settings.cart_cache_url)
        runtime = cls(settings=settings, db=db, archive=archive, bundles=bundles, cache=cache)
        runtime.executor = make_executor(runtime, inline=inline)
        return runtime

    @functools.cached_property
    def sealer(self) -> Sealer:
        """Seals and opens the credentials stored in the database."""
        return Sealer.for_settings(self.settings)

    @functools.cached_property
    def target_policy(self) -> TargetPolicy:
        """Which hosts the server may call for users (webhooks, notify URLs, brokers)."""
        return TargetPolicy.from_lists(self.settings.target_allow, self.settings.target_deny)

    @functools.cached_property
    def biomaj_sessions(self) -> DownloadSessions | None:
        """The BioMAJ download service's Redis keys, when its Redis is configured."""
        if not self.settings.biomaj_redis_url:
            return None
        return DownloadSessions.from_url(
            self.settings.biomaj_redis_url, self.settings.biomaj_redis_prefix
        )

    @functools.cached_property
    def transfer_workers(self) -> TransferWorkers | None:
        """The worker processes fetching mirror runs' small files, when configured."""
        if not self.settings.mirror_processes:
            return None
        if multiprocessing.current_process().daemon:
            log.warning("mirror_processes is ignored: a daemonic process has no children")
            return None
        return TransferWorkers(self.settings.mirror_processes)

    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Hand a committed job to the executor; the sweeper covers a failed hand-over."""
        try:
            self.executor.submit(job_id, lane)
        except Exception:
            log.warning("could not dispatch job %s now; the sweeper will", job_id, exc_info=True)

    def close(self) -> None:
        """Stop the executor and the transfer workers, and close connections."""
        self.executor.shutdown()
        workers = self.__dict__.get("transfer_workers")
        if workers is not None:
            workers.close()
        self.db.dispose()
        log.info("stopped: running jobs finished, workers and connections closed")
