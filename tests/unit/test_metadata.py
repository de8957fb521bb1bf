"""metadata.txt parsing and bundle path rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from conveyor.ingest.metadata import MetadataError, check_mimetypes, parse_metadata, parse_time
from conveyor.ingest.paths import UnsafePath, clip, file_key, member_key
from tests.support.bundles import good_metadata, variant


def test_published_good_metadata() -> None:
    parsed = parse_metadata(json.dumps(good_metadata()))
    assert (parsed.submitter, parsed.project, parsed.instrument) == ("10", "1234a", "54")
    assert parsed.key_values == [("Temp C", "27"), ("Tag", "foo")]
    assert [entry.key for entry in parsed.files] == [
        "a/b/foo.txt",
        "a/b/bar.txt",
        "a/c/パソコン資産管理台帳（S&T HK）_現地調達PC.xls",  # noqa: RUF001
    ]
    assert parsed.files[0].mtime == datetime(2016, 11, 29, 22, 9, 5, tzinfo=UTC)
    assert check_mimetypes(parsed) == []


def test_uploader_ui_keys_and_unknown_tables_pass() -> None:
    entries = [
        {"destinationTable": "Transactions.proposal", "value": "p1", "displayType": "select"},
        {"destinationTable": "NothingReally", "value": "x", "metaID": "abc"},
    ]
    assert parse_metadata(json.dumps(entries)).project == "p1"


def test_hash_prefix_and_any_hashlib_type() -> None:
    entry = {"destinationTable": "Files", "name": "x", "subdir": "", "size": 1}
    parsed = parse_metadata(json.dumps([{**entry, "hashtype": "sha1", "hashsum": "sha1:ABCD"}]))
    assert (parsed.files[0].hashtype, parsed.files[0].hashsum) == ("sha1", "abcd")
    parsed = parse_metadata(json.dumps([{**entry, "hashtype": "sha3_256", "hashsum": "00"}]))
    assert parsed.files[0].hashtype == "sha3_256"
    with pytest.raises(MetadataError, match="not a hashlib algorithm"):
        parse_metadata(json.dumps([{**entry, "hashtype": "crc32", "hashsum": "00"}]))


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "JSON list"),
        ("[1]", "not a JSON object"),
        ('[{"destinationTable": "Files", "subdir": "a"}]', "'name' is missing"),
        ('[{"destinationTable": "Files", "name": "x", "size": -1}]', "negative"),
        ('[{"destinationTable": "Files", "name": "x", "size": "big"}]', "whole number"),
        ('[{"destinationTable": "Files", "name": "../x", "size": 1}]', "not a plain name"),
        ('[{"destinationTable": "Files", "name": "x", "subdir": "data/../..", "size": 1}]', "'..'"),
        (
            '[{"destinationTable": "Files", "name": "x", "subdir": "data/a", "size": 1},'
            ' {"destinationTable": "Files", "name": "x", "subdir": "a/", "size": 1}]',
            "listed twice",
        ),
    ],
)
def test_bad_metadata_is_refused_with_a_reason(document: str, words: str) -> None:
    with pytest.raises(MetadataError, match=words):
        parse_metadata(document)


def test_bad_mimetype_is_reported_per_file() -> None:
    errors = check_mimetypes(parse_metadata(json.dumps(variant("bad-mimetype"))))
    assert errors == [
        {"item": "a/b/foo.txt", "error": "mimetype 'lame-mime-type' is not type/subtype"}
    ]


def test_subdir_variants_clip_alike() -> None:
    assert clip("data/a/b/") == clip("data//a/b") == clip("a/b") == ["a", "b"]
    assert file_key("data/a/c", "x.txt") == "a/c/x.txt"
    assert member_key("data/a/b/foo.txt") == "a/b/foo.txt"
    assert member_key("./data//abs/path") == "abs/path"
    for bad in ("/etc/passwd", "other/x", "data/../x"):
        with pytest.raises(UnsafePath):
            member_key(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-01-01T00:00:00", datetime(2019, 1, 1, tzinfo=UTC)),
        ("2019-01-01T02:00:00+02:00", datetime(2019, 1, 1, tzinfo=UTC)),
        ("Tue Nov 29 14:09:05 PST 2016", datetime(2016, 11, 29, 22, 9, 5, tzinfo=UTC)),
        ("Tue Nov 29 14:09:05 2016", datetime(2016, 11, 29, 14, 9, 5, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("sometime", None),
        ("", None),
    ],
)
def test_time_formats(text: str | int, expected: datetime | None) -> None:
    assert parse_time(text) == expected
