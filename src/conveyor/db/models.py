"""Tables. Domain packages own the logic; this module only says what is stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from conveyor.db.types import BigId, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names, so migrations stay portable."""

    metadata = MetaData(naming_convention=NAMING)


class Timestamped:
    """Creation and update times, in UTC."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Job(Timestamped, Base):
    """One unit of asynchronous work with its state machine, lease and errors."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    task: Mapped[str] = mapped_column(String(64), default="")
    task_percent: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str] = mapped_column(Text, default="")
    item_errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    transaction_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("transactions.id", ondelete="SET NULL"), default=None
    )


class StagedBlob(Base):
    """A blob a job has written to the archive before its transaction exists."""

    __tablename__ = "staged_blobs"
    __table_args__ = (Index("ix_staged_blobs_job_id", "job_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    hashes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    mtime: Mapped[float | None] = mapped_column(Float, default=None)
    created: Mapped[bool] = mapped_column(Boolean, default=True)


class SpentBlob(Base):
    """A blob a job made and no longer needs: deleted after a grace period if unreferenced.

    Not at once: another job may have found the same content already stored and be about
    to record its own reference to it.
    """

    __tablename__ = "spent_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    spent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Transaction(Base):
    """An immutable set of files with key-values, created whole or not at all."""

    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger, unique=True, default=None)
    origin: Mapped[str] = mapped_column(String(32), default="ingest")
    submitter: Mapped[str] = mapped_column(String(255), index=True)
    project: Mapped[str | None] = mapped_column(String(255), index=True, default=None)
    instrument: Mapped[str | None] = mapped_column(String(255), default=None)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)

    key_values: Mapped[list[TransactionKeyValue]] = relationship(
        back_populates="transaction", order_by="TransactionKeyValue.id"
    )


class TransactionKeyValue(Base):
    """A key-value attached to a transaction."""

    __tablename__ = "transaction_key_values"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("transactions.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)

    transaction: Mapped[Transaction] = relationship(back_populates="key_values")


class File(Base):
    """A blob at a path inside a transaction."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("transactions.id", ondelete="CASCADE"), index=True
    )
    subdir: Mapped[str] = mapped_column(Text, default="")
    name: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # zip needs each member's CRC-32 before the first byte of a streamed bundle goes out.
    crc32: Mapped[int | None] = mapped_column(BigInteger, default=None)
    mimetype: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    mtime: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ctime: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    hashtype: Mapped[str | None] = mapped_column(String(32), default=None)
    hashsum: Mapped[str | None] = mapped_column(String(256), default=None)
    source: Mapped[str | None] = mapped_column(Text, default=None)


class Project(Base):
    """A project that transactions belong to."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Instrument(Base):
    """An instrument that produces data for projects."""

    __tablename__ = "instruments"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ProjectInstrument(Base):
    """An instrument allowed to deliver data to a project."""

    __tablename__ = "project_instruments"

    project_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    instrument_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("instruments.id", ondelete="CASCADE"), primary_key=True
    )


class User(Base):
    """A person or service account known to policy and auth."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ProjectMember(Base):
    """A user who may submit data to a project."""

    __tablename__ = "project_members"

    project_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class ApiToken(Base):
    """An API token, stored only as its sha256."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # A token limited to some routes (a consumer run's: publish and read), or None.
    scope: Mapped[str | None] = mapped_column(String(32), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The consumer run (its job) a consumer-run token was issued to: what it ingests records
    # that run's provenance, whatever the bundle says.
    run_job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)


