"""One background asyncio loop per process, for clients that only come in async form.

asyncssh (SFTP) and nats-py have no blocking API; their connections live on this loop and
callers in ordinary threads hand it coroutines and wait for the results.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="asyncio-loop", daemon=True).start()
        return _loop


def run_on_loop(operation: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``operation`` on the shared loop and wait (up to ``timeout``) for its result."""
    return asyncio.run_coroutine_threadsafe(operation, background_loop()).result(timeout)
