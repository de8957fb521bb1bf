"""Waiting for something a background worker will do, with a deadline and a clear failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None], what: str, seconds: float = 90.0, every: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming what was last seen."""
    deadline = time.monotonic() + seconds
    while True:
        seen = probe()
        if seen:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen in {seconds:g} s (last: {seen!r})")
        time.sleep(every)
