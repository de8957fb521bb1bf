"""Cart status for clients that poll: one Core query, no ORM session.

Status endpoints are asked many times a second by waiting clients; an ORM session costs
about three times a plain connection's query here, so these reads skip it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, exists, select

from conveyor.auth.principal import Principal
from conveyor.db.engine import Database
from conveyor.db.models import Cart, CartRequester, PacificaCart
from conveyor.errors import NotFound

CARTS = Cart.__table__
REQUESTERS = CartRequester.__table__
UIDS = PacificaCart.__table__


def cart_row(db: Database, principal: Principal, cart_id: int) -> Row[Any]:
    """The cart's row if the principal asked for it (or is an admin), else NotFound."""
    query = select(CARTS).where(CARTS.c.id == cart_id)
    if not principal.admin:
        query = query.where(
            exists().where(REQUESTERS.c.cart_id == cart_id, REQUESTERS.c.user == principal.user)
        )
    with db.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise NotFound(f"cart {cart_id} does not exist")
    return row


def uid_state(db: Database, principal: Principal, uid: str) -> tuple[str, str] | None:
    """(state, error) of the cart a Pacifica uid names, if the principal asked for it."""
    query = (
        select(CARTS.c.state, CARTS.c.error)
        .join(UIDS, UIDS.c.cart_id == CARTS.c.id)
        .where(UIDS.c.uid == uid)
    )
    if not principal.admin:
        query = query.where(UIDS.c.user == principal.user)
    with db.engine.connect() as connection:
        row = connection.execute(query).first()
    return (row.state, row.error) if row is not None else None
