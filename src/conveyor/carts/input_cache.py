"""The shared input cache: remote files staged once for every cart, on every worker.

A ``cart_cache`` row per remote file says where it is. Whoever takes the row's lease fetches
the file (stage, wait for disk with backoff, pull with hash checks and retries) into a
content-addressed store; everyone else waiting for it polls the row with a deadline, and
takes the lease over if its holder died. Entries are evicted least recently used, by size,
from the high watermark down to the low one; an entry used within ``lru_buffer_seconds`` or
by a cart being staged or built is never evicted. When no room can be made, that cart ends
with "No Space Available" and every other cart carries on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from conveyor.carts import states
from conveyor.carts.bundles import NO_SPACE, NoSpace
from conveyor.carts.remote_archive import (
    RemoteArchive,
    RemoteMissing,
    RemoteStatus,
    RemoteUnavailable,
)
from conveyor.db.models import CacheEntry, Cart, CartItem
from conveyor.db.types import utcnow
from conveyor.db.upsert import insert_missing
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import RetryLater
from conveyor.runtime import Runtime
from conveyor.storage.archive import StoredBlob
from conveyor.storage.errors import StoreFull

log = logging.getLogger(__name__)

FILLING = "filling"
READY = "ready"
PULL_ATTEMPTS = 5
FIRST_WAIT_SECONDS = 0.5
LONGEST_WAIT_SECONDS = 30.0
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class CacheMiss(Exception):
    """A file the cart needs cannot be had; the message says why (per file)."""


@dataclass(frozen=True)
class CachedFile:
    """A file in the cache, and any hashes computed while it was pulled."""

    sha256: str
    size: int
    crc32: int | None
    mtime: float
    hashes: dict[str, str] = field(default_factory=dict)


def cache_key(source: str, remote_id: str) -> str:
    """The cache's name for a file of an archive interface."""
    return hashlib.sha256(f"{source}\n{remote_id}".encode()).hexdigest()


def register(session: Session, source: str, remote_id: str) -> str:
    """Record that a cart wants ``remote_id`` from ``source``; its cache key."""
    key = cache_key(source, remote_id)
    insert_missing(session, CacheEntry, key=key, source=source, remote_id=remote_id, state=FILLING)
    return key


def fetch(context: JobContext, key: str, check_type: str | None) -> CachedFile:
    """The cached file under ``key``, fetching it first unless someone has or is."""
    runtime = context.runtime
    deadline = time.monotonic() + runtime.settings.remote_stage_timeout_seconds
    wait = FIRST_WAIT_SECONDS
    while True:
        context.check_lease()
        found = _ready(runtime, key)
        if found is not None:
            return found
        if _claim(runtime, key, context.worker):
            try:
                return _fill(context, key, check_type, deadline)
            finally:
                _release(runtime, key, context.worker)
        if time.monotonic() > deadline:
            raise CacheMiss("waited too long for another worker to fetch it")
        time.sleep(wait)
        wait = min(wait * 2, 5.0)


def _ready(runtime: Runtime, key: str) -> CachedFile | None:
    with runtime.db.session() as session:
        entry = session.get(CacheEntry, key)
        if entry is None:
            raise CacheMiss(f"cache entry {key} is unknown")
        if entry.state != READY or entry.sha256 is None or entry.size is None:
            return None
        if runtime.cache.size(entry.sha256) != entry.size:
            entry.state = FILLING  # evicted or lost under us: fetch it again
            return None
        entry.last_used_at = utcnow()
        return CachedFile(entry.sha256, entry.size, entry.crc32, entry.mtime or 0.0)


def _claim(runtime: Runtime, key: str, worker: str) -> bool:
    now = utcnow()
    with runtime.db.session() as session:
        taken = session.execute(
            update(CacheEntry)
            .where(
                CacheEntry.key == key,
                CacheEntry.state != READY,
                or_(CacheEntry.lease_owner.is_(None), CacheEntry.lease_expires_at < now),
            )
            .values(
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=runtime.settings.lease_seconds),
            )
            .execution_options(synchronize_session=False)
        )
        return bool(taken.rowcount)  # type: ignore[attr-defined]


