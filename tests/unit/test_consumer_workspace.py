"""A consumer run's folders: the event and inputs laid out, outputs read back safely."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.consumers.environments import Environment
from conveyor.consumers.workspace import (
    ConsumerFailed,
    InputFile,
    RunLimits,
    Workspace,
    input_files,
    lay_out,
    outputs,
    publishable,
    run_entry_point,
)


def file_entry(file_id: int, subdir: str, name: str, size: int = 3) -> dict[str, Any]:
    return {
        "destinationTable": "Files",
        "_id": file_id,
        "subdir": subdir,
        "name": name,
        "size": size,
        "mimetype": "text/plain",
    }


EVENT: dict[str, Any] = {
    "eventID": "e-1",
    "eventType": "org.pacifica.metadata.ingest",
    "data": [
        {"destinationTable": "Transactions._id", "value": 7},
        {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "foo"},
        file_entry(11, "a/b", "foo.txt"),
        file_entry(12, "", "top.txt", 5),
        file_entry(13, "a/c", "bar.txt"),
    ],
}


def fetch_by_id(item: InputFile, target: Path) -> None:
    target.write_text(f"file {item.file_id}\n")


def test_input_files_are_the_events_file_entries() -> None:
    assert input_files(EVENT) == [
        InputFile(11, "a/b", "foo.txt", 3),
        InputFile(12, "", "top.txt", 5),
        InputFile(13, "a/c", "bar.txt", 3),
    ]


def test_entries_without_an_id_or_of_other_tables_are_not_inputs() -> None:
    event = {
        "data": [
            {"destinationTable": "Files", "name": "no-id.txt"},
            {"destinationTable": "Transactions._id", "_id": 3, "name": "x"},
            {"destinationTable": "Files", "_id": "4", "name": "n.txt", "subdir": None},
            "junk",
        ]
    }
    assert input_files(event) == [InputFile(4, "", "n.txt", 0)]
    assert input_files({"data": "none"}) == []
    assert input_files({}) == []


def test_lay_out_writes_the_event_the_inputs_and_an_empty_output_tree(tmp_path: Path) -> None:
    fetched: list[tuple[int, Path]] = []

    def fetch(item: InputFile, target: Path) -> None:
        fetched.append((item.file_id, target))
        fetch_by_id(item, target)

    space = lay_out(tmp_path / "run", EVENT, input_files(EVENT), fetch)
    assert space == Workspace(tmp_path / "run")
    assert space.src == tmp_path / "run" / "SRC"
    assert space.uploads == tmp_path / "run" / "DST" / "uploads"
    assert json.loads((space.src / "notification.json").read_text()) == EVENT
    downloads = space.src / "downloads"
    assert fetched == [
        (11, downloads / "a" / "b" / "foo.txt"),
        (12, downloads / "top.txt"),
        (13, downloads / "a" / "c" / "bar.txt"),
    ]
    assert (downloads / "a" / "c" / "bar.txt").read_text() == "file 13\n"
    # DST/uploads mirrors the input folders, with no files in it
    folders = sorted(p.relative_to(space.uploads).as_posix() for p in space.uploads.rglob("*"))
    assert folders == ["a", "a/b", "a/c"]
    assert all(path.is_dir() for path in space.uploads.rglob("*"))
    assert list(outputs(space)) == []


def test_lay_out_of_an_event_without_files_still_makes_every_folder(tmp_path: Path) -> None:
    space = lay_out(tmp_path / "run", {"eventID": "e"}, [], fetch_by_id)
    assert (space.src / "downloads").is_dir()
    assert space.uploads.is_dir()
    assert list((space.src / "downloads").iterdir()) == []
    assert json.loads((space.src / "notification.json").read_text()) == {"eventID": "e"}


@pytest.mark.parametrize(
    ("subdir", "name"),
    [("..", "x"), ("a/../..", "x"), ("", "../x"), ("a", ".."), ("..\\..", "x"), ("a\x00", "x")],
)
def test_an_input_path_leaving_downloads_is_refused(subdir: str, name: str) -> None:
    with pytest.raises(ConsumerFailed, match="input file 5 has an unsafe path"):
        InputFile(5, subdir, name, 1).relative()


def test_an_unsafe_input_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    fetched: list[int] = []

    def fetch(item: InputFile, target: Path) -> None:
        fetched.append(item.file_id)
        fetch_by_id(item, target)

    event = {"data": [file_entry(1, "ok", "a.txt"), file_entry(2, "../../outside", "b.txt")]}
    with pytest.raises(ConsumerFailed, match="unsafe path"):
        lay_out(tmp_path / "run", event, input_files(event), fetch)
    assert fetched == [1]
    assert not (tmp_path / "outside").exists()
    assert not (tmp_path / "run" / "SRC" / "outside").exists()


def test_safe_variants_of_input_paths_stay_inside() -> None:
    assert InputFile(1, "/a/b/", "c.txt", 0).relative() == Path("a/b/c.txt")
    assert InputFile(1, "data//a/./b", "c.txt", 0).relative() == Path("data/a/b/c.txt")
    assert InputFile(1, "", "c.txt", 0).relative() == Path("c.txt")
    assert InputFile(1, "a\\b", "c.txt", 0).relative() == Path("a/b/c.txt")


def make_outputs(space: Workspace, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = space.uploads / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_outputs_are_every_file_with_its_subdir_in_a_stable_order(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    make_outputs(
        space,
        {
            "z.txt": "z",
            "b/y.txt": "y",
            "a/b/x.txt": "x",
            "a/w.txt": "w",
            "a.txt": "a",
            "b/a/v.txt": "v",
        },
    )
    (space.uploads / "empty").mkdir()
    found = [
        (path.relative_to(space.uploads).as_posix(), subdir) for path, subdir in outputs(space)
    ]
    assert found == [
        ("a.txt", ""),
        ("z.txt", ""),
        ("a/w.txt", "a"),
        ("a/b/x.txt", "a/b"),
        ("b/y.txt", "b"),
        ("b/a/v.txt", "b/a"),
    ]


def test_no_uploads_folder_means_no_outputs(tmp_path: Path) -> None:
    assert list(outputs(Workspace(tmp_path / "nothing"))) == []


def test_a_linked_output_file_is_refused(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    make_outputs(space, {"a/ok.txt": "ok"})
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish")
    (space.uploads / "a" / "stolen.txt").symlink_to(secret)
    with pytest.raises(ConsumerFailed, match=r"output a/stolen\.txt is not a file"):
        list(outputs(space))


def test_a_dangling_link_is_refused(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    space.uploads.mkdir(parents=True)
    (space.uploads / "gone.txt").symlink_to(tmp_path / "missing")
    with pytest.raises(ConsumerFailed, match=r"gone\.txt is not a file"):
        list(outputs(space))


def test_a_linked_output_folder_is_refused(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    make_outputs(space, {"ok.txt": "ok"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "private.txt").write_text("private")
    (space.uploads / "linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConsumerFailed, match="output linked is a link"):
        list(outputs(space))


def test_a_special_file_is_refused(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    space.uploads.mkdir(parents=True)
    os.mkfifo(space.uploads / "pipe")
    with pytest.raises(ConsumerFailed, match="output pipe is not a file"):
        list(outputs(space))


def test_a_subdir_with_leading_or_trailing_dots_is_kept(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    make_outputs(space, {".hidden/a.txt": "a", "v1./b.txt": "b"})
    assert [subdir for _, subdir in outputs(space)] == [".hidden", "v1."]


def test_publishable_outputs_are_refused_over_the_total_limit(tmp_path: Path) -> None:
    space = Workspace(tmp_path / "run")
    make_outputs(space, {"a.txt": "x" * 600, "b/c.txt": "y" * 400})
    assert [subdir for _, subdir in publishable(space, 1000)] == ["", "b"]
    with pytest.raises(ConsumerFailed) as refused:
        publishable(space, 999)
    assert str(refused.value) == (
        "DST/uploads holds 1000 bytes in 2 files, over the limit of 999 bytes a run may publish"
    )


LIMITS = RunLimits(
    timeout_seconds=60,
    memory_bytes=2 * 1024**3,
    file_bytes=64 * 1024,
    open_files=100,
    uploads_bytes=1024**2,
)
# Records the limits it runs under, then writes a file one byte over the file limit.
OVER_THE_FILE_LIMIT = f"""import json, resource, sys
from pathlib import Path
uploads = Path(sys.argv[2]) / "uploads"
kinds = ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")
seen = {{kind: resource.getrlimit(getattr(resource, kind)) for kind in kinds}}
(uploads / "limits.json").write_text(json.dumps(seen))
(uploads / "big.bin").write_bytes(b"x" * {LIMITS.file_bytes + 1})
"""


def run_script(tmp_path: Path, script: str, limits: RunLimits) -> None:
    """Run ``script`` as a consumer (with this interpreter's environment) under ``limits``."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "__main__.py").write_text(script)
    space = lay_out(tmp_path / "run", {"eventID": "e"}, [], fetch_by_id)
    run_entry_point(Environment(Path(sys.prefix)), code, space, variables={}, limits=limits)


def test_a_run_gets_its_limits_and_a_file_over_the_size_limit_fails_it(tmp_path: Path) -> None:
    with pytest.raises(ConsumerFailed) as failed:
        run_script(tmp_path, OVER_THE_FILE_LIMIT, LIMITS)
    message = str(failed.value)
    assert message.startswith(
        "exit status 1 (DST/uploads/big.bin reached the limit of 65536 bytes on a file's "
        "size); stderr: "
    ), message
    assert "File too large" in message
    uploads = Workspace(tmp_path / "run").uploads
    assert (uploads / "big.bin").stat().st_size == LIMITS.file_bytes
    seen = json.loads((uploads / "limits.json").read_text())
    assert seen == {
        "RLIMIT_AS": [LIMITS.memory_bytes] * 2,
        "RLIMIT_FSIZE": [LIMITS.file_bytes] * 2,
        "RLIMIT_NOFILE": [LIMITS.open_files] * 2,
        "RLIMIT_CORE": [0, 0],
    }


def test_too_many_open_files_fail_a_run(tmp_path: Path) -> None:
    script = "import os\nfiles = [open(os.devnull) for _ in range(200)]\n"
    with pytest.raises(ConsumerFailed, match=r"(?s)exit status 1;.*Too many open files"):
        run_script(tmp_path, script, LIMITS)
