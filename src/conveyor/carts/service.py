"""Carts: validating requests, one cart per identical request, and the bundle of a cart."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.carts import states
from conveyor.carts.events import CART_READY, cart_event
from conveyor.carts.input_cache import touch
from conveyor.carts.layout import BundleEntry, BundleLayout, make_layout, manifest_json
from conveyor.carts.layout_cache import LAYOUTS
from conveyor.carts.notify import queue_notifications
from conveyor.carts.paths import BadBundlePath, bundle_path
from conveyor.db.models import Cart, CartItem, CartRequester, File, ProjectMember, Transaction
from conveyor.db.types import utcnow
from conveyor.db.upsert import insert_missing
from conveyor.errors import BadRequest, Conflict, NotFound
from conveyor.events.outbox import record_event
from conveyor.jobs.service import create_job
from conveyor.runtime import Runtime
from conveyor.storage.archive import Archive
from conveyor.storage.stores import BlobStore

Format = Literal["tar", "zip"]
Mode = Literal["stream", "build"]
Compression = Literal["stored", "deflate"]
LOOKUP_BATCH = 500
KIND_CART_BUILD = "cart build"


@dataclass(frozen=True)
class RequestedFile:
    """A file asked for, where it should stand in the bundle (default: subdir/name), and
    optionally a hash the requester expects it to have."""

    file_id: int
    path: str | None = None
    check_type: str | None = None
    check_sum: str | None = None


@dataclass(frozen=True)
class CartOptions:
    """How the bundle is made: format, stream or build, compression, and a manifest or not."""

    format: Format = "tar"
    mode: Mode = "stream"
    compression: Compression = "stored"
    manifest: bool = True
    # Where a built bundle is kept, when the caller names it (MoTrPAC: "<hash>.zip").
    bundle_name: str | None = None

    def __post_init__(self) -> None:
        if self.compression == "deflate" and self.format != "zip":
            raise BadRequest("compression 'deflate' is for zip bundles; tar bundles are stored")
        if self.compression == "deflate" and self.mode == "stream":
            raise BadRequest(
                "a deflated zip's size is unknown until it is built; ask for mode 'build'"
            )


@dataclass(frozen=True)
class CartItemSpec:
    """A checked item: the file's identity and its path in the bundle."""

    file_id: int | None
    path: str
    size: int
    sha256: str
    crc32: int | None
    mtime: float
    check_type: str | None = None
    check_sum: str | None = None
    # A file of a remote archive interface, by its input-cache key (file_id is then None).
    remote_key: str | None = None


def _readable_projects(session: Session, principal: Principal) -> set[str]:
    query = select(ProjectMember.project_id).where(ProjectMember.user_id == principal.user)
    return set(session.scalars(query))


def _files_of(session: Session, ids: list[int]) -> dict[int, tuple[File, Transaction]]:
    found: dict[int, tuple[File, Transaction]] = {}
    for start in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[start : start + LOOKUP_BATCH]
        rows = session.execute(
            select(File, Transaction)
            .join(Transaction, Transaction.id == File.transaction_id)
            .where(File.id.in_(batch))
        )
        for file, transaction in rows:
            found[file.id] = (file, transaction)
    return found


def resolve_items(
    session: Session,
    principal: Principal,
    files: Iterable[RequestedFile],
    transactions: Iterable[int] = (),
    remote: Iterable[CartItemSpec] = (),
) -> list[CartItemSpec]:
    """The cart's items in bundle order (by path), after every check a request must pass.

    ``remote`` items (files of a remote archive interface) join the same checks of paths.
    """
    wanted = list(files)
    items: dict[str, CartItemSpec] = {}
    for spec in remote:
        if spec.path in items:
            raise BadRequest(f"path {spec.path!r} is asked for twice")
        items[spec.path] = spec
    for transaction_id in transactions:
        ids = session.scalars(select(File.id).where(File.transaction_id == transaction_id))
        listed = [RequestedFile(file_id) for file_id in ids]
        if not listed:
            raise NotFound(f"transaction {transaction_id} does not exist or holds no files")
        wanted.extend(listed)
    if not wanted and not items:
        raise BadRequest("a cart needs at least one file or transaction")
    found = _files_of(session, sorted({item.file_id for item in wanted}))
    projects = None if principal.admin else _readable_projects(session, principal)
    for item in wanted:
        pair = found.get(item.file_id)
        if pair is None or not _may_read(principal, pair[1], projects):
            raise NotFound(f"file {item.file_id} does not exist")
        file = pair[0]
        default = f"{file.subdir}/{file.name}" if file.subdir else file.name
        try:
            path = bundle_path(item.path if item.path is not None else default)
        except BadBundlePath as exc:
            raise BadRequest(str(exc)) from None
        if path in items:
            raise BadRequest(f"path {path!r} is asked for twice")
        items[path] = CartItemSpec(
            file.id,
            path,
            file.size,
            file.sha256,
            file.crc32,
            file.mtime.timestamp() if file.mtime else 0.0,
            item.check_type,
            item.check_sum.lower() if item.check_sum is not None else None,
        )
    _refuse_file_folder_clashes(items)
    return [items[path] for path in sorted(items)]


