"""The cart job: stage (check) every file, build the bundle once if asked, mark the cart ready.

Any worker may run it; a worker that dies leaves the job to the sweeper, and a rerun starts
over (a half-written bundle sits under a temporary key that is never served). The cart row
says where it is: ``staging`` while files are checked, ``bundling`` while the bundle is
written, then ``ready`` or ``error`` with a reason per file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from conveyor.carts import states
from conveyor.carts.bundles import NoSpace, WrittenBundle, bundle_key, copy_chunks, deflated_zip
from conveyor.carts.bundles import write_bundle as write_to_store
from conveyor.carts.events import CART_READY, cart_event, record_failure
from conveyor.carts.input_cache import CacheMiss, fetch
from conveyor.carts.layout import manifest_json
from conveyor.carts.notify import queue_notifications
from conveyor.carts.service import KIND_CART_BUILD, discard, entries_of, layout_of
from conveyor.db.models import Cart, CartItem, File
from conveyor.db.types import utcnow
from conveyor.events.outbox import record_event
from conveyor.jobs import service as jobs
from conveyor.jobs import states as job_states
from conveyor.jobs.context import JobContext, LeaseLost
from conveyor.jobs.errors import RetryLater, StepFailed
from conveyor.jobs.executors import SWEEP_HOOKS, SweepHook
from conveyor.jobs.registry import job_handler
from conveyor.observability import metrics
from conveyor.runtime import Runtime
from conveyor.storage.archive import Archive

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 1.0
MAX_ITEM_ERRORS = 1000
STAGE_BATCH = 1000
EXPIRY_SWEEP_SECONDS = 60.0
TEMP_PURGE_SECONDS = 600.0
EXPIRY_BATCH = 100
STAGE_TASK = "stage files"
BUNDLE_TASK = "write bundle"


@dataclass(frozen=True)
class StagedItem:
    """What the stage step knows of one cart item."""

    position: int
    file_id: int | None
    remote_key: str | None
    path: str
    size: int
    sha256: str
    check_type: str | None
    check_sum: str | None
    file_exists: bool
    hashtype: str | None
    hashsum: str | None


class Progress:
    """Writes bytes done to the cart and the job at most once a second."""

    def __init__(self, context: JobContext, cart_id: int, total: int) -> None:
        self._context = context
        self._cart_id = cart_id
        self._total = max(total, 1)
        self._last = time.monotonic()

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_SECONDS:
            return
        self._last = now
        with self._context.runtime.db.session() as session:
            session.execute(
                update(Cart)
                .where(Cart.id == self._cart_id)
                .values(bytes_done=done)
                .execution_options(synchronize_session=False)
            )
        self._context.progress(min(100.0, 100.0 * done / self._total))


@job_handler(KIND_CART_BUILD)
def run_cart_build(context: JobContext) -> None:
    """Stage and (in build mode) bundle one cart; its outcome is written to the cart row."""
    cart_id = int(context.payload["cart_id"])
    try:
        _run(context, cart_id)
    except StepFailed as failure:
        _mark_error(context.runtime, cart_id, failure.message, failure.items)
        raise
    except RetryLater as exc:
        if context.attempt >= context.runtime.settings.max_attempts:
            _mark_error(context.runtime, cart_id, str(exc), [])
        raise
    except LeaseLost:
        raise
    except Exception as exc:
        _mark_error(context.runtime, cart_id, f"internal error: {type(exc).__name__}: {exc}", [])
        raise


def _run(context: JobContext, cart_id: int) -> None:
    runtime = context.runtime
    cart = _enter_state(runtime, cart_id, states.STAGING)
    if cart is None:
        _finish_job(runtime, context.job_id, "cart deleted")
        return
    mode, total = cart
    with context.step(STAGE_TASK):
        _stage(context, cart_id, total)
    built = None
    if mode == "build":
        with context.step(BUNDLE_TASK):
            _enter_state(runtime, cart_id, states.BUNDLING)
            try:
                built = _write_bundle(context, cart_id)
            except NoSpace as exc:
                raise StepFailed(BUNDLE_TASK, str(exc)) from None
    context.check_lease()
    _mark_ready(context, cart_id, built)


def _enter_state(runtime: Runtime, cart_id: int, state: str) -> tuple[str, int] | None:
    with runtime.db.session() as session:
        cart = session.get(Cart, cart_id)
        if cart is None:
            return None
        cart.state = state
        cart.bytes_done = 0
        return cart.mode, cart.total_size


def _stage(context: JobContext, cart_id: int, total: int) -> None:
    """Check every file is in the archive (or fetch it into the input cache) whole, with the
    hash its requester expects."""
    progress = Progress(context, cart_id, total)
    errors: list[dict[str, Any]] = []
    failed = count = done = 0
    for item in _staged_items(context.runtime, cart_id):
        context.check_lease()
        count += 1
        if item.remote_key is not None:
            reason, size = _stage_remote(context, cart_id, item)
        else:
            reason, size = _problem(context.runtime.archive, item), item.size
        if reason is not None:
            failed += 1
            if len(errors) < MAX_ITEM_ERRORS:
                errors.append({"item": item.path, "file_id": item.file_id, "error": reason})
        done += size
        progress(done)
    progress(done, force=True)
    if failed:
        first = errors[0]
        raise StepFailed(
            STAGE_TASK,
            f"{failed} of {count} files failed; first: {first['item']}: {first['error']}",
            errors,
        )


def _stage_remote(context: JobContext, cart_id: int, item: StagedItem) -> tuple[str | None, int]:
    """Fetch a remote file into the input cache and record what it is; (problem, size)."""
    assert item.remote_key is not None
    try:
        cached = fetch(context, item.remote_key, item.check_type)
    except CacheMiss as exc:
        return str(exc), 0
    except NoSpace as exc:
        raise StepFailed(STAGE_TASK, str(exc)) from None
    with context.runtime.db.session() as session:
        session.execute(
            update(CartItem)
            .where(CartItem.cart_id == cart_id, CartItem.position == item.position)
            .values(size=cached.size, sha256=cached.sha256, crc32=cached.crc32, mtime=cached.mtime)
            .execution_options(synchronize_session=False)
        )
    known = {"sha256": cached.sha256, **cached.hashes}
    return _check(context.runtime.cache, cached.sha256, known, item), cached.size


def _staged_items(runtime: Runtime, cart_id: int) -> Iterator[StagedItem]:
    """The cart's items in bundle order, read a batch at a time (a cart may hold millions)."""
    position = -1
    while True:
        batch = _staged_batch(runtime, cart_id, position)
        yield from batch
        if len(batch) < STAGE_BATCH:
            return
        position = batch[-1].position


