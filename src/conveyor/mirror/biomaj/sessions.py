"""The BioMAJ download service's Redis keys, exactly as its client and web API read them.

For bank ``B`` and session ``S`` under prefix ``P`` (``redis.prefix``, default ``biomaj``):
``P:B:session:S`` (1 while the session lives), ``…:progress`` (one more per finished
message, whatever its outcome), ``…:error`` (one more per failed message), ``…:error:info``
(the messages, pushed left and read oldest first) and ``…:files`` (a listing's result).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis

SUFFIXES = ("", ":error", ":progress", ":files", ":error:info")


class BadName(ValueError):
    """A bank or session name that would not make a well-formed key."""


class DownloadSessions:
    """Sessions, progress and errors of BioMAJ downloads in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "biomaj") -> None:
        self.redis = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str) -> DownloadSessions:
        """Sessions in the Redis at ``url``."""
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix)

    @staticmethod
    def check_names(bank: str, session: str) -> None:
        """Raise :class:`BadName` unless both make a well-formed key."""
        for name, value in (("bank", bank), ("session", session)):
            if not value or ":" in value or any(ord(c) < 32 for c in value):
                raise BadName(
                    f"{name} {value!r} must be non-empty, without ':' or control characters"
                )

    def key(self, bank: str, session: str, suffix: str = "") -> str:
        """The key of one of a session's values."""
        self.check_names(bank, session)
        return f"{self.prefix}:{bank}:session:{session}{suffix}"

    def create(self, bank: str) -> str:
        """A new session of ``bank``."""
        session = str(uuid.uuid4())
        self.redis.set(self.key(bank, session), 1)
        return session

    def clean(self, bank: str, session: str) -> None:
        """Forget a session and everything recorded for it."""
        self.redis.delete(*(self.key(bank, session, suffix) for suffix in SUFFIXES))

    def exists(self, bank: str, session: str) -> bool:
        """Whether the session lives (downloads for a cleaned session are skipped)."""
        return bool(self.redis.exists(self.key(bank, session)))

    def status(self, bank: str, session: str) -> tuple[int, int]:
        """(progress, errors), each -1 when nothing was recorded, as BioMAJ answers."""
        progress, errors = self.redis.mget(
            self.key(bank, session, ":progress"), self.key(bank, session, ":error")
        )
        return _count(progress), _count(errors)

    def drain_errors(self, bank: str, session: str) -> list[str]:
        """The error messages, oldest first; they are removed as they are read."""
        key = self.key(bank, session, ":error:info")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            found, _ = pipe.execute()
        return list(reversed(found))

    def listed(self, bank: str, session: str) -> bool:
        """Whether a listing finished (BioMAJ's list status)."""
        return bool(self.redis.exists(self.key(bank, session, ":progress")))

    def listing(self, bank: str, session: str) -> str | None:
        """A listing's stored result."""
        value: Any = self.redis.get(self.key(bank, session, ":files"))
        return None if value is None else str(value)

    def record(self, bank: str, session: str, errors: list[str]) -> bool:
        """Record one finished message: its errors, then its progress, in one transaction.

        False (nothing recorded) when the session was cleaned meanwhile.
        """
        if not self.exists(bank, session):
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            if errors:
                pipe.incr(self.key(bank, session, ":error"))
                pipe.lpush(self.key(bank, session, ":error:info"), *errors)
            pipe.incr(self.key(bank, session, ":progress"))
            pipe.execute()
        return True


def _count(value: Any) -> int:
    return -1 if value is None else int(value)