class OutboxEvent(Base):
    """A CloudEvent written in the same database transaction as the change it reports."""

    __tablename__ = "outbox_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(255), index=True)
    source: Mapped[str] = mapped_column(String(1024))
    subject: Mapped[str | None] = mapped_column(String(1024), default=None)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    data: Mapped[Any] = mapped_column(JSON)
    # When the dispatcher matched it against the subscriptions (its deliveries exist).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None, index=True)
    # Who may read it: its owner, members of its project, and admins.
    owner: Mapped[str | None] = mapped_column(String(255), default=None)
    project: Mapped[str | None] = mapped_column(String(255), default=None)
    # CloudEvents extension attributes a producer sent with it (``/receive``).
    extensions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Cart(Timestamped, Base):
    """A requested bundle of archived files; identical requests share one cart."""

    __tablename__ = "carts"
    __table_args__ = (UniqueConstraint("request_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # Written by whichever identical request inserts the row, so that one knows it did.
    creator_token: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(8))
    mode: Mapped[str] = mapped_column(String(8), default="stream")
    compression: Mapped[str] = mapped_column(String(8), default="stored")
    # Pacifica cartd tars carry no manifest member; native bundles lead with one.
    manifest: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    item_errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Asked-for files the archive does not hold; the manifest lists them with the reason.
    missing: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    etag: Mapped[str | None] = mapped_column(String(128), default=None)
    job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Where a built bundle lives in the bundle store, once it is complete.
    bundle_key: Mapped[str | None] = mapped_column(Text, default=None)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None, index=True)


class CartItem(Base):
    """One file of a cart, at its path inside the bundle, in bundle order."""

    __tablename__ = "cart_items"
    __table_args__ = (Index("ix_cart_items_cart_id_position", "cart_id", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cart_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("carts.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    # A Conveyor file, or (remote_key) a file of a remote Pacifica archive interface.
    file_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    remote_key: Mapped[str | None] = mapped_column(String(64), default=None)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    crc32: Mapped[int | None] = mapped_column(BigInteger, default=None)
    mtime: Mapped[float] = mapped_column(Float, default=0.0)
    # A hash the requester expects (Pacifica carts name one per file), checked before ready.
    check_type: Mapped[str | None] = mapped_column(String(32), default=None)
    check_sum: Mapped[str | None] = mapped_column(String(256), default=None)


class CartRequester(Base):
    """Someone who asked for a cart (every one of them is told when it is ready)."""

    __tablename__ = "cart_requesters"

    cart_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("carts.id", ondelete="CASCADE"), primary_key=True
    )
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How this requester is told the outcome: "webhook" (a CloudEvent to notify_url) or
    # "motrpac" (a UserNotificationMessage to the configured notifier); none when null.
    notify_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    notify_url: Mapped[str | None] = mapped_column(Text, default=None)
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    external_id: Mapped[str | None] = mapped_column(String(255), default=None)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # While a notify job sends to this requester, no other job does.
    notify_claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class PacificaCart(Base):
    """A Pacifica cartd uid and the cart it names (the newest request for the uid wins)."""

    __tablename__ = "pacifica_carts"

    uid: Mapped[str] = mapped_column(String(255), primary_key=True)
    cart_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("carts.id", ondelete="CASCADE"), index=True
    )
    user: Mapped[str] = mapped_column(String(255))
    # In the published "bundle" mode members sit under the uid, else under the filename.
    bundle: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ArchiveName(Base):
    """A Pacifica archive id that is not a number, and the file it names."""

    __tablename__ = "archive_names"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    file_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("files.id", ondelete="CASCADE"), unique=True
    )


class CacheEntry(Base):
    """A remote file staged into the shared input cache (a content-addressed store)."""

    __tablename__ = "cart_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    remote_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="filling")
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    crc32: Mapped[int | None] = mapped_column(BigInteger, default=None)
    mtime: Mapped[float | None] = mapped_column(Float, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Mirror(Timestamped, Base):
    """A remote bank kept in the archive; each published run of it is a transaction."""

    __tablename__ = "mirrors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    # The validated definition; passwords inside are sealed (conveyor.secrets).
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    # "native" or "biomaj": the form it was given in.
    origin: Mapped[str] = mapped_column(String(16), default="native")
    last_release: Mapped[str | None] = mapped_column(String(255), default=None)
    last_transaction_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("transactions.id", ondelete="SET NULL"), default=None
    )
    # A cron expression (UTC), and when it next fires.
    schedule: Mapped[str | None] = mapped_column(String(100), default=None)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None, index=True)