def _staged_batch(runtime: Runtime, cart_id: int, after: int) -> list[StagedItem]:
    with runtime.db.session() as session:
        rows = session.execute(
            select(
                CartItem.position,
                CartItem.file_id,
                CartItem.remote_key,
                CartItem.path,
                CartItem.size,
                CartItem.sha256,
                CartItem.check_type,
                CartItem.check_sum,
                File.id,
                File.hashtype,
                File.hashsum,
            )
            .outerjoin(File, File.id == CartItem.file_id)
            .where(CartItem.cart_id == cart_id, CartItem.position > after)
            .order_by(CartItem.position)
            .limit(STAGE_BATCH)
        )
        return [
            StagedItem(pos, fid, key, path, size, sha, ctype, csum, found is not None, ht, hs)
            for pos, fid, key, path, size, sha, ctype, csum, found, ht, hs in rows
        ]


def _problem(archive: Archive, item: StagedItem) -> str | None:
    """Why an archived item cannot go in the bundle, or ``None`` when it can."""
    if not item.file_exists:
        return f"file {item.file_id} no longer exists"
    held = archive.size(item.sha256)
    if held is None:
        return f"the archive does not hold file {item.file_id} (blob {item.sha256})"
    if held != item.size:
        return f"the archive holds {held} bytes of file {item.file_id}, not {item.size}"
    known = {"sha256": item.sha256}
    if item.hashtype and item.hashsum:  # verified when the file was archived
        known[item.hashtype.lower()] = item.hashsum.lower()
    return _check(archive, item.sha256, known, item)


def _check(store: Archive, sha256: str, known: dict[str, str], item: StagedItem) -> str | None:
    """Whether the blob has the hash the requester expects: from ``known`` hashes, or by
    reading it once."""
    if not item.check_type:
        return None
    kind = item.check_type.lower()
    expected = (item.check_sum or "").lower()
    actual = known.get(kind) or _computed_hash(store, sha256, kind)
    if actual != expected:
        return f"its {item.check_type} is {actual}, not the expected {expected or '(empty)'}"
    return None


def _computed_hash(store: Archive, sha256: str, kind: str) -> str:
    hasher = hashlib.new(kind)
    for chunk in store.read_range(sha256):
        hasher.update(chunk)
    return hasher.hexdigest()


