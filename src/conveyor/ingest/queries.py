"""Reading transactions and files, with read permission applied."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, selectinload

from conveyor.auth.principal import Principal
from conveyor.db.models import File, ProjectMember, Transaction
from conveyor.errors import NotFound

RowT = TypeVar("RowT", bound=Any)


def readable(query: Select[RowT], principal: Principal) -> Select[RowT]:
    """``query`` (over transactions) narrowed to those the principal may read."""
    if principal.admin:
        return query
    member_of = select(ProjectMember.project_id).where(ProjectMember.user_id == principal.user)
    return query.where(or_(Transaction.owner == principal.user, Transaction.project.in_(member_of)))


def list_transactions(
    session: Session,
    principal: Principal,
    *,
    after: int | None,
    limit: int,
    project: str | None = None,
    submitter: str | None = None,
) -> list[Transaction]:
    """Transactions the principal may read, oldest first, paged by id."""
    query = select(Transaction).options(selectinload(Transaction.key_values))
    if after is not None:
        query = query.where(Transaction.id > after)
    if project is not None:
        query = query.where(Transaction.project == project)
    if submitter is not None:
        query = query.where(Transaction.submitter == submitter)
    query = readable(query, principal).order_by(Transaction.id).limit(limit)
    return list(session.scalars(query))


def get_transaction(session: Session, principal: Principal, transaction_id: int) -> Transaction:
    """One readable transaction, or :class:`NotFound`."""
    query = readable(
        select(Transaction)
        .options(selectinload(Transaction.key_values))
        .where(Transaction.id == transaction_id),
        principal,
    )
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"transaction {transaction_id} does not exist")
    return found


def list_files(
    session: Session, transaction_id: int, *, after: int | None, limit: int
) -> list[File]:
    """A transaction's files, by id, paged."""
    query = select(File).where(File.transaction_id == transaction_id)
    if after is not None:
        query = query.where(File.id > after)
    return list(session.scalars(query.order_by(File.id).limit(limit)))


def get_file(session: Session, principal: Principal, file_id: int) -> File:
    """One file whose transaction the principal may read, or :class:`NotFound`."""
    row = session.get(File, file_id)
    if row is None:
        raise NotFound(f"file {file_id} does not exist")
    get_transaction(session, principal, row.transaction_id)
    return row
