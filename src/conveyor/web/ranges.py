"""HTTP Range (RFC 9110 §14) for single byte ranges."""

from __future__ import annotations

import re

from conveyor.errors import RangeNotSatisfiable

SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open ``[start, end)`` asked for, or ``None`` to send everything.

    Several ranges, or a header we do not understand, get the whole content (RFC 9110
    lets a server ignore Range); a range outside the content is a 416.
    """
    if not header:
        return None
    match = SINGLE_RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(f"range {header!r} asks for no bytes")
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"range {header!r} is outside the {size}-byte content")
    return start, end