def _write_bundle(context: JobContext, cart_id: int) -> tuple[WrittenBundle, str]:
    """Write the bundle to the bundle store; it and its ETag."""
    runtime = context.runtime
    with runtime.db.session() as session:
        cart = session.get(Cart, cart_id)
        if cart is None:
            raise StepFailed(BUNDLE_TASK, f"cart {cart_id} was deleted while it was built")
        expected = cart.total_size
        produce: Callable[[Any], None]
        etag = None
        if cart.compression == "deflate":
            entries = list(entries_of(session, runtime, cart))
            manifest = manifest_json(entries, cart.missing) if cart.manifest else None
            produce = deflated_zip(entries, manifest)
        else:
            layout = layout_of(session, runtime, cart)
            produce = copy_chunks(layout.chunks())
            expected, etag = layout.size, layout.etag
        key = cart.bundle_key or bundle_key(cart.request_hash, cart.format)
    progress = Progress(context, cart_id, expected)

    def report(done: int) -> None:
        context.check_lease()
        progress(done)

    written = write_to_store(runtime.bundles, key, produce, report)
    return written, etag or f"zip-deflate-{written.sha256[:40]}"


def _mark_ready(context: JobContext, cart_id: int, built: tuple[WrittenBundle, str] | None) -> None:
    runtime = context.runtime
    with runtime.db.session() as session:
        cart = session.scalars(select(Cart).where(Cart.id == cart_id).with_for_update()).first()
        if cart is None:
            # Deleted while it was built; the key may belong to a newer cart by now.
            if built is not None and not _key_in_use(session, built[0].key):
                runtime.bundles.delete(built[0].key)
            jobs.finish(session, context.job_id, job_states.SUCCEEDED, task="cart deleted")
            return
        now = utcnow()
        cart.ready_at = now
        if built is None:
            layout = layout_of(session, runtime, cart)
            cart.total_size, cart.etag = layout.size, layout.etag
        else:
            written, cart.etag = built
            cart.total_size, cart.bundle_key = written.size, written.key
            cart.expires_at = now + timedelta(seconds=runtime.settings.cart_ttl_seconds)
        cart.bytes_done = cart.total_size
        cart.state = states.READY
        mode = cart.mode
        cart.error = ""
        cart.item_errors = []
        record_event(session, cart_event(session, cart, CART_READY))
        notify_job = queue_notifications(session, cart)
        jobs.finish(
            session, context.job_id, job_states.SUCCEEDED, task="ready", percent=100.0, error=""
        )
    metrics.CARTS_FINISHED.labels(mode=mode, status="ready").inc()
    if built is not None:
        metrics.CART_BUNDLE_BYTES.inc(built[0].size)
    log.info("cart %s is ready", cart_id)
    if notify_job is not None:
        runtime.submit(notify_job)


def _key_in_use(session: Any, key: str) -> bool:
    return session.scalar(select(Cart.id).where(Cart.bundle_key == key).limit(1)) is not None


def _mark_error(runtime: Runtime, cart_id: int, message: str, items: list[dict[str, Any]]) -> None:
    with runtime.db.session() as session:
        cart = session.get(Cart, cart_id)
        if cart is None:
            return
        cart.state = states.ERROR
        cart.error = message
        cart.item_errors = items
        record_failure(session, cart)
        notify_job = queue_notifications(session, cart)
    log.info("cart %s failed: %s", cart_id, message)
    if notify_job is not None:
        runtime.submit(notify_job)


def _finish_job(runtime: Runtime, job_id: int, task: str) -> None:
    with runtime.db.session() as session:
        jobs.finish(session, job_id, job_states.SUCCEEDED, task=task, percent=100.0)


def expire_carts(runtime: Runtime) -> int:
    """Delete built carts whose time is up, with their bundles; how many went."""
    removed = 0
    with runtime.db.session() as session:
        expired = session.scalars(
            select(Cart).where(Cart.expires_at < utcnow()).limit(EXPIRY_BATCH)
        ).all()
        for cart in expired:
            discard(session, runtime.bundles, cart)
            removed += 1
    return removed


def _purge_bundle_temps(runtime: Runtime) -> int:
    return runtime.bundles.purge("tmp", runtime.settings.temp_max_age_seconds)


SWEEP_HOOKS.extend(
    [
        SweepHook(expire_carts, EXPIRY_SWEEP_SECONDS),
        SweepHook(_purge_bundle_temps, TEMP_PURGE_SECONDS),
    ]
)
