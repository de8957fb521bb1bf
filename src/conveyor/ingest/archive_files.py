"""Files under Pacifica archive-interface ids: one namespace with Conveyor's file ids.

A numeric id names the file with that id, so an ingested file's archive id is its file id
(the ``_id`` its events carry). Any other id (``foo.txt``) is a name recorded beside the
file it stands for. A PUT stores the bytes once and creates a one-file transaction; an id is
never written twice, and ids handed out later skip the ones a PUT took.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.db.models import ArchiveName, File, Transaction
from conveyor.db.types import utcnow
from conveyor.errors import BadRequest, Conflict, NotFound
from conveyor.ingest import queries
from conveyor.runtime import Runtime
from conveyor.storage.archive import StoredBlob

ORIGIN = "archive"
MAX_ID = 2**63 - 1
MAX_NAME = 255


def parse_archive_id(archive_id: str) -> int | str:
    """The file id a numeric archive id names, or the name itself; BadRequest if unusable."""
    if not archive_id or len(archive_id) > MAX_NAME:
        raise BadRequest(f"archive id {archive_id[:60]!r} must be 1 to {MAX_NAME} characters")
    if archive_id.isascii() and archive_id.isdigit():
        number = int(archive_id)
        if not 1 <= number <= MAX_ID:
            raise BadRequest(f"archive id {archive_id} is out of range")
        return number
    if any(ord(char) < 0x20 for char in archive_id) or "/" in archive_id:
        raise BadRequest(f"archive id {archive_id!r} contains a '/' or a control character")
    return archive_id


def file_id_of(session: Session, archive_id: str) -> int | None:
    """The id of the file an archive id names, or ``None`` when it names none."""
    parsed = parse_archive_id(archive_id)
    if isinstance(parsed, int):
        return parsed if session.get(File, parsed) is not None else None
    return session.scalar(select(ArchiveName.file_id).where(ArchiveName.name == parsed))


def readable_file(session: Session, principal: Principal, archive_id: str) -> File:
    """The file under ``archive_id`` when the principal may read it, else :class:`NotFound`."""
    missing = NotFound(f"file {archive_id} is not in the archive")
    file_id = file_id_of(session, archive_id)
    if file_id is None:
        raise missing
    try:
        return queries.get_file(session, principal, file_id)
    except NotFound:
        raise missing from None


def _refuse_rewrite(archive_id: str) -> Conflict:
    return Conflict(
        f"Can't open {archive_id}: the archive already holds it, and archived files are "
        "never rewritten"
    )


def put_file(
    runtime: Runtime,
    principal: Principal,
    archive_id: str,
    chunks: Iterable[bytes],
    mtime: datetime | None,
) -> StoredBlob:
    """Store the bytes under ``archive_id`` as a new one-file transaction."""
    parsed = parse_archive_id(archive_id)
    with runtime.db.session() as session:
        if file_id_of(session, archive_id) is not None:
            raise _refuse_rewrite(archive_id)
    stored = runtime.archive.put_chunks(chunks)
    runtime.archive.sync()
    try:
        with runtime.db.session() as session:
            _record(session, principal, parsed, stored, mtime)
    except IntegrityError:  # a concurrent PUT took the id between our check and insert
        raise _refuse_rewrite(archive_id) from None
    return stored


def _record(
    session: Session,
    principal: Principal,
    parsed: int | str,
    stored: StoredBlob,
    mtime: datetime | None,
) -> None:
    now = utcnow()
    transaction = Transaction(
        origin=ORIGIN,
        submitter=principal.user,
        owner=principal.user,
        file_count=1,
        total_size=stored.size,
    )
    session.add(transaction)
    session.flush()
    crc32 = stored.hashes.get("crc32")
    row = File(
        id=parsed if isinstance(parsed, int) else None,
        transaction_id=transaction.id,
        subdir="",
        name=str(parsed),
        size=stored.size,
        sha256=stored.sha256,
        crc32=int(crc32, 16) if crc32 else None,
        mtime=mtime or now,
        ctime=now,
    )
    session.add(row)
    session.flush()
    if isinstance(parsed, int):
        _skip_taken_ids(session, parsed)
    else:
        session.add(ArchiveName(name=parsed, file_id=row.id))
        session.flush()


def _skip_taken_ids(session: Session, taken: int) -> None:
    """Move PostgreSQL's id sequence past an id given explicitly.

    MariaDB's AUTO_INCREMENT and SQLite's rowid already continue after the largest id.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    sequence = session.scalar(text("SELECT pg_get_serial_sequence('files', 'id')"))
    if sequence is None:
        return
    session.execute(
        text(
            "SELECT setval(CAST(:sequence AS regclass), GREATEST(:taken, "
            "COALESCE(pg_sequence_last_value(CAST(:sequence AS regclass)), 0)))"
        ),
        {"sequence": sequence, "taken": taken},
    )


def delete_file(session: Session, principal: Principal, archive_id: str) -> None:
    """Remove a file a PUT created; files of ingested transactions are immutable."""
    row = readable_file(session, principal, archive_id)
    transaction = session.get(Transaction, row.transaction_id)
    if transaction is None or transaction.origin != ORIGIN:
        raise Conflict(
            f"file {archive_id} belongs to transaction {row.transaction_id}, which is "
            "immutable; only files stored through this archive interface can be deleted"
        )
    # The database cascades to the file and its archive name.
    session.execute(delete(Transaction).where(Transaction.id == transaction.id))
