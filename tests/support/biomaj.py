"""Redis and RabbitMQ scaffolding for the BioMAJ download service tests.

Every test gets its own Redis key prefix (deleted afterwards) and, for the published client
that hard-codes its queue name, its own RabbitMQ virtual host when ``rabbitmqctl`` can make
one.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.support.services import require_tcp

REDIS_URL = "redis://127.0.0.1:6379/0"


def drop_keys(prefix: str) -> int:
    """Delete every key under ``prefix:`` (SCAN, never KEYS); how many went."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh ``biomaj-test-<hex>`` key prefix on the machine's Redis; its keys go after."""
    require_tcp("Redis", "127.0.0.1", 6379)
    prefix = f"biomaj-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        drop_keys(prefix)


def _rabbitmqctl(*args: str) -> bool:
    command = shutil.which("rabbitmqctl")
    if command is None:
        return False
    try:
        done = subprocess.run(
            [command, *args], capture_output=True, timeout=60, check=False, text=True
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextmanager
def rabbitmq_vhost() -> Iterator[str | None]:
    """A fresh virtual host that ``guest`` may use, deleted after; None when none can be made.

    Making one needs ``rabbitmqctl`` on the broker's machine (and the rights to run it):
    without it the caller falls back to the default vhost ``/``.
    """
    require_tcp("RabbitMQ", "127.0.0.1", 5672)
    name = f"conveyor-test-biomaj-{uuid.uuid4().hex[:12]}"
    if not _rabbitmqctl("add_vhost", name):
        yield None
        return
    try:
        if not _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*"):
            yield None
            return
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)
