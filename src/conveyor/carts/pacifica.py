"""Pacifica cartd carts: client-chosen uids over Conveyor carts.

A uid names one cart (the newest request for it wins); identical requests under several
uids share one cart. Files are named by archive id and carry the hash the client expects;
a file that is missing or has another hash ends the cart in ``error`` after it is accepted,
as the published service does. In the published "bundle" mode members sit under the uid
and the tar is built once; otherwise the tar streams from the archive with members under
the download's file name.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.carts import service, states
from conveyor.carts.events import record_failure
from conveyor.carts.input_cache import register
from conveyor.carts.paths import BadBundlePath, bundle_path
from conveyor.db.models import Cart, CartRequester, PacificaCart
from conveyor.errors import BadRequest, NotFound
from conveyor.ingest.archive_files import file_id_of, readable_file
from conveyor.storage.stores import BlobStore

HASH_TYPES = frozenset(name.lower() for name in hashlib.algorithms_available)


@dataclass(frozen=True)
class CartdFile:
    """One entry of a cartd request's ``fileids``."""

    id: str
    path: str
    hashtype: str
    hashsum: str


def published_status(state: str) -> str:
    """The state a cartd client knows: ``staging`` until ``ready`` or ``error``."""
    if state in (states.READY, states.ERROR):
        return state
    return states.STAGING


def _bundle_path(uid: str, file: CartdFile, bundle: bool) -> str:
    relative = file.path[1:] if file.path.startswith("/") else file.path
    try:
        return bundle_path(f"{uid}/{relative}" if bundle else relative)
    except BadBundlePath as exc:
        raise BadRequest(str(exc)) from None


def _hash_type(file: CartdFile) -> str:
    kind = file.hashtype.lower()
    if kind not in HASH_TYPES:
        known = ", ".join(sorted(HASH_TYPES & {"md5", "sha1", "sha256", "sha512"}))
        raise BadRequest(f"hashtype {file.hashtype!r} of file {file.id} is unknown; use {known}")
    return kind


def request_cart(
    session: Session,
    principal: Principal,
    uid: str,
    files: list[CartdFile],
    bundle: bool,
    remote_source: str | None = None,
) -> service.Outcome:
    """The cart for this request, named by ``uid``; the caller submits its jobs.

    A file Conveyor does not hold is taken from the archive interface at ``remote_source``
    when one is configured (staged into the shared input cache while the cart is staged).
    """
    if not files:
        raise BadRequest("fileids is empty: a cart needs at least one file")
    requested: list[service.RequestedFile] = []
    remote: list[service.CartItemSpec] = []
    missing: list[dict[str, Any]] = []
    for file in files:
        path = _bundle_path(uid, file, bundle)
        kind = _hash_type(file)
        file_id = _readable_id(session, principal, file.id)
        if file_id is not None:
            requested.append(service.RequestedFile(file_id, path, kind, file.hashsum))
        elif remote_source and file_id_of(session, file.id) is None:
            # Only ids Conveyor does not hold at all go to the remote archive: one this
            # requester may not read must not be fetched from elsewhere under its name.
            key = register(session, remote_source, file.id)
            checksum = file.hashsum.lower()
            remote.append(service.CartItemSpec(None, path, 0, "", None, 0.0, kind, checksum, key))
        else:
            missing.append({"item": path, "error": f"file {file.id} is not in the archive"})
    if missing:
        outcome = service.Outcome(
            _failed_cart(session, principal, len(files), missing, bundle), True
        )
    else:
        items = service.resolve_items(session, principal, requested, remote=remote)
        options = service.CartOptions("tar", "build" if bundle else "stream", manifest=False)
        outcome = service.create_or_join(session, principal, options, items, None)
    session.execute(delete(PacificaCart).where(PacificaCart.uid == uid))
    session.add(PacificaCart(uid=uid, cart_id=outcome.cart.id, user=principal.user, bundle=bundle))
    session.flush()
    return outcome


def _readable_id(session: Session, principal: Principal, archive_id: str) -> int | None:
    try:
        return readable_file(session, principal, archive_id).id
    except NotFound:  # unreadable is the same as absent to this requester
        return None


def _failed_cart(
    session: Session,
    principal: Principal,
    count: int,
    missing: list[dict[str, Any]],
    bundle: bool,
) -> Cart:
    """A cart already in ``error`` naming the missing files, with its failure event."""
    first = missing[0]
    cart = Cart(
        # Never joined by another request: it names files that are not there.
        request_hash=f"missing-{uuid.uuid4().hex}",
        creator_token=uuid.uuid4().hex,
        format="tar",
        mode="build" if bundle else "stream",
        manifest=False,
        state=states.ERROR,
        owner=principal.user,
        file_count=count,
        error=f"{len(missing)} of {count} files failed; first: {first['item']}: {first['error']}",
        item_errors=missing,
    )
    session.add(cart)
    session.flush()
    session.add(CartRequester(cart_id=cart.id, user=principal.user))
    # Born failed, it never reaches the build's failure path, which records this otherwise.
    record_failure(session, cart)
    return cart


def cart_of(session: Session, principal: Principal, uid: str) -> tuple[Cart, bool] | None:
    """The cart a uid names and whether it is in bundle mode, if the principal asked for it."""
    row = session.get(PacificaCart, uid)
    if row is None or not (principal.admin or row.user == principal.user):
        return None
    cart = session.get(Cart, row.cart_id)
    return (cart, row.bundle) if cart is not None else None


def forget(session: Session, bundles: BlobStore, principal: Principal, uid: str) -> bool:
    """Delete what a uid names; the cart goes once nobody wants it. False if unknown."""
    found = cart_of(session, principal, uid)
    if found is None:
        return False
    cart, _bundle = found
    session.execute(delete(PacificaCart).where(PacificaCart.uid == uid))
    session.flush()
    still_named = session.scalar(
        select(PacificaCart.uid).where(
            PacificaCart.cart_id == cart.id, PacificaCart.user == principal.user
        )
    )
    if still_named is None:
        service.remove(session, bundles, principal, cart.id)
    return True
