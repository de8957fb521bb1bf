"""JSONPath filters: an event matches a subscription when the query selects anything.

Two dialects: RFC 9535 (``jsonpath-rfc9535``), and jsonpath2, the dialect of Pacifica
subscriptions and consumers (``=`` for equality, ``@["key"]``), through the ``jsonpath2``
package itself so stored Pacifica queries keep their exact meaning.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import jsonpath_rfc9535
from jsonpath2.expressions.operator import EqualBinaryOperatorExpression
from jsonpath2.node import Node
from jsonpath2.nodes.current import CurrentNode
from jsonpath2.nodes.subscript import SubscriptNode
from jsonpath2.nodes.terminal import TerminalNode
from jsonpath2.path import Path as Jsonpath2Path
from jsonpath2.subscripts.filter import FilterSubscript
from jsonpath_rfc9535.filter_expressions import (
    ComparisonExpression,
    FilterContext,
    FilterExpression,
    FilterExpressionLiteral,
    LogicalExpression,
    PrefixExpression,
    RelativeFilterQuery,
    RootFilterQuery,
)
from jsonpath_rfc9535.segments import JSONPathChildSegment
from jsonpath_rfc9535.selectors import FilterSelector

Dialect = Literal["rfc9535", "jsonpath2"]
DIALECTS: tuple[Dialect, ...] = ("rfc9535", "jsonpath2")
MAX_FILTER_CHARS = 4096


class FilterError(ValueError):
    """The query does not parse in its dialect; the message says where."""


@dataclass(frozen=True)
class EqualityTest:
    """A filter that only asks whether a query's value equals a literal.

    RFC 9535 ``$[?<singular $ query> == <literal>]`` and jsonpath2 ``$[?(@<path> = <literal>)]``.
    Many such filters on the same query are decided together: the query is read once per
    event and its values looked up among the literals. ``query_key`` names the dialect and
    the query; keys compare as the dialect's equality does.
    """

    query_key: str
    values: Callable[[Any], list[Hashable]]
    literal: Hashable

    def keys(self, document: Any) -> list[Hashable]:
        """The keys of the query's values in ``document`` (none when it selects nothing)."""
        return self.values(document)


@dataclass(frozen=True)
class ComparisonTest:
    """A filter made only of comparisons of one singular ``$`` query with literals.

    Like ``$[?$.data.size > 10 && $.data.size <= 100]``: comparisons (``== != < <= > >=``)
    joined by ``&&``, ``||`` and ``!``. Many such filters on the same query are decided
    together: the query is read once per event and each filter's test is a few native
    comparisons of its value, not a walk of the parsed expression.
    """

    query_key: str
    read: Callable[[Any], Any]
    holds: Callable[[Any], bool]

    def values(self, document: Any) -> list[Any]:
        """The query's value in ``document`` (:data:`ABSENT` when it selects nothing), or no
        value when ``document`` has no member for ``$[?...]`` to select."""
        if not isinstance(document, dict | list) or not document:
            return []
        return [self.read(document)]


class _Absent:
    """What a singular query that selects nothing compares as (RFC 9535 "Nothing")."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


def comparable(value: Any) -> Hashable | None:
    """A key equal for exactly the JSON values RFC 9535 ``==`` calls equal (1 == 1.0, but
    true is not 1); None for objects and arrays, which no literal equals."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None


@dataclass(frozen=True)
class EventFilter:
    """A parsed query and the function that tells whether a document matches it."""

    dialect: Dialect
    text: str
    _matches: Callable[[Any], bool]
    equality: EqualityTest | None = None
    comparison: ComparisonTest | None = None

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
        return _rfc9535(stripped)
    return _jsonpath2(stripped)


def _rfc9535(text: str) -> EventFilter:
    try:
        query = jsonpath_rfc9535.compile(text)
    except jsonpath_rfc9535.JSONPathError as error:
        raise FilterError(f"not an RFC 9535 JSONPath query: {error}") from None
    comparison = _comparison(query)
    if comparison is not None:
        test = comparison

        def compared(document: Any) -> bool:
            return any(test.holds(value) for value in test.values(document))

        return EventFilter("rfc9535", text, compared, _equality(query), comparison)
    return EventFilter("rfc9535", text, _rfc9535_matcher(query), _equality(query))


