"""BioMAJ ``remote.files`` selection and release detection, over a real local folder."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.mirror.definition import ReleaseRule
from conveyor.mirror.errors import DefinitionError, SourceError
from conveyor.mirror.matching import select_files
from conveyor.mirror.release import release_from_dates, release_from_source
from conveyor.mirror.sources import open_source
from conveyor.mirror.sources.base import Source
from conveyor.mirror.spec import SourceSpec


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _source(root: Path) -> Source:
    return open_source(SourceSpec(protocol="local", remote_dir=str(root)))


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    _tree(
        tmp_path,
        {
            "test.fasta.gz": "a",
            "test2.fasta": "b",
            "test_100.txt": "c",
            "README": "r",
            "dists/README": "d",
            "dists/stable/Release": "s",
            "dists/testing/Release": "t",
            "other/test.fasta.gz": "o",
        },
    )
    return tmp_path


def _saved(source: Source, patterns: list[str]) -> list[str]:
    return sorted(selected.save_as for selected in select_files(source, patterns))


def test_a_pattern_is_anchored_at_the_start_only(bank: Path) -> None:
    assert _saved(_source(bank), [r"^test.*\.gz$"]) == ["test.fasta.gz"]
    assert _saved(_source(bank), [r"test"]) == ["test.fasta.gz", "test2.fasta", "test_100.txt"]
    with pytest.raises(SourceError):
        _saved(_source(bank), [r"fasta"])


def test_subfolder_patterns_walk_matching_folders_only(bank: Path) -> None:
    assert _saved(_source(bank), [r"^dists/README$"]) == ["dists/README"]
    assert _saved(_source(bank), [r"^/dists/.*/Release$"]) == [
        "dists/stable/Release",
        "dists/testing/Release",
    ]
    # "dist" must not select "dists" as a whole name would: re.match anchors at the start.
    assert _saved(_source(bank), [r"^other$/.*"]) == ["other/test.fasta.gz"]


def test_everything_below(bank: Path) -> None:
    assert len(_saved(_source(bank), ["**/*"])) == 8
    assert _saved(_source(bank), ["dists/**/*"]) == [
        "dists/README",
        "dists/stable/Release",
        "dists/testing/Release",
    ]


def test_capture_groups_rename_the_saved_file(bank: Path) -> None:
    assert _saved(_source(bank), [r"^(dists)/stable/(Release)$"]) == ["dists/Release"]
    assert _saved(_source(bank), [r"^(test)\.fasta\.gz$"]) == ["test"]


def test_a_file_two_patterns_select_is_taken_once(bank: Path) -> None:
    assert _saved(_source(bank), [r"^test.*\.gz$", r"^test\.fasta"]) == ["test.fasta.gz"]


def test_nothing_matching_is_an_error(bank: Path) -> None:
    with pytest.raises(SourceError, match="no file found matching") as raised:
        list(select_files(_source(bank), [r"^nothing$"]))
    assert raised.value.permanent


def test_a_bad_regexp_is_a_definition_error(bank: Path) -> None:
    with pytest.raises(DefinitionError, match="not a regexp"):
        list(select_files(_source(bank), [r"^(unclosed$"]))


def test_a_capture_group_cannot_climb_out(bank: Path) -> None:
    _tree(bank, {"..hidden": "x"})
    with pytest.raises(SourceError, match=r"\.\."):
        list(select_files(_source(bank), [r"^(\.\.)hidden$"]))


def test_a_listing_that_names_a_path_is_refused(tmp_path: Path) -> None:
    class Lying(Source):
        protocols = ()

        def list(self, folder: str = ""):  # type: ignore[no-untyped-def]
            from conveyor.mirror.entries import RemoteEntry

            yield RemoteEntry("../../etc/passwd", size=1)

        def read(self, path: str, offset: int = 0):  # type: ignore[no-untyped-def]
            yield b""

        def stat(self, path: str):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    lying = Lying(SourceSpec(protocol="local", remote_dir=str(tmp_path)))
    with pytest.raises(SourceError, match="not a plain name"):
        list(select_files(lying, [".*"]))


def test_release_from_the_newest_date() -> None:
    dates = [
        datetime(2013, 11, 12, tzinfo=UTC),
        datetime(2013, 2, 3, tzinfo=UTC),
        None,
        datetime(2012, 12, 30, tzinfo=UTC),
    ]
    assert release_from_dates(dates, None) == "2013-11-12"
    assert release_from_dates([datetime(2024, 1, 5, tzinfo=UTC)], None) == "2024-1-5"
    assert release_from_dates([datetime(2024, 1, 5, tzinfo=UTC)], "%Y%m%d") == "20240105"
    assert release_from_dates([None], None) is None


def test_release_from_a_file_name(tmp_path: Path) -> None:
    _tree(tmp_path, {"release_41.txt": "", "release_42.txt": "", "data.gz": ""})
    os.utime(tmp_path / "release_41.txt", (1_700_000_000, 1_700_000_000))
    os.utime(tmp_path / "release_42.txt", (1_600_000_000, 1_600_000_000))
    rule = ReleaseRule(file=r"release_(\d+)\.txt")
    # The most recent file that matches names the release, not the highest number.
    assert release_from_source(rule, _source(tmp_path)) == "41"


def test_release_from_a_file_content(tmp_path: Path) -> None:
    _tree(tmp_path, {"RELEASE": "Release 2.10 (old: 2.9, 2.10rc1)\n", "data.gz": ""})
    rule = ReleaseRule(file="^RELEASE$", regexp=r"(\d+\.\d+(?:rc\d+)?)")
    assert release_from_source(rule, _source(tmp_path)) == "2.10"


def test_release_file_must_be_unique_to_be_read(tmp_path: Path) -> None:
    _tree(tmp_path, {"RELEASE.a": "1", "RELEASE.b": "2"})
    rule = ReleaseRule(file="^RELEASE", regexp=r"(\d)")
    with pytest.raises(SourceError, match="exactly one file"):
        release_from_source(rule, _source(tmp_path))


def test_release_file_needs_a_group_without_a_regexp(tmp_path: Path) -> None:
    _tree(tmp_path, {"RELEASE": "1"})
    with pytest.raises(SourceError, match="capture group"):
        release_from_source(ReleaseRule(file="^RELEASE$"), _source(tmp_path))
