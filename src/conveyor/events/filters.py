"""JSONPath filters: an event matches a subscription when the query selects anything.

Two dialects: RFC 9535 (``jsonpath-rfc9535``), and jsonpath2, the dialect of Pacifica
subscriptions and consumers (``=`` for equality, ``@["key"]``), through the ``jsonpath2``
package itself so stored Pacifica queries keep their exact meaning.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jsonpath_rfc9535
from jsonpath2.path import Path as Jsonpath2Path

Dialect = Literal["rfc9535", "jsonpath2"]
DIALECTS: tuple[Dialect, ...] = ("rfc9535", "jsonpath2")
MAX_FILTER_CHARS = 4096


class FilterError(ValueError):
    """The query does not parse in its dialect; the message says where."""


@dataclass(frozen=True)
class EventFilter:
    """A parsed query and the function that tells whether a document matches it."""

    dialect: Dialect
    text: str
    _matches: Callable[[Any], bool]

    def matches(self, document: Any) -> bool:
        """True when the query selects at least one node of ``document``."""
        try:
            return self._matches(document)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            # jsonpath2 compares values of different types by raising; that is no match.
            return False


def compile_filter(dialect: str, text: str) -> EventFilter:
    """Parse ``text`` in ``dialect``, or raise :class:`FilterError` with the parser's reason."""
    if dialect not in DIALECTS:
        raise FilterError(f"unknown JSONPath dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    stripped = text.strip()
    if not stripped:
        raise FilterError("the JSONPath filter is empty")
    if len(stripped) > MAX_FILTER_CHARS:
        raise FilterError(f"a JSONPath filter is limited to {MAX_FILTER_CHARS} characters")
    if dialect == "rfc9535":
        return EventFilter("rfc9535", stripped, _rfc9535(stripped))
    return EventFilter("jsonpath2", stripped, _jsonpath2(stripped))


def _rfc9535(text: str) -> Callable[[Any], bool]:
    try:
        query = jsonpath_rfc9535.compile(text)
    except jsonpath_rfc9535.JSONPathError as error:
        raise FilterError(f"not an RFC 9535 JSONPath query: {error}") from None

    def matches(document: Any) -> bool:
        return next(iter(query.finditer(document)), None) is not None

    return matches


def _jsonpath2(text: str) -> Callable[[Any], bool]:
    # The ANTLR parser prints syntax errors to stderr before raising; keep them for the message.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            path = Jsonpath2Path.parse_str(text)
    except Exception as error:  # the ANTLR runtime raises many kinds; each means "does not parse"
        reason = str(error).strip() or printed.getvalue().strip() or type(error).__name__
        raise FilterError(f"not a jsonpath2 query: {reason.splitlines()[0]}") from None

    def matches(document: Any) -> bool:
        return next(iter(path.match(document)), None) is not None

    return matches