def _renew(runtime: Runtime, key: str, worker: str) -> None:
    with runtime.db.session() as session:
        session.execute(
            update(CacheEntry)
            .where(CacheEntry.key == key, CacheEntry.lease_owner == worker)
            .values(lease_expires_at=utcnow() + timedelta(seconds=runtime.settings.lease_seconds))
            .execution_options(synchronize_session=False)
        )


def _release(runtime: Runtime, key: str, worker: str) -> None:
    with runtime.db.session() as session:
        session.execute(
            update(CacheEntry)
            .where(CacheEntry.key == key, CacheEntry.lease_owner == worker)
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )


def _fill(context: JobContext, key: str, check_type: str | None, deadline: float) -> CachedFile:
    runtime = context.runtime
    with runtime.db.session() as session:
        entry = session.get(CacheEntry, key)
        assert entry is not None
        source, remote_id = entry.source, entry.remote_id
    remote = RemoteArchive(source)
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        try:
            status = _on_disk(context, remote, client, key, remote_id, deadline)
            make_room(runtime, status.size)
            with runtime.db.session() as session:
                session.execute(
                    update(CacheEntry).where(CacheEntry.key == key).values(size=status.size)
                )
            stored = _pull(context, remote, client, key, remote_id, status.size, check_type)
        except RemoteMissing as exc:
            raise CacheMiss(str(exc)) from None
        except (RemoteUnavailable, httpx.HTTPError) as exc:
            raise RetryLater(f"archive interface {source}: {exc}") from exc
    crc32 = stored.hashes.get("crc32")
    cached = CachedFile(
        stored.sha256,
        stored.size,
        int(crc32, 16) if crc32 else None,
        status.mtime,
        stored.hashes,
    )
    with runtime.db.session() as session:
        session.execute(
            update(CacheEntry)
            .where(CacheEntry.key == key)
            .values(
                state=READY,
                size=cached.size,
                sha256=cached.sha256,
                crc32=cached.crc32,
                mtime=cached.mtime,
                last_used_at=utcnow(),
            )
        )
    log.info("cached %s from %s (%d bytes)", remote_id, source, cached.size)
    return cached


def _on_disk(
    context: JobContext,
    remote: RemoteArchive,
    client: httpx.Client,
    key: str,
    remote_id: str,
    deadline: float,
) -> RemoteStatus:
    """Stage the file and wait, with growing pauses, until it is on disk."""
    remote.stage(client, remote_id)
    wait = FIRST_WAIT_SECONDS
    while True:
        status = remote.status(client, remote_id)
        if status.on_disk:
            return status
        if time.monotonic() + wait > deadline:
            raise CacheMiss(f"file {remote_id} stayed on {status.media} past the deadline")
        context.check_lease()
        _renew(context.runtime, key, context.worker)
        time.sleep(wait)
        wait = min(wait * 2, LONGEST_WAIT_SECONDS)


def _pull(
    context: JobContext,
    remote: RemoteArchive,
    client: httpx.Client,
    key: str,
    remote_id: str,
    size: int,
    check_type: str | None,
) -> StoredBlob:
    """Stream the file into the cache store; a short or broken transfer is tried again."""
    extra = (check_type,) if check_type else ()
    problem = ""
    for attempt in range(1, PULL_ATTEMPTS + 1):
        try:
            chunks = _renewing(context, key, remote.read(client, remote_id))
            stored = context.runtime.cache.put_chunks(chunks, extra)
        except (RemoteUnavailable, httpx.HTTPError) as exc:
            problem = str(exc) or type(exc).__name__
        except StoreFull as exc:
            raise NoSpace(f"{NO_SPACE}: the input cache is full") from exc
        else:
            if stored.size == size:
                return stored
            problem = f"got {stored.size} of {size} bytes"
        log.warning("pulling %s, attempt %d: %s", remote_id, attempt, problem)
        _renew(context.runtime, key, context.worker)
        time.sleep(min(2.0**attempt, LONGEST_WAIT_SECONDS))
    raise RemoteUnavailable(f"pulling {remote_id} failed {PULL_ATTEMPTS} times: {problem}")


