"""Looking for part files left by an earlier run (once per run, before downloading)."""

from __future__ import annotations

from pathlib import Path

from conveyor.mirror.transfer import PART_SUFFIX, holds_parts


def test_a_missing_folder_holds_no_parts(tmp_path: Path) -> None:
    assert not holds_parts(tmp_path / "never-made")


def test_folders_of_finished_files_hold_no_parts(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "done.bin").write_bytes(b"x")
    (tmp_path / "a" / "part.bin").write_bytes(b"x")  # "part" in the name is not the suffix
    assert not holds_parts(tmp_path)


def test_a_part_deep_in_the_tree_is_found(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "first.bin").write_bytes(b"x")
    (deep / f"f.bin{PART_SUFFIX}").write_bytes(b"x")
    assert holds_parts(tmp_path)


def test_a_file_where_the_folder_should_be_holds_no_parts(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    assert not holds_parts(tmp_path / "plain")