class MirrorRun(Timestamped, Base):
    """One run of a mirror: its listing, release, transfers and outcome."""

    __tablename__ = "mirror_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mirror_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mirrors.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    release: Mapped[str | None] = mapped_column(String(255), default=None)
    # A digest of the sorted (path, size, fingerprint) list, for release.control.
    listing_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    listed: Mapped[bool] = mapped_column(Boolean, default=False)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_reused: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    transaction_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("transactions.id", ondelete="SET NULL"), default=None
    )
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class MirrorRunFile(Base):
    """A file a run selected, and what became of it."""

    __tablename__ = "mirror_run_files"
    __table_args__ = (Index("ix_mirror_run_files_run_id_state", "run_id", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mirror_runs.id", ondelete="CASCADE")
    )
    # Which source: 0 the mirrored folder, N the (N-1)th direct file.
    source_index: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(Text)
    save_as: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    mtime: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    fingerprint: Mapped[str | None] = mapped_column(String(255), default=None)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    md5: Mapped[str | None] = mapped_column(String(32), default=None)
    crc32: Mapped[int | None] = mapped_column(BigInteger, default=None)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")


class Subscription(Timestamped, Base):
    """A user's filter over events and the target that gets what passes it."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(255), index=True)
    # A JSONPath query; an event matches when it selects anything.
    filter: Mapped[str] = mapped_column(Text)
    # "rfc9535" or "jsonpath2" (the dialect Pacifica subscriptions are written in).
    dialect: Mapped[str] = mapped_column(String(16))
    # The event form matched and sent: "cloudevents" (1.0) or "pacifica" (0.1).
    shape: Mapped[str] = mapped_column(String(16))
    # Where deliveries go; any password lives sealed in ``auth_sealed`` instead.
    target_url: Mapped[str] = mapped_column(Text)
    # "structured" or "binary" CloudEvents content mode.
    content_mode: Mapped[str] = mapped_column(String(16))
    # Sealed (conveyor.secrets): the Standard Webhooks signing secret, and credentials.
    secret_sealed: Mapped[str] = mapped_column(Text)
    auth_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    extensions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Only events of these types (every type when empty).
    types: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Paused by its owner: no new deliveries are made for it.
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # The consumer this subscription feeds, when it is a consumer's.
    consumer: Mapped[str | None] = mapped_column(String(100), default=None)
    # Circuit breaker: consecutive failures, and until when no delivery is tried.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    circuit_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    circuit_trips: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Delivery(Base):
    """One event to one subscription's target, with its attempts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "subscription_id"),
        Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("outbox_events.id", ondelete="CASCADE")
    )
    subscription_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    # pending, delivering, delivered or dead.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # The latest attempts: time, status, error, response excerpt, duration.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Consumer(Timestamped, Base):
    """An installed consumer.zip: its package, limits and the subscription that feeds it."""

    __tablename__ = "consumers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    # The package runs use: its sha256 (its blob in the archive; the first 12 digits are
    # the version) and its jsonpath2 filter (from jsonpath2.txt, or every new transaction).
    sha256: Mapped[str] = mapped_column(String(64))
    filter: Mapped[str] = mapped_column(Text)
    # A new version being installed; runs keep using the one above until it is ready.
    pending_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    pending_filter: Mapped[str | None] = mapped_column(Text, default=None)
    # installing (no version ready yet), ready, or failed (with ``error``). A failed
    # upgrade leaves the consumer ready on its old version, with ``error`` saying why.
    state: Mapped[str] = mapped_column(String(16), default="installing")
    error: Mapped[str] = mapped_column(Text, default="")
    # Whether its outputs (or a chain through other consumers) may trigger it again.
    allow_self: Mapped[bool] = mapped_column(Boolean, default=False)
    max_depth: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[float] = mapped_column(Float)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    subscription_id: Mapped[str | None] = mapped_column(String(36), default=None)
    setup_job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ConsumerRun(Base):
    """One event given to one consumer: made once per pair, whatever the redeliveries."""

    __tablename__ = "consumer_runs"
    __table_args__ = (UniqueConstraint("consumer", "event_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(100), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