def _rfc9535_matcher(query: jsonpath_rfc9535.JSONPathQuery) -> Callable[[Any], bool]:
    predicate = _root_predicate(query)
    if predicate is not None:
        # `$[?<test of $ only>]` selects every member of the event when the test holds:
        # one evaluation answers, instead of one per member (an eighth of the work), and
        # each `$` query in it is answered once per event for every filter that asks it.
        _share_root_queries(predicate)
        environment = query.env

        def holds(document: Any) -> bool:
            if not isinstance(document, dict | list) or not document:
                return False
            if _shared.document is not document:
                _shared.document, _shared.results = document, {}
            context = FilterContext(env=environment, current=document, root=document)
            return bool(predicate.evaluate(context))

        return holds

    def matches(document: Any) -> bool:
        return next(iter(query.finditer(document)), None) is not None

    return matches


def _equality(query: jsonpath_rfc9535.JSONPathQuery) -> EqualityTest | None:
    """The equality test ``query`` is, when it is one (see :class:`EqualityTest`)."""
    predicate = _root_predicate(query)
    comparison = predicate.expression if predicate is not None else None
    if not isinstance(comparison, ComparisonExpression) or comparison.operator != "==":
        return None
    for side, other in ((comparison.left, comparison.right), (comparison.right, comparison.left)):
        if (
            isinstance(side, RootFilterQuery)
            and side.query.singular_query()
            and isinstance(other, FilterExpressionLiteral)
        ):
            literal = comparable(other.value)
            if literal is not None:
                query = side.query

                def values(document: Any, query: Any = query) -> list[Hashable]:
                    nodes = query.find(document)
                    key = comparable(nodes[0].value) if len(nodes) == 1 else None
                    return [key] if key is not None else []

                return EqualityTest(f"rfc9535 {query}", values, literal)
    return None


def _comparison(query: jsonpath_rfc9535.JSONPathQuery) -> ComparisonTest | None:
    """The comparison test ``query`` is, when it is one (see :class:`ComparisonTest`)."""
    predicate = _root_predicate(query)
    if predicate is None:
        return None
    queries: dict[str, jsonpath_rfc9535.JSONPathQuery] = {}
    holds = _value_test(predicate.expression, queries)
    if holds is None or len(queries) != 1:
        return None
    ((key, singular),) = queries.items()

    def read(document: Any) -> Any:
        nodes = singular.find(document)
        return nodes[0].value if len(nodes) == 1 else ABSENT

    return ComparisonTest(f"rfc9535 {key}", read, holds)


def _value_test(
    expression: Any, queries: dict[str, jsonpath_rfc9535.JSONPathQuery]
) -> Callable[[Any], bool] | None:
    """``expression`` as a test of one query's value, adding the query to ``queries``; None
    when it is anything but comparisons of singular ``$`` queries with literals."""
    if isinstance(expression, LogicalExpression) and expression.operator in ("&&", "||"):
        left = _value_test(expression.left, queries)
        right = _value_test(expression.right, queries)
        if left is None or right is None:
            return None
        if expression.operator == "&&":
            return lambda value: left(value) and right(value)
        return lambda value: left(value) or right(value)
    if isinstance(expression, PrefixExpression) and expression.operator == "!":
        inner = _value_test(expression.right, queries)
        return None if inner is None else lambda value: not inner(value)
    if not isinstance(expression, ComparisonExpression):
        return None
    operator = expression.operator
    side, literal = expression.left, expression.right
    if isinstance(side, FilterExpressionLiteral):
        side, literal, operator = literal, side, _MIRRORED.get(operator, operator)
    if (
        not isinstance(side, RootFilterQuery)
        or not side.query.singular_query()
        or not isinstance(literal, FilterExpressionLiteral)
        or operator not in _COMPARISONS
    ):
        return None
    queries[str(side.query)] = side.query
    compare, fixed = _COMPARISONS[operator], literal.value
    return lambda value: compare(value, fixed)


