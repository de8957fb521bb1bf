"""Engines and sessions for SQLite, PostgreSQL and MariaDB, and waiting for the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.config import redact_url
from conveyor.waiting import Unreachable, wait_until_reachable

log = logging.getLogger(__name__)

# The drivers we lock and test; a bare scheme picks them.
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


class DatabaseUnavailable(Unreachable):
    """The database could not be reached within the configured attempts."""


def _first_line(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0]


def normalise_url(url: str) -> URL:
    """``url`` with our locked driver filled in where it names none."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"database URL {redact_url(url)!r} cannot be parsed") from exc
    if "+" not in parsed.drivername and parsed.drivername in DRIVERS:
        parsed = parsed.set(drivername=DRIVERS[parsed.drivername])
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers go on while a worker writes; the busy timeout queues writers
    # instead of failing them with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with pool settings fit for threads and several processes."""
    parsed = normalise_url(url)
    options: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        # A file database has no server to drop connections; a ping per checkout is waste.
        database = parsed.database or ""
        if database and database != ":memory:":
            from pathlib import Path

            Path(database).parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        # Requests run on up to 40 threads: connections past the pool size would be opened
        # (and tuned with PRAGMAs) and closed again for every request.
        options.update(pool_size=40, max_overflow=20)
    else:
        options.update(pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)
    engine = create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _tune_sqlite)
    return engine


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Run one trivial query; raise when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def wait_until_ready(self, attempts: int, wait: float) -> None:
        """Ping until the database answers, up to ``attempts`` times ``wait`` seconds apart."""
        wait_until_reachable(
            f"database {redact_url(self.url)}",
            self.ping,
            attempts=attempts,
            wait=wait,
            errors=(OperationalError,),
            failure=DatabaseUnavailable,
            reason=_first_line,
        )

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
