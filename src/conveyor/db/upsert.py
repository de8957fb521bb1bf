"""Inserting a row unless its key is taken, also when a concurrent writer takes it first."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from conveyor.db.models import Base


def insert_missing(session: Session, model: type[Base], **values: Any) -> None:
    """``INSERT`` the row unless a unique key of it is taken.

    The first keyword names the column a MySQL/MariaDB no-op update touches (its
    "do nothing"), so pass a key column first. Whether this call inserted the row is not
    reported: row counts differ by driver (MySQL's FOUND_ROWS counts the no-op update);
    callers that need to know write a token of their own and read it back.
    """
    statement: Executable
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(model).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(model).values(**values).on_conflict_do_nothing()
    else:  # mysql, mariadb: a no-op update of the key is MySQL's "do nothing"
        key = next(iter(values))
        statement = mysql.insert(model).values(**values).on_duplicate_key_update({key: values[key]})
    session.execute(statement)


def insert_many_missing(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> None:
    """``INSERT`` every row whose unique keys are free; rows whose keys are taken are skipped.

    As :func:`insert_missing`, the first key of each row is what MySQL/MariaDB's no-op
    update touches. The rows go as one executemany of a cached statement, not as a
    statement compiled for their count, on the table itself: the ORM's bulk path spent
    about as long per row preparing it as the database took to store it.
    """
    if not rows:
        return
    table = cast(Table, model.__table__)
    statement: Executable
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:
        key = next(iter(rows[0]))
        inserted = mysql.insert(table)
        statement = inserted.on_duplicate_key_update({key: inserted.inserted[key]})
    session.connection().execute(statement, rows)