def _equal(left: Any, right: Any) -> bool:
    """RFC 9535 ``==`` of two values read from JSON (or ABSENT): true is not 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    return bool(left == right)


def _less(left: Any, right: Any) -> bool:
    """RFC 9535 ``<``: only two strings or two numbers are ordered."""
    if isinstance(left, str) and isinstance(right, str):
        return left < right
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    return isinstance(left, int | float) and isinstance(right, int | float) and left < right


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda value, literal: not _equal(value, literal),
    "<": _less,
    ">": lambda value, literal: _less(literal, value),
    "<=": lambda value, literal: _less(value, literal) or _equal(value, literal),
    ">=": lambda value, literal: _less(literal, value) or _equal(value, literal),
}
# ``literal OP query`` is ``query MIRRORED[OP] literal``.
_MIRRORED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _root_predicate(query: jsonpath_rfc9535.JSONPathQuery) -> FilterExpression | None:
    """The filter of a query ``$[?expr]`` whose ``expr`` reads only ``$``; else None."""
    if len(query.segments) != 1:
        return None
    segment = query.segments[0]
    if not isinstance(segment, JSONPathChildSegment) or len(segment.selectors) != 1:
        return None
    selector = segment.selectors[0]
    if not isinstance(selector, FilterSelector):
        return None
    if _reads_current_node(selector.expression):
        return None
    return selector.expression


class _SharedRootQuery(RootFilterQuery):
    """A ``$`` query whose result, per event, is shared by every filter that asks it."""

    __slots__ = ("key",)

    def __init__(self, original: RootFilterQuery) -> None:
        super().__init__(original.token, original.query)
        self.key = str(original.query)

    def evaluate(self, context: FilterContext) -> object:
        """The query's nodes in this event, computed once."""
        results: dict[str, object] = _shared.results
        found = results.get(self.key)
        if found is None:
            found = results[self.key] = super().evaluate(context)
        return found


class _SharedResults(threading.local):
    """The event being matched in this thread, and the ``$`` query results found in it."""

    document: Any = None
    results: dict[str, object] = {}


_shared = _SharedResults()


def _share_root_queries(expression: Any) -> None:
    """Swap each ``$`` query of a filter expression for one that shares its results."""
    for name in ("expression", "left", "right"):
        child = getattr(expression, name, None)
        if isinstance(child, RootFilterQuery):
            setattr(expression, name, _SharedRootQuery(child))
        elif child is not None:
            _share_root_queries(child)
    arguments = getattr(expression, "args", None)
    if arguments:
        swapped = [
            _SharedRootQuery(arg) if isinstance(arg, RootFilterQuery) else arg for arg in arguments
        ]
        for arg in swapped:
            _share_root_queries(arg)
        expression.args = swapped


def _reads_current_node(expression: Any) -> bool:
    """True when the filter expression holds an ``@`` query (outside nested queries)."""
    if isinstance(expression, RelativeFilterQuery):
        return True
    children = [getattr(expression, name, None) for name in ("expression", "left", "right")]
    children.extend(getattr(expression, "args", None) or [])
    return any(child is not None and _reads_current_node(child) for child in children)


def _jsonpath2(text: str) -> EventFilter:
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

    return EventFilter("jsonpath2", text, matches, _jsonpath2_equality(path))


def _jsonpath2_equality(path: Jsonpath2Path) -> EqualityTest | None:
    """The equality test a jsonpath2 query is, when it is ``$[?(@<path> = <literal>)]``.

    jsonpath2 applies the filter to the document itself and compares with Python's ``==``
    against every value the ``@`` path selects, so the literal is looked up among them.
    """
    subscript_node = getattr(path.root_node, "next_node", None)
    if not isinstance(subscript_node, SubscriptNode) or len(subscript_node.subscripts) != 1:
        return None
    if not isinstance(subscript_node.next_node, TerminalNode):
        return None
    selector = subscript_node.subscripts[0]
    if not isinstance(selector, FilterSubscript):
        return None
    comparison = selector.expression
    if not isinstance(comparison, EqualBinaryOperatorExpression):
        return None
    left, right = comparison.left_node_or_value, comparison.right_node_or_value
    node, literal = (left, right) if isinstance(left, CurrentNode) else (right, left)
    if not isinstance(node, CurrentNode) or isinstance(literal, Node):
        return None
    if not isinstance(literal, str | int | float | bool) and literal is not None:
        return None
    relative = node

    def values(document: Any) -> list[Hashable]:
        found = (match.current_value for match in relative.match(document, document))
        return [value for value in found if isinstance(value, Hashable)]

    return EqualityTest(f"jsonpath2 {''.join(node.__jsonpath__())}", values, literal)