def _renewing(context: JobContext, key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, renewing the entry's lease (and checking the job's) as they flow."""
    every = context.runtime.settings.lease_seconds / 3
    renewed = time.monotonic()
    for chunk in chunks:
        if time.monotonic() - renewed > every:
            context.check_lease()
            _renew(context.runtime, key, context.worker)
            renewed = time.monotonic()
        yield chunk


def make_room(runtime: Runtime, needed: int) -> None:
    """Evict unprotected entries until ``needed`` more bytes fit, or raise :class:`NoSpace`."""
    settings = runtime.settings
    with runtime.db.session() as session:
        held = session.scalar(select(func.coalesce(func.sum(CacheEntry.size), 0))) or 0
        if held + needed <= settings.cart_cache_high_bytes:
            return
        target = max(settings.cart_cache_low_bytes - needed, 0)
        for entry in _evictable(session, settings.lru_buffer_seconds):
            if held <= target:
                break
            _evict(session, runtime, entry)
            held -= entry.size or 0
        if held + needed > settings.cart_cache_high_bytes:
            raise NoSpace(
                f"{NO_SPACE}: the input cache holds {held} bytes in use and this file needs "
                f"{needed} more (high watermark {settings.cart_cache_high_bytes})"
            )


def _evictable(session: Session, buffer_seconds: float) -> list[CacheEntry]:
    """Ready entries nobody used within the buffer and no cart in progress needs, oldest first."""
    in_progress = (
        select(CartItem.remote_key)
        .join(Cart, Cart.id == CartItem.cart_id)
        .where(CartItem.remote_key.is_not(None), Cart.state.in_(states.IN_PROGRESS))
    )
    cutoff = utcnow() - timedelta(seconds=buffer_seconds)
    return list(
        session.scalars(
            select(CacheEntry)
            .where(
                CacheEntry.state == READY,
                CacheEntry.last_used_at < cutoff,
                CacheEntry.key.not_in(in_progress),
            )
            .order_by(CacheEntry.last_used_at)
        )
    )


def _evict(session: Session, runtime: Runtime, entry: CacheEntry) -> None:
    """Drop the entry's bytes; the row stays, so a cart that wants them fetches them again."""
    sha256 = entry.sha256
    session.execute(
        update(CacheEntry)
        .where(CacheEntry.key == entry.key)
        .values(state=FILLING, size=None, sha256=None, crc32=None)
        .execution_options(synchronize_session=False)
    )
    shared = session.scalar(
        select(CacheEntry.key).where(
            CacheEntry.sha256 == sha256, CacheEntry.key != entry.key, CacheEntry.state == READY
        )
    )
    if sha256 is not None and shared is None:
        runtime.cache.delete(sha256)
    log.info("evicted %s (%s bytes) from the input cache", entry.remote_id, entry.size)


def touch(session: Session, cart_id: int) -> bool:
    """Mark a cart's cached files used now; False when one of them is no longer cached."""
    mine = (CartItem.cart_id == cart_id, CartItem.remote_key.is_not(None))
    wanted = session.scalar(select(func.count(func.distinct(CartItem.remote_key))).where(*mine))
    if not wanted:
        return True
    present = session.execute(
        update(CacheEntry)
        .where(CacheEntry.key.in_(select(CartItem.remote_key).where(*mine)))
        .where(CacheEntry.state == READY)
        .values(last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(present == wanted)
