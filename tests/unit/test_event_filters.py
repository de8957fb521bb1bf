"""JSONPath filters: both dialects, and the fast paths agree with the plain evaluation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import jsonpath_rfc9535
import pytest
from jsonpath2.path import Path as Jsonpath2Path

from conveyor.db.models import OutboxEvent, Subscription
from conveyor.events.filters import EventFilter, FilterError, comparable, compile_filter
from conveyor.events.matching import matchers
from conveyor.events.shapes import cloudevent, pacifica_event
from conveyor.events.visibility import Readers

SEED_FILTER = (
    '$[?(@["eventID"] and (@["eventType"] = "org.pacifica.metadata.ingest") and '
    '(@["source"] = "/pacifica/metadata/ingest"))]["data"][*][?((@["destinationTable"] = '
    '"Files") and (@["mimetype"] = "text/plain"))]["_id"]'
)
PACIFICA_EVENT = {
    "cloudEventsVersion": "0.1",
    "eventID": "C234-1234-1234",
    "eventType": "org.pacifica.metadata.ingest",
    "source": "/pacifica/metadata/ingest",
    "data": [
        {"destinationTable": "Transactions._id", "value": 67},
        {"destinationTable": "TransactionKeyValue", "key": "Taggy", "value": "Blah"},
        {"destinationTable": "Files", "_id": 34, "mimetype": "text/plain"},
    ],
}
DOCUMENTS: list[Any] = [
    {"type": "t", "data": {"group": 3, "flag": True, "name": "x", "tags": ["a", "b"]}},
    {"type": "t", "data": {"group": 3.0, "flag": False, "name": "y"}},
    {"type": "u", "data": {"group": "3", "flag": 1, "name": None}},
    {"type": "u", "data": {"group": True}},
    {"type": "t", "data": [1, 2, 3]},
    {"type": "t"},
    {},
    [],
    [{"group": 3}],
]
QUERIES = [
    "$",
    "$[?$.data.group == 3]",
    "$[?3 == $.data.group]",
    "$[?$.data.group == '3']",
    "$[?$.data.group == true]",
    "$[?$.data.flag == true]",
    "$[?$.data.name == null]",
    "$[?$.type == 't' && $.data.group > 2]",
    "$[?$.data.group != 3]",
    "$[?!$.data]",
    "$[?length($.data.tags) == 2]",
    "$[?count($.data.*) >= 3]",
    "$[?@.group == 3]",
    "$.data[?@ == 3]",
    "$..group",
    "$.data.tags[?@ == 'b']",
]


@pytest.mark.parametrize("query", QUERIES)
def test_rfc9535_filters_match_exactly_when_the_query_selects_something(query: str) -> None:
    _assert_matches_like_the_package(compile_filter("rfc9535", query), DOCUMENTS)


def _assert_matches_like_the_package(compiled: EventFilter, documents: list[Any]) -> None:
    for doc in documents:
        expected = bool(jsonpath_rfc9535.find(compiled.text, doc))
        assert compiled.matches(doc) is expected, (compiled.text, doc)


def test_the_root_predicates_share_query_results_without_mixing_events() -> None:
    filters = [compile_filter("rfc9535", f"$[?$.data.group == {n}]") for n in range(5)]
    for doc in itertools.chain(DOCUMENTS, DOCUMENTS):
        for n, compiled in enumerate(filters):
            assert compiled.matches(doc) is bool(
                jsonpath_rfc9535.find(f"$[?$.data.group == {n}]", doc)
            )


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [(1, 1.0, True), (True, 1, False), ("1", 1, False), (None, None, True), (False, 0, False)],
)
def test_comparable_keys_follow_rfc9535_equality(left: Any, right: Any, equal: bool) -> None:
    assert (comparable(left) == comparable(right)) is equal


def test_the_seed_consumer_filter_runs_in_the_jsonpath2_dialect() -> None:
    compiled = compile_filter("jsonpath2", SEED_FILTER)
    assert compiled.matches(PACIFICA_EVENT)
    other = {**PACIFICA_EVENT, "source": "http://metadata.pacifica.org/transactions?_id=67"}
    assert not compiled.matches(other)
    assert compile_filter("jsonpath2", '$.data.*[?(@.value="Blah")].value').matches(PACIFICA_EVENT)
    assert not compile_filter("jsonpath2", '$[?(@["a"] = 1)]').matches([1, "x"])


@pytest.mark.parametrize(
    ("dialect", "text", "reason"),
    [
        ("rfc9535", "$[?@.a = 1]", "RFC 9535"),
        ("rfc9535", "$[?$.data.* == 3]", "non-singular"),
        ("jsonpath2", "$[?(@.a ==", "jsonpath2"),
        ("xpath", "$", "unknown JSONPath dialect"),
        ("rfc9535", "   ", "empty"),
        ("rfc9535", "$" + ".a" * 3000, "limited"),
    ],
)
def test_bad_filters_say_why(dialect: str, text: str, reason: str) -> None:
    with pytest.raises(FilterError, match=reason):
        compile_filter(dialect, text)


def _subscription(number: int, filter_text: str, **fields: Any) -> Subscription:
    values: dict[str, Any] = {
        "id": f"s{number}",
        "owner": "admin",
        "filter": filter_text,
        "dialect": "rfc9535",
        "shape": "cloudevents",
        "types": [],
        "extensions": {},
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return Subscription(**values)


def test_indexed_equality_matching_agrees_with_one_by_one_matching() -> None:
    subscriptions = [
        _subscription(0, "$[?$.data.group == 3]"),
        _subscription(1, "$[?$.data.group == '3']"),
        _subscription(2, "$[?$.data.group == true]"),
        _subscription(3, "$[?$.type == 'org.t']"),
        _subscription(4, "$[?$.type == 'org.t']", types=["org.other"]),
        _subscription(5, "$[?$.data.group == 3]", extensions={"team": "x"}),
        _subscription(6, "$[?$.data.group > 2]"),
        _subscription(7, "$[?$.data.group == 3]", shape="pacifica"),
        _subscription(8, "$[?$.data.group == 3]", owner="nobody"),
        _subscription(9, '$[?(@["data"]["group"] = 3)]', dialect="jsonpath2"),
        _subscription(10, '$[?(@["data"]["group"] = true)]', dialect="jsonpath2"),
        _subscription(11, '$[?(@["eventType"] = "org.t")]', dialect="jsonpath2", shape="pacifica"),
    ]
    matcher_set = matchers(subscriptions, {})
    assert [m.subscription_id for m in matcher_set.general] == ["s5"]  # it adds extensions
    assert [
        m.subscription_id
        for _, m in matcher_set.compared[("cloudevents", "rfc9535 $['data']['group']")][1]
    ] == ["s6"]
    datas = [{"group": 3}, {"group": 3.0}, {"group": "3"}, {"group": True}, {"group": 4}, {}]
    _assert_agrees_with_one_by_one(subscriptions, datas)


def _assert_agrees_with_one_by_one(
    subscriptions: list[Subscription], datas: list[dict[str, Any]]
) -> None:
    """The matcher set picks, for events with each of ``datas``, exactly the subscriptions
    whose filter the dialect's own package matches (types and owners' rights applied)."""
    matcher_set = matchers(subscriptions, {})
    readers = Readers(session=None, admins=frozenset({"admin"}))  # type: ignore[arg-type]
    for number, data in enumerate(datas):
        row = OutboxEvent(
            id=f"e{number}",
            type="org.t",
            source="/t",
            time=datetime(2026, 1, 1, tzinfo=UTC),
            data=data,
            owner="admin",
            project=None,
            extensions={},
        )
        expected = set()
        for subscription in subscriptions:
            if subscription.types and row.type not in subscription.types:
                continue
            if subscription.owner != "admin":
                continue
            doc = cloudevent(row) if subscription.shape == "cloudevents" else pacifica_event(row)
            doc.update(subscription.extensions)
            if subscription.dialect == "jsonpath2":
                found = next(iter(Jsonpath2Path.parse_str(subscription.filter).match(doc)), None)
            else:
                found = jsonpath_rfc9535.find(subscription.filter, doc) or None
            if found is not None:
                expected.add(subscription.id)
        assert set(matcher_set.matching(row, readers)) == expected, data


JSONPATH2_QUERIES = [
    '$[?(@["data"]["group"] = 3)]',
    '$[?(3 = @["data"]["group"])]',
    '$[?(@["data"]["group"] = "3")]',
    '$[?(@["data"]["group"] = true)]',
    '$[?(@["data"]["tags"][*] = "b")]',
    '$[?(@["type"] = "t")]["data"]',
    '$[?(@["data"]["group"] != 3)]',
]


@pytest.mark.parametrize("query", JSONPATH2_QUERIES)
def test_jsonpath2_equality_index_agrees_with_the_package(query: str) -> None:
    compiled = compile_filter("jsonpath2", query)
    plain = Jsonpath2Path.parse_str(query)
    for doc in DOCUMENTS:
        expected = next(iter(plain.match(doc)), None) is not None
        assert compiled.matches(doc) is expected, (query, doc)
        if compiled.equality is not None:
            literal = compiled.equality.literal
            assert (literal in compiled.equality.keys(doc)) is expected, (query, doc)


def test_only_plain_equalities_are_indexed_in_jsonpath2() -> None:
    indexed = [q for q in JSONPATH2_QUERIES if compile_filter("jsonpath2", q).equality]
    assert indexed == JSONPATH2_QUERIES[:5]


COMPARED_VALUES: list[Any] = [
    0,
    1,
    2,
    2.5,
    3,
    -1,
    True,
    False,
    None,
    "",
    "2",
    "b",
    "ab",
    [2],
    {"a": 2},
]
COMPARISON_QUERIES = [
    *(
        f"$[?$.data.v {op} {literal}]"
        for op in ("<", "<=", ">", ">=", "==", "!=")
        for literal in ("2", "2.5", "'b'", "true", "null")
    ),
    "$[?1 < $.data.v]",
    "$[?'a' >= $.data.v]",
    "$[?$.data.v > 0 && $.data.v < 3]",
    "$[?$.data.v >= 'a' && $.data.v <= 'b' || $.data.v == null]",
    "$[?!($.data.v > 1)]",
    "$[?!($.data.v > 1) && $.data.v != false]",
    "$[?$.data['v'] > 1]",
]


@pytest.mark.parametrize("query", COMPARISON_QUERIES)
def test_compiled_comparisons_agree_with_the_package(query: str) -> None:
    compiled = compile_filter("rfc9535", query)
    assert compiled.comparison is not None, query
    documents: list[Any] = [{"data": {"v": value}} for value in COMPARED_VALUES]
    documents += [{"data": {}}, {"data": []}, {}, [], {"other": 1}]
    _assert_matches_like_the_package(compiled, documents)


@pytest.mark.parametrize(
    "query",
    [
        "$[?$.data.v > $.data.w]",  # two queries
        "$[?$.data.v > 1 && $.type == 't']",  # two different queries
        "$[?$.data.v]",  # an existence test
        "$[?@.v > 1]",  # reads the current node
        "$[?length($.data.v) > 1]",  # a function
        "$.data[?$.data.v > 1]",  # not a test of the root
    ],
)
def test_only_plain_comparisons_of_one_query_are_compiled(query: str) -> None:
    assert compile_filter("rfc9535", query).comparison is None


def test_grouped_range_matching_agrees_with_one_by_one_matching() -> None:
    subscriptions = [
        _subscription(n, f"$[?$.data.group > {n - 1} && $.data.group < {n + 1}]") for n in range(6)
    ]
    subscriptions += [
        _subscription(6, "$[?$.data.group >= 2]", types=["org.other"]),
        _subscription(7, "$[?$.data.group >= 2]", owner="nobody"),
        _subscription(8, "$[?$.data.group >= 2]", shape="pacifica"),
        _subscription(9, "$[?$.data.group <= 2]", extensions={"team": "x"}),
    ]
    matcher_set = matchers(subscriptions, {})
    assert [m.subscription_id for m in matcher_set.general] == ["s9"]
    _assert_agrees_with_one_by_one(
        subscriptions, [{"group": g} for g in (0, 1, 2.5, 3, "3", True, None)]
    )
