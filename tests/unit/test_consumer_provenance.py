"""Consumer provenance: the lineage a transaction carries and the loops it prevents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.consumers.provenance import (
    CONSUMER,
    DERIVED_FROM,
    LINEAGE,
    RUN,
    VERSION,
    Lineage,
)


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"destinationTable": "TransactionKeyValue", "key": key, "value": value}


def test_original_data_has_an_empty_lineage() -> None:
    assert Lineage.from_key_values([]) == Lineage()
    assert Lineage.from_key_values([("Tag", "foo"), ("Temp C", "27")]).depth == 0
    assert Lineage().refusal("upper", allow_self=False, max_depth=5) is None


def test_the_lineage_key_value_lists_the_consumers_oldest_first() -> None:
    lineage = Lineage.from_key_values([("Tag", "x"), (LINEAGE, '["clean", "upper"]')])
    assert lineage.consumers == ("clean", "upper")
    assert lineage.depth == 2


@pytest.mark.parametrize(
    "value",
    ["not json", "{", '{"consumers": ["upper"]}', '"upper"', "42", "null", ""],
)
def test_a_malformed_lineage_counts_as_empty(value: str) -> None:
    lineage = Lineage.from_key_values([(LINEAGE, value)])
    assert lineage == Lineage()
    assert lineage.refusal("upper", allow_self=False, max_depth=1) is None


def test_lineage_entries_are_read_as_text() -> None:
    assert Lineage.from_key_values([(LINEAGE, "[1, null]")]).consumers == ("1", "None")


def test_the_lineage_of_a_pacifica_event_comes_from_its_key_values() -> None:
    event = {
        "eventID": "e-1",
        "data": [
            {"destinationTable": "Transactions._id", "value": 7},
            # the key alone, outside a TransactionKeyValue entry, is not a lineage
            {"destinationTable": "Transactions.project", "key": LINEAGE, "value": '["x"]'},
            kv("Tag", "foo"),
            kv(LINEAGE, json.dumps(["clean", "upper"])),
            "not an entry",
        ],
    }
    assert Lineage.of_document(event).consumers == ("clean", "upper")


@pytest.mark.parametrize("data", [None, "text", {"destinationTable": "TransactionKeyValue"}, []])
def test_an_event_without_a_data_list_has_an_empty_lineage(data: Any) -> None:
    assert Lineage.of_document({"eventID": "e-1", "data": data}) == Lineage()
    assert Lineage.of_document({}) == Lineage()


def test_a_consumer_does_not_run_on_what_it_made_unless_allowed() -> None:
    lineage = Lineage(("clean", "upper", "index"))
    refusal = lineage.refusal("upper", allow_self=False, max_depth=5)
    assert refusal is not None
    assert "'upper'" in refusal
    assert "clean → upper → index" in refusal
    assert lineage.refusal("upper", allow_self=True, max_depth=5) is None
    assert lineage.refusal("other", allow_self=False, max_depth=5) is None


def test_the_depth_limit_applies_even_when_self_is_allowed() -> None:
    lineage = Lineage(("a", "b"))
    assert lineage.refusal("c", allow_self=False, max_depth=3) is None
    refusal = lineage.refusal("c", allow_self=False, max_depth=2)
    assert refusal == "derivation depth 2 reaches the limit of 2"
    assert lineage.refusal("a", allow_self=True, max_depth=2) == refusal
    # depth comes first: a consumer at the limit is refused for depth, not for itself
    assert Lineage(("a",)).refusal("a", allow_self=False, max_depth=1) == (
        "derivation depth 1 reaches the limit of 1"
    )


def test_provenance_records_the_run_and_extends_the_lineage() -> None:
    values = Lineage(("clean",)).provenance("upper", "0123456789ab", 42, 7)
    assert values == {
        CONSUMER: "upper",
        VERSION: "0123456789ab",
        RUN: "42",
        LINEAGE: '["clean", "upper"]',
        DERIVED_FROM: "7",
    }
    # what a run publishes reads back as the longer lineage
    assert Lineage.from_key_values(values.items()).consumers == ("clean", "upper")


def test_provenance_without_an_input_transaction_names_no_origin() -> None:
    values = Lineage().provenance("upper", "v", "remote:e-1", None)
    assert DERIVED_FROM not in values
    assert values[RUN] == "remote:e-1"
    assert json.loads(values[LINEAGE]) == ["upper"]
    assert all(isinstance(value, str) for value in values.values())


def test_an_output_is_refused_to_the_consumer_that_made_it() -> None:
    made = Lineage().provenance("upper", "v", 1, 3)
    event = {"data": [kv(key, value) for key, value in made.items()]}
    assert Lineage.of_document(event).refusal("upper", False, 5) is not None
    assert Lineage.of_document(event).refusal("lower", False, 5) is None


def test_of_several_lineages_the_longest_counts_so_none_resets_the_depth() -> None:
    pairs = [(LINEAGE, '["a", "b"]'), (LINEAGE, "[]"), (LINEAGE, "not json"), (LINEAGE, '["c"]')]
    assert Lineage.from_key_values(pairs).consumers == ("a", "b")
    assert Lineage.from_key_values(reversed(pairs)).consumers == ("a", "b")


def test_a_lineage_extended_by_a_consumer_reads_back_as_written() -> None:
    extended = Lineage(("clean",)).then("upper")
    assert extended == Lineage(("clean", "upper"))
    assert extended.text() == '["clean", "upper"]'
    assert Lineage.from_key_values([(LINEAGE, extended.text())]) == extended
    assert Lineage().text() == "[]"
