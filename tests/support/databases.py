"""Throwaway databases on the machine's PostgreSQL and MariaDB, one per use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from tests.support.services import require_tcp

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"


@contextmanager
def scratch_database(backend: str) -> Iterator[str]:
    """A URL of a new, empty database on ``backend`` (sqlite is the caller's); dropped after."""
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        require_tcp("PostgreSQL", "127.0.0.1", 5432)
        admin_url, url = POSTGRES_ADMIN, f"postgresql://postgres@127.0.0.1:5432/{name}"
    elif backend == "mariadb":
        require_tcp("MariaDB", "127.0.0.1", 3306)
        admin_url, url = MARIADB_ADMIN, f"mariadb://root@127.0.0.1:3306/{name}"
    else:
        raise ValueError(backend)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url
    finally:
        with admin.connect() as connection:
            if backend == "postgresql":
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