def _may_read(principal: Principal, transaction: Transaction, projects: set[str] | None) -> bool:
    if projects is None or transaction.owner == principal.user:
        return True
    return transaction.project in projects


def _refuse_file_folder_clashes(items: dict[str, CartItemSpec]) -> None:
    for path in items:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in items:
                raise BadRequest(f"path {folder!r} is a file and also a folder of {path!r}")


def request_hash(
    options: CartOptions, items: list[CartItemSpec], missing: list[dict[str, Any]] | None = None
) -> str:
    """The canonical identity of a request: how it is bundled, and each file's identity,
    path and expected hash (and what is missing from it)."""
    canonical = json.dumps(
        {
            "format": options.format,
            "mode": options.mode,
            "compression": options.compression,
            "manifest": options.manifest,
            "name": options.bundle_name,
            "items": [
                [i.file_id, i.remote_key, i.sha256, i.path, i.check_type, i.check_sum]
                for i in items
            ],
            "missing": sorted(str(item.get("path")) for item in missing or []),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def needs_job(options: CartOptions, items: list[CartItemSpec]) -> bool:
    """True when the cart must be staged (hashes checked) or built before it is ready."""
    return options.mode == "build" or any(item.check_type for item in items)


@dataclass(frozen=True)
class Requester:
    """Who asks for a cart, and how they want to hear of its outcome."""

    user: str
    notify_kind: str | None = None
    notify_url: str | None = None
    email: str | None = None
    name: str | None = None
    external_id: str | None = None


@dataclass
class Outcome:
    """The cart a request got, whether it is new, and the jobs to submit after commit."""

    cart: Cart
    created: bool
    jobs: list[int] = field(default_factory=list)


def create_or_join(
    session: Session,
    principal: Principal,
    options: CartOptions,
    items: list[CartItemSpec],
    idempotency_key: str | None,
    requester: Requester | None = None,
    missing: list[dict[str, Any]] | None = None,
) -> Outcome:
    """The cart for this request; identical requests share one.

    A new cart that needs staging or building gets a queued job. Joining a cart that ended
    in error starts it again; joining one that is finished queues the requester's
    notification. ``missing`` lists asked-for files the archive lacks (the manifest says so).
    """
    who = requester or Requester(principal.user)
    if idempotency_key:
        replay = session.scalar(
            select(Cart)
            .join(CartRequester, CartRequester.cart_id == Cart.id)
            .where(
                CartRequester.user == who.user,
                CartRequester.idempotency_key == idempotency_key,
            )
        )
        if replay is not None:
            return Outcome(replay, False)
    gone = missing or []
    digest = request_hash(options, items, gone)
    # Insert-if-absent on the request hash: of many identical requests at once, exactly
    # one creates the cart and the others join it.
    token = uuid.uuid4().hex
    insert_missing(
        session,
        Cart,
        request_hash=digest,
        creator_token=token,
        format=options.format,
        mode=options.mode,
        compression=options.compression,
        manifest=options.manifest,
        bundle_key=options.bundle_name,
        missing=gone,
        state=states.WAITING,
        owner=principal.user,
        file_count=len(items),
        total_size=sum(item.size for item in items),
    )
    # A locking read: under MariaDB's repeatable read a plain SELECT would use this
    # transaction's older snapshot and miss a cart another request just committed.
    cart = session.scalars(
        select(Cart).where(Cart.request_hash == digest).with_for_update(read=True)
    ).one()
    outcome = Outcome(cart, cart.creator_token == token)
    if outcome.created:
        _insert_items(session, cart.id, items)
    if outcome.created or cart.state == states.ERROR:
        _start(session, cart, options, items, outcome)
    insert_missing(
        session,
        CartRequester,
        cart_id=cart.id,
        user=who.user,
        idempotency_key=idempotency_key,
        notify_kind=who.notify_kind,
        notify_url=who.notify_url,
        email=who.email,
        name=who.name,
        external_id=who.external_id,
    )
    session.flush()
    if cart.state in states.FINISHED and who.notify_kind:
        job_id = queue_notifications(session, cart)
        if job_id is not None:
            outcome.jobs.append(job_id)
    return outcome


def _start(
    session: Session,
    cart: Cart,
    options: CartOptions,
    items: list[CartItemSpec],
    outcome: Outcome,
) -> None:
    if cart.state == states.ERROR:  # a new outcome: every requester hears again
        session.execute(
            update(CartRequester)
            .where(CartRequester.cart_id == cart.id)
            .values(notified_at=None)
            .execution_options(synchronize_session=False)
        )
    cart.error = ""
    cart.item_errors = []
    cart.bytes_done = 0
    if needs_job(options, items):
        cart.state = states.WAITING
        job = create_job(session, KIND_CART_BUILD, cart.owner, {"cart_id": cart.id})
        cart.job_id = job.id
        outcome.jobs.append(job.id)
    else:
        cart.state = states.READY


def _insert_items(session: Session, cart_id: int, items: list[CartItemSpec]) -> None:
    for start in range(0, len(items), LOOKUP_BATCH):
        session.execute(
            insert(CartItem),
            [
                {
                    "cart_id": cart_id,
                    "position": position,
                    "file_id": item.file_id,
                    "path": item.path,
                    "size": item.size,
                    "sha256": item.sha256,
                    "crc32": item.crc32,
                    "mtime": item.mtime,
                    "check_type": item.check_type,
                    "check_sum": item.check_sum,
                    "remote_key": item.remote_key,
                }
                for position, item in enumerate(items[start : start + LOOKUP_BATCH], start)
            ],
        )


def visible_cart(session: Session, principal: Principal, cart_id: int) -> Cart:
    """The cart if the principal asked for it (or is an admin), else :class:`NotFound`."""
    cart = session.get(Cart, cart_id)
    if cart is None:
        raise NotFound(f"cart {cart_id} does not exist")
    if not principal.admin and session.get(CartRequester, (cart_id, principal.user)) is None:
        raise NotFound(f"cart {cart_id} does not exist")
    return cart


def restage_if_evicted(session: Session, cart: Cart) -> int | None:
    """Queue a ready stream cart for staging again when its remote files left the input
    cache; the job's id, or ``None`` when every file is still there (now marked used)."""
    if cart.mode != "stream" or cart.state != states.READY or touch(session, cart.id):
        return None
    cart.state = states.WAITING
    cart.job_id = create_job(session, KIND_CART_BUILD, cart.owner, {"cart_id": cart.id}).id
    return cart.job_id


def remove(session: Session, bundles: BlobStore, principal: Principal, cart_id: int) -> None:
    """Withdraw the principal's request; the cart goes when nobody (or an admin) wants it."""
    cart = visible_cart(session, principal, cart_id)
    session.execute(
        delete(CartRequester).where(
            CartRequester.cart_id == cart_id, CartRequester.user == principal.user
        )
    )
    others = session.scalar(select(CartRequester.user).where(CartRequester.cart_id == cart_id))
    if others is None or principal.admin:
        discard(session, bundles, cart)


def discard(session: Session, bundles: BlobStore, cart: Cart) -> None:
    """Delete the cart and its built bundle, if any."""
    if cart.bundle_key:
        bundles.delete(cart.bundle_key)
    session.delete(cart)


def entries_of(
    session: Session, runtime: Runtime, cart: Cart, prefix: str = ""
) -> Iterator[BundleEntry]:
    """The cart's files as bundle entries, in bundle order, optionally under ``prefix``.

    Archived files are read from the archive, remote ones from the input cache.
    """
    # Plain rows, not ORM objects: a cart of 10,000 files is read on every download.
    rows = session.execute(
        select(
            CartItem.file_id,
            CartItem.path,
            CartItem.size,
            CartItem.mtime,
            CartItem.sha256,
            CartItem.crc32,
            CartItem.remote_key,
        )
        .where(CartItem.cart_id == cart.id)
        .order_by(CartItem.position)
    )
    for file_id, path, size, mtime, sha256, crc32, remote_key in rows:
        store = runtime.cache if remote_key else runtime.archive
        if crc32 is None and cart.format == "zip" and cart.compression == "stored":
            raise Conflict(f"file {file_id} has no CRC-32 record, so it cannot be zipped")
        yield BundleEntry(
            path=f"{prefix}/{path}" if prefix else path,
            size=size,
            mtime=mtime,
            sha256=sha256,
            crc32=crc32 or 0,
            read=_reader(store, sha256),
            read_bytes=store.slice_reader(sha256),
        )


def _reader(archive: Archive, sha256: str) -> Callable[[int, int], Iterator[bytes]]:
    def read(start: int, end: int) -> Iterator[bytes]:
        return archive.read_range(sha256, start, end)

    return read


def layout_of(session: Session, runtime: Runtime, cart: Cart, prefix: str = "") -> BundleLayout:
    """The cart's stored bundle: exact size, ETag, and any byte range on demand.

    ``prefix`` puts every file under one folder (Pacifica cartd names it per download).
    """

    def make() -> BundleLayout:
        entries = list(entries_of(session, runtime, cart, prefix))
        manifest = manifest_json(entries, cart.missing) if cart.manifest else None
        return make_layout("zip" if cart.format == "zip" else "tar", entries, manifest)

    # Remote files may be fetched again (and change) between two times a cart is ready.
    version = f"{cart.request_hash}@{cart.ready_at.isoformat() if cart.ready_at else ''}"
    return LAYOUTS.get_or_make((runtime.archive.url, version, prefix), make)


def settle_stream(session: Session, runtime: Runtime, cart: Cart) -> None:
    """Record the size, ETag and ready event of a stream cart that is ready as it exists."""
    cart.ready_at = utcnow()
    layout = layout_of(session, runtime, cart)
    cart.total_size = layout.size
    cart.bytes_done = layout.size
    cart.etag = layout.etag
    record_event(session, cart_event(session, cart, CART_READY))
