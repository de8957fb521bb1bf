"""HTTP Range (RFC 9110 §14) for single byte ranges."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Header
from starlette.responses import Response, StreamingResponse

from conveyor.errors import RangeNotSatisfiable

SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _unsatisfied(size: int) -> dict[str, str]:
    return {"Content-Range": f"bytes */{size}"}


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
            raise RangeNotSatisfiable(f"range {header!r} asks for no bytes", _unsatisfied(size))
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(
            f"range {header!r} is outside the {size}-byte content", _unsatisfied(size)
        )
    return start, end


@dataclass(frozen=True)
class Conditions:
    """The request headers that decide between 200, 206 and 304."""

    range: str | None = None
    if_range: str | None = None
    if_none_match: str | None = None


async def request_conditions(
    range_header: Annotated[str | None, Header(alias="range")] = None,
    if_range: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Conditions:
    """The download conditions of a request (a FastAPI dependency)."""
    return Conditions(range_header, if_range, if_none_match)


ConditionsDep = Annotated[Conditions, Depends(request_conditions)]


def content_disposition(filename: str) -> str:
    """An attachment header: a plain ASCII name for old clients, the exact one in UTF-8."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


def ranged_response(
    *,
    size: int,
    etag: str,
    filename: str,
    media_type: str,
    body: Callable[[int, int], Iterator[bytes]],
    conditions: Conditions,
) -> Response:
    """A download answer: exact length, strong ETag, ``Accept-Ranges`` and single ranges.

    ``body(start, end)`` yields bytes ``[start, end)``. ``If-Range`` with another ETag gets
    the whole content; ``If-None-Match`` with this one gets a 304.
    """
    quoted = f'"{etag}"'
    headers = {
        "ETag": quoted,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(filename),
    }
    if conditions.if_none_match and quoted in conditions.if_none_match:
        return Response(status_code=304, headers=headers)
    stale = conditions.if_range is not None and conditions.if_range != quoted
    span = None if stale else parse_range(conditions.range, size)
    start, end = span if span else (0, size)
    headers["Content-Length"] = str(end - start)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(
        body(start, end),
        status_code=206 if span is not None else 200,
        headers=headers,
        media_type=media_type,
    )
