"""MoTrPAC zip requests: a FileDownloadMessage in; one deflated zip named ``<hash>.zip`` out.

An object name is the path of an archived file (``subdir/name``), as a mirror of the
MoTrPAC bucket publishes them; the newest readable file at that path is taken, optionally
only from one project. Objects the archive lacks are listed in the zip's manifest as
missing, as the zipper lists them. Each requester is told by a UserNotificationMessage.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.carts import service
from conveyor.carts.motrpac_messages import BadMessage, DownloadRequest
from conveyor.carts.notify import MOTRPAC
from conveyor.carts.paths import BadBundlePath, bundle_path
from conveyor.db.models import Cart, File, Transaction
from conveyor.ingest.queries import readable
from conveyor.storage.stores import BlobStore

REQUESTER_PREFIX = "motrpac:"


def _latest_at(
    session: Session, principal: Principal, path: str, project: str | None
) -> int | None:
    subdir, _, name = path.rpartition("/")
    query = (
        select(File.id)
        .join(Transaction, Transaction.id == File.transaction_id)
        .where(File.subdir == subdir, File.name == name)
    )
    if project:
        query = query.where(Transaction.project == project)
    return session.scalar(readable(query, principal).order_by(File.id.desc()).limit(1))


def request_zip(
    session: Session,
    principal: Principal,
    bundles: BlobStore,
    request: DownloadRequest,
    project: str | None,
) -> service.Outcome:
    """The zip's cart for this request; identical requests share it; the caller submits jobs."""
    requested: list[service.RequestedFile] = []
    missing: list[dict[str, Any]] = []
    for name, _size in sorted(set(request.objects)):
        try:
            path = bundle_path(name)
        except BadBundlePath as exc:
            raise BadMessage(f"object {name!r}: {exc}") from None
        file_id = _latest_at(session, principal, path, project)
        if file_id is None:
            missing.append({"path": path, "reason": "unable to retrieve file: not in the archive"})
        else:
            requested.append(service.RequestedFile(file_id, path))
    if not requested:
        raise BadMessage(f"none of the {len(missing)} objects asked for is in the archive")
    items = service.resolve_items(session, principal, requested)
    options = service.CartOptions(
        "zip", "build", "deflate", manifest=True, bundle_name=request.zipfile
    )
    person = request.requester
    requester = service.Requester(
        f"{REQUESTER_PREFIX}{person.email}", MOTRPAC, None, person.email, person.name, person.id
    )
    _supersede(session, bundles, request.zipfile, service.request_hash(options, items, missing))
    return service.create_or_join(session, principal, options, items, None, requester, missing)


def _supersede(session: Session, bundles: BlobStore, zipfile: str, request_hash: str) -> None:
    """Drop an older cart that holds the same zip name for other files (a newer version of
    an object): the name is the zipper's contract, so the newest request owns it."""
    older = session.scalars(
        select(Cart).where(Cart.bundle_key == zipfile, Cart.request_hash != request_hash)
    ).all()
    for cart in older:
        service.discard(session, bundles, cart)
