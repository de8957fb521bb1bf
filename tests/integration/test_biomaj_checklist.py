"""BioMAJ's download checklist (reference A12, items 1-14), against loopback servers.

biomaj-download's own suite (tests/biomaj_tests.py) mostly hits public demo servers. Here
each item runs against the servers of :mod:`tests.support.mirror_servers` and through
Conveyor's real code paths: a bank ``.properties`` text, read by
:func:`conveyor.mirror.properties.definition_from_properties` (directly or through
``POST /api/v1/mirrors`` as ``text/plain``), then a mirror run through the API with the
inline runtime. Items about one downloader primitive use ``open_source``, ``select_files``,
``fetch`` and ``release_from_dates`` on the source the bank file describes. Where Conveyor
deliberately differs from BioMAJ (docs/compatibility.md, "BioMAJ"), the test checks
Conveyor's behaviour and its docstring says so.

Item -> tests:

1. retry DSL: ``test_a12_01_*`` (the full accept/reject list is tests/unit/test_mirror_retry.py)
2. local: ``test_a12_02_*``
3. download_or_copy (reuse of unchanged files): ``test_a12_03_*``
4. get_more_recent_file (release from dates): ``test_a12_04_*``
5. retries: ``test_a12_05_*``
6. archive check: ``test_a12_06_*``
7. HTTP index with ``http.parse.*``: ``test_a12_07_*``
8. redirects: ``test_a12_08_*``
9. FTP: ``test_a12_09_*``
10. FTPS: ``test_a12_10_*``
11. SFTP: ``test_a12_11_*``
12. DirectFTP(S): ``test_a12_12_*``
13. DirectHTTP: ``test_a12_13_*``
14. rsync (local mode): ``test_a12_14_*``
``protocol=multi``: ``test_a12_multi_*``; A2/A3 keys the checklist leaves out:
``test_a2_*``, ``test_a3_*``.

Every bank retries at most twice without waiting (``tests.support.banks.bank_text``) unless
the test is about retries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.mirror.errors import SourceError
from conveyor.mirror.gate import HostGate
from conveyor.mirror.matching import select_files
from conveyor.mirror.properties import definition_from_properties
from conveyor.mirror.release import release_from_dates
from conveyor.mirror.retry import retry_policy
from conveyor.mirror.sources import open_source
from conveyor.mirror.spec import SourceSpec
from conveyor.mirror.transfer import Wanted, fetch
from conveyor.runtime import Runtime
from conveyor.storage.archive import blob_key
from tests.support.banks import (
    BANK_FILES,
    add_bank,
    bank_text,
    content,
    failed_task,
    make_bank,
    mirror_bank,
    on_request,
    post_bank,
    published,
    run_files,
    run_mirror,
    set_mtime,
)
from tests.support.mirror_servers import ServerInfo, ftp_server, http_server, sftp_server

LIST_TASK = "list files"
OLD = datetime(2020, 6, 15, 12, 0, tzinfo=UTC)  # "a remote date that is not today"
README = b"Conveyor test mirror: README\n" * 40
MAILING_LISTS = b"debian-user@lists.debian.org\n" * 10
GZ_PATTERN = r"^test.*\.gz$"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def bank_dir(tmp_path: Path) -> Path:
    """biomaj-download's tests/bank: test.fasta.gz, test2.fasta, test_100.txt."""
    return make_bank(tmp_path / "bank")


def _tree(root: Path, files: dict[str, bytes], when: datetime = OLD) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in root.rglob("*"):
        set_mtime(path, when)
    return root


def _remote_tree(root: Path) -> Path:
    """What the network servers serve: a README, a gzip, two files in doc/, one in sub/."""
    return _tree(
        root,
        {
            "README": README,
            "test.fasta.gz": BANK_FILES["test.fasta.gz"],
            "doc/mailing-lists.txt": MAILING_LISTS,
            "doc/FAQ": b"no questions\n",
            "sub/README": b"the sub folder\n",
        },
    )


def _server(info: ServerInfo) -> str:
    return f"{info.host}:{info.port}"


def _login(info: ServerInfo, password: str | None = None) -> str:
    return f"{info.user}:{password or info.password}"


def _http_bank(info: ServerInfo, remote_dir: str = "/", **keys: str) -> dict[str, str]:
    return {"protocol": "http", "server": _server(info), "remote.dir": remote_dir, **keys}


def _ftp_bank(info: ServerInfo, remote_dir: str = "/", **keys: str) -> dict[str, str]:
    return {
        "protocol": info.scheme,
        "server": _server(info),
        "remote.dir": remote_dir,
        "server.credentials": _login(info),
        **keys,
    }


def _folder_spec(text: str) -> SourceSpec:
    """The folder source a bank file describes."""
    source = definition_from_properties(text).source
    assert source is not None
    return source


def _direct_spec(text: str) -> tuple[SourceSpec, str]:
    """The source and path of a direct bank's one file."""
    definition = definition_from_properties(text)
    assert len(definition.files) == 1
    return definition.files[0].source, definition.files[0].path


def _names(spec: SourceSpec, folder: str = "") -> set[str]:
    with open_source(spec) as source:
        return {entry.name for entry in source.list(folder)}


def _selected(spec: SourceSpec, *patterns: str) -> dict[str, str]:
    """remote path -> save path of what ``patterns`` select."""
    with open_source(spec) as source:
        return {chosen.entry.name: chosen.save_as for chosen in select_files(source, patterns)}


def _failed_listing(client: TestClient, text: str) -> str:
    """Run a bank that must fail while listing; its error."""
    run = mirror_bank(client, text)
    assert run["state"] == "failed", f"run {run['state']}: {run['error']}"
    assert failed_task(client, run) == LIST_TASK
    assert run["files_total"] is None or run["files_total"] == 0
    return str(run["error"])


def _failed_file(client: TestClient, run: dict[str, Any]) -> dict[str, Any]:
    """The one file row a failed run marked failed."""
    assert run["state"] == "failed", f"run {run['state']}: {run['error']}"
    rows = run_files(client, run, "failed")
    assert len(rows) == 1, f"failed files: {rows}; run error: {run['error']}"
    return rows[0]


def _published_bytes(client: TestClient, text: str) -> dict[str, bytes]:
    """Run a bank that must publish; saved path -> bytes of its release."""
    run = mirror_bank(client, text)
    return {path: content(client, file) for path, file in published(client, run).items()}


# --- 1. retry DSL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("stop_condition", "stop_after_attempts(5)"),
        ("stop_condition", "I love python"),
        # Accepted by BioMAJ (fails at the first retry); refused here.
        ("stop_condition", "stop_after_attempt(5) & 1"),
        ("wait_policy", "wait_random"),
    ],
)
def test_a12_01_a_bad_retry_option_is_refused_naming_it(
    client: TestClient, bank_dir: Path, option: str, value: str
) -> None:
    """Deliberate difference: refused when the bank is defined (400), not at the first retry."""
    keys = {"protocol": "local", "remote.dir": f"{bank_dir}/"}
    answer = post_bank(client, bank_text("retry", keys, options={option: value}))
    assert answer.status_code == 400, answer.text
    assert f"options.{option}" in answer.json()["detail"]
    assert client.get("/api/v1/mirrors/retry").status_code == 404


README_CHAIN = (
    "wait_chain(*[wait_fixed(3) for i in range(3)] + [wait_fixed(7) for i in range(2)]"
    " + [wait_fixed(9)])"
)


@pytest.mark.parametrize(
    ("stop", "wait"),
    [
        ("stop_never | stop_after_attempt(5)", "wait_none + wait_random(1, 2)"),
        ("stop_after_attempt(5) | stop_after_delay(60)", "wait_fixed(3) + wait_random(0, 2)"),
        (
            "stop_any(stop_after_attempt(3), stop_after_delay(10))",
            "wait_combine(wait_fixed(3), wait_random(1, 2))",
        ),
        (
            "stop_all(stop_after_attempt(3), stop_after_delay(10))",
            "wait_chain(wait_fixed(3), wait_random(1, 2))",
        ),
        # BioMAJ's README example, which simpleeval refuses there ("Starred is not available").
        ("stop_after_attempt(5)", README_CHAIN),
    ],
)
def test_a12_01_readme_retry_examples_are_accepted_in_a_bank(
    client: TestClient, bank_dir: Path, stop: str, wait: str
) -> None:
    """Defined through the API as they are written in a bank file, and runnable."""
    keys = {"protocol": "local", "remote.dir": f"{bank_dir}/"}
    added = add_bank(client, bank_text("retry", keys, stop_condition=stop, wait_policy=wait))
    assert added["definition"]["stop_condition"] == stop
    assert added["definition"]["wait_policy"] == wait
    assert run_mirror(client, "retry")["state"] == "published"


# --- 2. local ---------------------------------------------------------------------------------


def _local(remote_dir: Path | str, **keys: str) -> str:
    return bank_text("local", {"protocol": "local", "remote.dir": f"{remote_dir}/", **keys})


def test_a12_02_local_listing_has_more_than_one_file(bank_dir: Path) -> None:
    assert _names(_folder_spec(_local(bank_dir))) == set(BANK_FILES)


def test_a12_02_local_missing_dir_fails_the_run_while_listing(
    client: TestClient, tmp_path: Path
) -> None:
    error = _failed_listing(client, _local(tmp_path / "missing"))
    assert error == f"folder {tmp_path / 'missing'} does not exist"


def test_a12_02_local_pattern_publishes_one_file_copied_not_linked(
    client: TestClient, runtime: Runtime, bank_dir: Path
) -> None:
    """Deliberate difference: BioMAJ may hard-link (use_hardlinks); Conveyor copies into its
    immutable archive, so changing the source can never change a published release."""
    run = mirror_bank(client, _local(bank_dir, **{"remote.files": GZ_PATTERN}))
    files = published(client, run)
    assert list(files) == ["test.fasta.gz"]
    assert content(client, files["test.fasta.gz"]) == BANK_FILES["test.fasta.gz"]
    blob = runtime.archive.store.local_path(blob_key(files["test.fasta.gz"]["sha256"]))
    assert blob is not None and blob.is_file()
    source = bank_dir / "test.fasta.gz"
    assert not blob.samefile(source)
    assert source.read_bytes() == BANK_FILES["test.fasta.gz"]  # the source is left alone


def test_a12_02_local_subdir_pattern_from_the_parent(client: TestClient, bank_dir: Path) -> None:
    text = _local(bank_dir.parent, **{"remote.files": r"^/bank/test.*\.gz$"})
    assert _selected(_folder_spec(text), r"^/bank/test.*\.gz$") == {
        "bank/test.fasta.gz": "bank/test.fasta.gz"
    }
    assert _published_bytes(client, text) == {"bank/test.fasta.gz": BANK_FILES["test.fasta.gz"]}


# --- 3. download_or_copy: reuse what did not change -------------------------------------------


def test_a12_03_a_new_release_downloads_only_the_changed_file(
    client: TestClient, bank_dir: Path
) -> None:
    add_bank(client, _local(bank_dir))
    first = run_mirror(client, "local")
    assert (first["files_done"], first["files_reused"]) == (3, 0)
    (bank_dir / "test2.fasta").write_bytes(b">seq3\nMKVLAAGIVW\n")
    set_mtime(bank_dir / "test2.fasta", datetime(2014, 1, 2, 12, tzinfo=UTC))
    second = run_mirror(client, "local")
    assert second["release"] == "2014-1-2"
    assert (second["files_done"], second["files_reused"]) == (1, 2)
    states = {row["save_as"]: row["state"] for row in run_files(client, second)}
    assert states == {"test2.fasta": "done", "test.fasta.gz": "reused", "test_100.txt": "reused"}


def test_a12_03_a_size_change_alone_is_downloaded_again(client: TestClient, bank_dir: Path) -> None:
    """Same dates, so the same release name: ``release.control=1`` notices the new list (A3
    step 4) and makes release ``__1``; only the file whose size changed is fetched."""
    add_bank(client, _local(bank_dir, **{"release.control": "1"}))
    assert run_mirror(client, "local")["release"] == "2013-11-12"
    (bank_dir / "test_100.txt").write_bytes(BANK_FILES["test_100.txt"] + b"line 100\n")
    set_mtime(bank_dir / "test_100.txt", datetime(2013, 11, 12, 12, tzinfo=UTC))
    second = run_mirror(client, "local")
    assert second["release"] == "2013-11-12__1"
    assert (second["files_done"], second["files_reused"]) == (1, 2)
    [done] = run_files(client, second, "done")
    assert done["save_as"] == "test_100.txt"


def test_a12_03_a_changed_year_alone_counts_as_changed(client: TestClient, bank_dir: Path) -> None:
    """BioMAJ compares (name, year, month, day, size): a year apart is a change."""
    add_bank(client, _local(bank_dir, **{"release.control": "1"}))
    run_mirror(client, "local")
    set_mtime(bank_dir / "test2.fasta", datetime(2012, 11, 12, 12, tzinfo=UTC))
    second = run_mirror(client, "local")
    assert second["state"] == "published", second
    assert (second["files_done"], second["files_reused"]) == (1, 2)
    [done] = run_files(client, second, "done")
    assert done["save_as"] == "test2.fasta"
    assert done["mtime"].startswith("2012-11-12")


def test_a3_an_unchanged_bank_after_a_control_release_is_up_to_date(
    client: TestClient, bank_dir: Path
) -> None:
    """A3 step 4: with ``release.control=1`` and nothing changed since release ``R__1``,
    there is nothing to update (BioMAJ compares the remote release, not the local ``R__1``)."""
    add_bank(client, _local(bank_dir, **{"release.control": "1"}))
    run_mirror(client, "local")
    set_mtime(bank_dir / "test2.fasta", datetime(2012, 11, 12, 12, tzinfo=UTC))
    assert run_mirror(client, "local")["release"] == "2013-11-12__1"
    third = run_mirror(client, "local")
    assert third["state"] == "up_to_date", f"{third['state']} release {third['release']}"
    assert third["release"] == "2013-11-12__1"


# --- 4. get_more_recent_file: the release is the newest file's date ---------------------------

FOUR_DATES = [
    datetime(2013, 11, 10, 8, tzinfo=UTC),
    datetime(2013, 11, 12, 9, tzinfo=UTC),
    datetime(2013, 11, 11, 23, tzinfo=UTC),
    datetime(2012, 12, 24, 10, tzinfo=UTC),
]


def test_a12_04_release_from_dates_is_the_newest_date() -> None:
    assert release_from_dates(FOUR_DATES, None) == "2013-11-12"
    assert release_from_dates([*FOUR_DATES, None], "%Y.%m.%d") == "2013.11.12"
    # Y-M-D without zero padding, as BioMAJ writes it.
    assert release_from_dates([datetime(2013, 3, 4, tzinfo=UTC)], None) == "2013-3-4"


@pytest.mark.parametrize(
    ("extra", "release"), [({}, "2013-11-12"), ({"release.format": "%%Y%%m%%d"}, "20131112")]
)
def test_a12_04_a_bank_without_release_file_is_released_by_its_newest_file(
    client: TestClient, tmp_path: Path, extra: dict[str, str], release: str
) -> None:
    for number, when in enumerate(FOUR_DATES):
        (tmp_path / f"file{number}.txt").write_text(f"file {number}\n")
        set_mtime(tmp_path / f"file{number}.txt", when)
    text = bank_text(
        "dated",
        {"protocol": "local", "remote.dir": f"{tmp_path}/", "release.file": "", **extra},
    )
    run = mirror_bank(client, text)
    assert (run["state"], run["release"]) == ("published", release)
    assert len(published(client, run)) == 4


# --- 5. retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ftp", "http"])
def test_a12_05_a_transient_failure_is_retried_as_stop_condition_says(
    client: TestClient, tmp_path: Path, kind: str
) -> None:
    """The listing goes through; then the server refuses every transfer: FTP answers new
    connections with 421, HTTP answers every request with 503 (and Retry-After: 1)."""
    root = _remote_tree(tmp_path / "remote")
    # Armed once the listing is under way (FTP) or the file is first asked for (HTTP).
    trigger, status = ("MLSD", "421") if kind == "ftp" else ("GET /README ", "503")
    with ftp_server(root) if kind == "ftp" else http_server(root) as info:
        keys = _ftp_bank(info) if kind == "ftp" else _http_bank(info)
        keys["remote.files"] = "^README$"
        text = bank_text("retry", keys, stop_condition="stop_after_attempt(5)")
        refuse = lambda: setattr(info.faults, "refuse_connections", 10)  # noqa: E731
        with on_request(info.faults, trigger, refuse):
            run = mirror_bank(client, text)
        refused = 10 - info.faults.refuse_connections
    row = _failed_file(client, run)
    assert row["attempts"] == 5
    assert status in row["error"]
    assert refused == 5


def test_a12_05_a_missing_file_fails_at_once(client: TestClient, tmp_path: Path) -> None:
    """Deliberate difference: BioMAJ retries every error (a 404 five times); Conveyor ends
    a file at once on a permanent error (404, 550, authentication)."""
    root = _remote_tree(tmp_path / "www")
    with http_server(root) as info:
        keys = _http_bank(info, **{"remote.files": "^README$"})
        text = bank_text("retry", keys, stop_condition="stop_after_attempt(5)")
        # Listed, then gone when it is fetched.
        remove = (root / "README").unlink
        with on_request(info.faults, "GET /README ", remove):
            run = mirror_bank(client, text)
        gets = [entry for entry in info.faults.requests if entry.startswith("GET /README ")]
    row = _failed_file(client, run)
    assert row["attempts"] == 1
    assert "404" in row["error"]
    assert len(gets) == 1


def test_a12_05_each_file_gets_the_whole_retry_policy(tmp_path: Path) -> None:
    """The primitive: ``fetch`` under ``stop_after_attempt(5)`` makes 5 attempts at a file
    the server keeps refusing (421), and again 5 at the next file (the policy is reusable)."""
    root = _remote_tree(tmp_path / "ftp")
    policy = retry_policy("stop_after_attempt(5)", "wait_none")
    with ftp_server(root) as info:
        spec = _folder_spec(bank_text("ftp", _ftp_bank(info)))
        info.faults.refuse_connections = 10
        attempts = []
        with open_source(spec) as source:
            for name in ("README", "doc/FAQ"):
                wanted = Wanted(name, name, None, tmp_path / "out" / name)
                with pytest.raises(SourceError, match="421") as failed:
                    fetch(source, wanted, policy, gate=HostGate(1), attempt_seconds=10)
                attempts.append(failed.value.attempts)
    assert attempts == [5, 5]
    assert info.faults.refuse_connections == 0


# --- 6. archive check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "invalid.gz is empty"), (b"not gzip at all", "invalid.gz is not a valid archive")],
    ids=["empty", "garbage"],
)
def test_a12_06_an_invalid_gz_fails_the_run(
    client: TestClient, bank_dir: Path, data: bytes, reason: str
) -> None:
    """As in BioMAJ the bad file is thrown away and fetched again (2 attempts here), then
    the run fails; nothing is published. Deliberate difference: BioMAJ's local copy skips the
    archive check; Conveyor checks what every protocol brings, local files included."""
    (bank_dir / "invalid.gz").write_bytes(data)
    run = mirror_bank(client, _local(bank_dir, **{"remote.files": r"^.*\.gz$"}))
    row = _failed_file(client, run)
    assert "invalid.gz" in run["error"]
    assert row["save_as"] == "invalid.gz"
    assert reason in row["error"]
    assert row["attempts"] == 2
    assert client.get("/api/v1/mirrors/local").json()["last_release"] is None


@pytest.mark.parametrize("data", [b"", b"not gzip at all"], ids=["empty", "garbage"])
def test_a12_06_skip_check_uncompress_publishes_it(
    client: TestClient, bank_dir: Path, data: bytes
) -> None:
    (bank_dir / "invalid.gz").write_bytes(data)
    text = bank_text(
        "local",
        {"protocol": "local", "remote.dir": f"{bank_dir}/", "remote.files": r"^.*\.gz$"},
        options={"skip_check_uncompress": "true"},
    )
    assert _published_bytes(client, text) == {
        "invalid.gz": data,
        "test.fasta.gz": BANK_FILES["test.fasta.gz"],
    }


# --- 7. HTTP index pages with BioMAJ's http.parse.* -------------------------------------------

# Expressions written for the test server's Apache <pre> page, doubled backslashes as in
# BioMAJ bank files (halved when read):
#   <img src="/icons/folder.gif" alt="[DIR]"> <a href="sub/">sub/</a>   15-Jun-2020 12:00    -
#   <img src="/icons/unknown.gif" alt="[   ]"> <a href="README">README</a>  15-Jun-2020 12:00  1.1K
HTTP_PARSE = {
    "http.parse.dir.line": (
        r'<img src="[^"]+" alt="\\[DIR\\]"> <a href="([^"/]+)/">[^<]*</a>\\s+'
        r"(\\d{2}-\\w{3}-\\d{4} \\d{2}:\\d{2})"
    ),
    "http.parse.file.line": (
        r'<img src="[^"]+" alt="\\[ +\\]"> <a href="([^"]+)">[^<]*</a>\\s+'
        r"(\\d{2}-\\w{3}-\\d{4} \\d{2}:\\d{2})\\s+([\\d.]+[KMG]?)"
    ),
    "http.group.dir.name": "1",
    "http.group.dir.date": "2",
    "http.group.file.name": "1",
    "http.group.file.date": "2",
    "http.group.file.size": "3",
}


def test_a12_07_http_parse_rules_list_the_index(client: TestClient, tmp_path: Path) -> None:
    root = _remote_tree(tmp_path / "www")
    with http_server(root) as info:
        text = bank_text("http", {**_http_bank(info), **HTTP_PARSE, "remote.files": "^README$"})
        spec = _folder_spec(text)
        assert spec.http_parse is not None
        with open_source(spec) as source:
            entries = {entry.name: entry for entry in source.list()}
        files = _published_bytes(client, text)
    assert set(entries) == {"README", "test.fasta.gz", "doc", "sub"}
    assert entries["doc"].is_dir and not entries["README"].is_dir
    assert entries["README"].mtime == OLD
    assert files == {"README": README}


def test_a12_07_http_missing_dir_fails(client: TestClient, tmp_path: Path) -> None:
    with http_server(_remote_tree(tmp_path / "www")) as info:
        error = _failed_listing(
            client, bank_text("http", {**_http_bank(info, "/missing/"), **HTTP_PARSE})
        )
    assert "/missing/" in error and "404" in error


def test_a12_07_http_without_size_and_date_groups_still_downloads(
    client: TestClient, tmp_path: Path
) -> None:
    """Size group -1 lists a size of 0 and date group -1 the listing time (BioMAJ: today);
    the file must still arrive whole."""
    root = _remote_tree(tmp_path / "www")
    with http_server(root) as info:
        rules = {**HTTP_PARSE, "http.group.file.size": "-1", "http.group.file.date": "-1"}
        text = bank_text("http", {**_http_bank(info), **rules, "remote.files": "^README$"})
        run = mirror_bank(client, text)
    assert run["state"] == "published", f"run {run['state']}: {run['error']}"
    today = datetime.now(UTC)
    assert run["release"] == f"{today.year}-{today.month}-{today.day}"
    assert content(client, published(client, run)["README"]) == README


def test_a12_07_http_listing_without_size_and_date_groups(tmp_path: Path) -> None:
    """Group -1: the entries are found, dated by the listing (BioMAJ: today). Their size is
    not asserted: BioMAJ says 0, and the run test above needs the file to arrive whole."""
    with http_server(_remote_tree(tmp_path / "www")) as info:
        rules = {**HTTP_PARSE, "http.group.file.size": "-1", "http.group.file.date": "-1"}
        spec = _folder_spec(bank_text("http", {**_http_bank(info), **rules}))
        before = datetime.now(UTC)
        with open_source(spec) as source:
            entries = {entry.name: entry for entry in source.list()}
    assert set(entries) == {"README", "test.fasta.gz", "doc", "sub"}
    readme = entries["README"]
    assert readme.mtime is not None and readme.mtime >= before.replace(microsecond=0)


def test_a12_07_http_subdir_pattern_from_the_root(client: TestClient, tmp_path: Path) -> None:
    with http_server(_remote_tree(tmp_path / "www")) as info:
        text = bank_text("http", {**_http_bank(info), **HTTP_PARSE, "remote.files": "^sub/README$"})
        assert _published_bytes(client, text) == {"sub/README": b"the sub folder\n"}


# --- 8. redirects -----------------------------------------------------------------------------

# /old/ moved to /doc/: the folder and the file BioMAJ would fetch from it.
MOVED = {"/old/": "/doc/", "/old/FAQ": "/doc/FAQ", "/moved.txt": "/README"}


def test_a12_08_a_redirected_folder_is_followed_by_default(
    client: TestClient, tmp_path: Path
) -> None:
    with http_server(_remote_tree(tmp_path / "www"), redirects=MOVED) as info:
        text = bank_text("moved", {**_http_bank(info, "/old/"), "remote.files": "^FAQ$"})
        assert _published_bytes(client, text) == {"FAQ": b"no questions\n"}
        assert "GET /old/FAQ -" in info.faults.requests


def test_a12_08_a_direct_file_follows_http_to_https(client: TestClient, tmp_path: Path) -> None:
    """BioMAJ's plasmodb case: an http URL answered by a redirect to https."""
    root = _remote_tree(tmp_path / "www")
    with http_server(root, tls=True) as secure:
        redirects = {"/README": f"{secure.url}/README"}
        with http_server(tmp_path / "empty", redirects=redirects) as plain:
            text = bank_text(
                "moved",
                {"protocol": "directhttp", "server": _server(plain), "remote.dir": "/README"},
                options={"ssl_server_cert": str(secure.cafile)},
            )
            assert _published_bytes(client, text) == {"README": README}


@pytest.mark.parametrize(
    "keys",
    [
        {"protocol": "http", "remote.dir": "/old/", "remote.files": "^FAQ$"},
        {"protocol": "directhttp", "remote.dir": "/moved.txt"},
    ],
    ids=["folder", "direct"],
)
def test_a12_08_allow_redirections_false_fails_naming_it(
    client: TestClient, tmp_path: Path, keys: dict[str, str]
) -> None:
    with http_server(_remote_tree(tmp_path / "www"), redirects=MOVED) as info:
        text = bank_text(
            "moved", {"server": _server(info), **keys}, options={"allow_redirections": "false"}
        )
        error = _failed_listing(client, text)
    assert "redirected (302)" in error
    assert "allow_redirections" in error


# --- 9. FTP -----------------------------------------------------------------------------------


def test_a12_09_ftp_lists_and_downloads(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp")) as info:
        text = bank_text("ftp", _ftp_bank(info, **{"remote.files": rf"^README$ {GZ_PATTERN}"}))
        assert _names(_folder_spec(text)) == {"README", "test.fasta.gz", "doc", "sub"}
        files = _published_bytes(client, text)
    assert files == {"README": README, "test.fasta.gz": BANK_FILES["test.fasta.gz"]}


def test_a12_09_ftp_missing_dir_fails(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp")) as info:
        error = _failed_listing(client, bank_text("ftp", _ftp_bank(info, "/missing/")))
    assert error.startswith("550 "), error


def test_a12_09_ftp_bad_password_fails(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp")) as info:
        keys = {**_ftp_bank(info), "server.credentials": _login(info, "wrong")}
        error = _failed_listing(client, bank_text("ftp", keys))
        logins = [entry for entry in info.faults.requests if entry.startswith("PASS")]
    assert error.startswith("530 "), error
    assert len(logins) == 1  # a refused login is not tried again


def test_a12_09_ftp_msdos_listing_server(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp"), listing="msdos", mlsd=False) as info:
        text = bank_text("ftp", _ftp_bank(info, **{"remote.files": "^README$ ^doc/FAQ$"}))
        with open_source(_folder_spec(text)) as source:
            entries = {entry.name: entry for entry in source.list()}
        files = _published_bytes(client, text)
        listed = [entry for entry in info.faults.requests if entry.startswith("LIST")]
    assert listed, "MLSD is refused: the listing must come from LIST"
    assert set(entries) == {"README", "test.fasta.gz", "doc", "sub"}
    assert entries["doc"].is_dir
    assert entries["README"].size == len(README)
    assert files == {"README": README, "doc/FAQ": b"no questions\n"}


def test_a12_09_ftp_nocwd_and_tcp_keepalive(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp")) as info:
        text = bank_text(
            "ftp",
            _ftp_bank(info, **{"remote.files": "^doc/mailing-lists.txt$"}),
            options={"ftp_method": "nocwd", "tcp_keepalive": "10"},
        )
        spec = _folder_spec(text)
        assert (spec.options.ftp_method, spec.options.tcp_keepalive) == ("nocwd", 10)
        files = _published_bytes(client, text)
        requests = list(info.faults.requests)
    assert files == {"doc/mailing-lists.txt": MAILING_LISTS}
    # The server logs every path relative to its root, so RETR after CWD would read the
    # same: no CWD at all is what shows that commands named full paths.
    assert not [entry for entry in requests if entry.startswith("CWD")]
    assert "RETR doc/mailing-lists.txt" in requests
    assert "MLSD doc" in requests


def test_a12_09_ftp_subdir_pattern(client: TestClient, tmp_path: Path) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp")) as info:
        text = bank_text("ftp", _ftp_bank(info, **{"remote.files": "^doc/mailing-lists.txt$"}))
        assert _published_bytes(client, text) == {"doc/mailing-lists.txt": MAILING_LISTS}
        # The default ftp_method walks into the folder (unlike nocwd above).
        assert "CWD doc" in info.faults.requests


# --- 10. FTPS ---------------------------------------------------------------------------------

CAFILE = "<the test CA>"


@pytest.mark.parametrize(
    "options",
    [
        {"ssl_server_cert": CAFILE},
        {"ssl_verifyhost": "false", "ssl_verifypeer": "false"},
        {"ssl_server_cert": CAFILE, "ssl_verifyhost": "false"},
    ],
    ids=["pinned-ca", "no-checks", "pinned-ca-any-host"],
)
def test_a12_10_ftps_lists_and_downloads_with_credentials(
    client: TestClient, tmp_path: Path, options: dict[str, str]
) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp"), tls=True) as info:
        chosen = {
            key: str(info.cafile) if value == CAFILE else value for key, value in options.items()
        }
        text = bank_text("ftps", _ftp_bank(info, **{"remote.files": "^README$"}), options=chosen)
        assert _names(_folder_spec(text)) == {"README", "test.fasta.gz", "doc", "sub"}
        assert _published_bytes(client, text) == {"README": README}


def test_a12_10_ftps_default_options_refuse_an_unknown_ca(
    client: TestClient, tmp_path: Path
) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp"), tls=True) as info:
        error = _failed_listing(client, bank_text("ftps", _ftp_bank(info)))
    assert "certificate verify failed" in error, error


# --- 11. SFTP ---------------------------------------------------------------------------------


def _sftp_bank(
    info: ServerInfo, hosts: Path, new_host: str, remote_dir: str = "/", password: str = ""
) -> str:
    keys = {
        "protocol": "sftp",
        "server": _server(info),
        "remote.dir": remote_dir,
        "server.credentials": _login(info, password or None),
        "remote.files": "^README$",
    }
    options = {"ssh_hosts_file": str(hosts), "ssh_new_host": new_host}
    return bank_text("sftp", keys, options=options)


@pytest.fixture
def empty_hosts(tmp_path: Path) -> Path:
    """An empty known_hosts file (never the user's own)."""
    hosts = tmp_path / "known_hosts"
    hosts.write_text("")
    return hosts


def test_a12_11_sftp_bad_dir_fails(client: TestClient, tmp_path: Path, empty_hosts: Path) -> None:
    with sftp_server(_remote_tree(tmp_path / "sftp")) as info:
        error = _failed_listing(client, _sftp_bank(info, empty_hosts, "accept", "/missing/"))
    assert "no such file or folder" in error, error


def test_a12_11_sftp_bad_password_fails(
    client: TestClient, tmp_path: Path, empty_hosts: Path
) -> None:
    with sftp_server(_remote_tree(tmp_path / "sftp")) as info:
        error = _failed_listing(client, _sftp_bank(info, empty_hosts, "accept", password="bad"))
    assert "authentication failed" in error, error


def test_a12_11_sftp_new_host_added_to_the_hosts_file(
    client: TestClient, tmp_path: Path, empty_hosts: Path
) -> None:
    with sftp_server(_remote_tree(tmp_path / "sftp")) as info:
        text = _sftp_bank(info, empty_hosts, "add")
        assert _published_bytes(client, text) == {"README": README}
        assert _names(_folder_spec(text)) == {"README", "test.fasta.gz", "doc", "sub"}
        line = info.known_hosts_line
    # Added once, on first sight; later connections find it there.
    assert empty_hosts.read_text().splitlines() == [line]


def test_a12_11_sftp_unknown_host_rejected_by_default(
    client: TestClient, tmp_path: Path, empty_hosts: Path
) -> None:
    with sftp_server(_remote_tree(tmp_path / "sftp")) as info:
        error = _failed_listing(client, _sftp_bank(info, empty_hosts, "reject"))
    assert "ssh_new_host" in error
    assert empty_hosts.read_text() == ""


# --- 12. DirectFTP(S) -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["directftp", "directftps"])
@pytest.mark.parametrize(
    ("target", "saved"),
    [(None, "mailing-lists.txt"), ("lists.txt", "lists.txt")],
    ids=["basename", "target-name"],
)
def test_a12_12_directftp_publishes_the_file_with_its_size_and_date(
    client: TestClient, tmp_path: Path, tls: bool, target: str | None, saved: str
) -> None:
    with ftp_server(_remote_tree(tmp_path / "ftp"), tls=tls) as info:
        keys = {**_ftp_bank(info, "/doc/mailing-lists.txt"), "protocol": f"direct{info.scheme}"}
        if target:
            keys["target.name"] = target
        options = {"ssl_server_cert": str(info.cafile)} if tls else {}
        text = bank_text("direct", keys, options=options)
        spec, path = _direct_spec(text)
        with open_source(spec) as source:
            entry = source.stat(path)
        run = mirror_bank(client, text)
        files = published(client, run)
        assert content(client, files[saved]) == MAILING_LISTS
    assert (entry.size, entry.mtime) == (len(MAILING_LISTS), OLD)
    assert entry.mtime is not None and entry.mtime.date() != datetime.now(UTC).date()
    assert list(files) == [saved]
    assert files[saved]["mtime"].startswith("2020-06-15")
    [row] = run_files(client, run)
    assert (row["size"], row["mtime"][:10]) == (len(MAILING_LISTS), "2020-06-15")
    assert row["url"] == f"direct{info.scheme}://{_server(info)}/doc/mailing-lists.txt"
    assert run["release"] == "2020-6-15"


# --- 13. DirectHTTP ---------------------------------------------------------------------------


def _direct_http(info: ServerInfo, path: str, **keys: str) -> str:
    return bank_text(
        "direct", {"protocol": "directhttp", "server": _server(info), "remote.dir": path, **keys}
    )


def test_a12_13_head_gives_size_and_a_date_not_today(client: TestClient, tmp_path: Path) -> None:
    with http_server(_remote_tree(tmp_path / "www")) as info:
        text = _direct_http(info, "/README")
        spec, path = _direct_spec(text)
        with open_source(spec) as source:
            entry = source.stat(path)
        run = mirror_bank(client, text)
        assert "HEAD /README" in info.faults.requests
    assert (entry.size, entry.mtime) == (len(README), OLD)
    [row] = run_files(client, run)
    assert (row["size"], row["mtime"][:10]) == (len(README), "2020-06-15")
    assert content(client, published(client, run)["README"]) == README


def test_a12_13_target_name_renames(client: TestClient, tmp_path: Path) -> None:
    with http_server(_remote_tree(tmp_path / "www")) as info:
        text = _direct_http(info, "/doc/FAQ", **{"target.name": "test.json"})
        assert _published_bytes(client, text) == {"test.json": b"no questions\n"}


@pytest.mark.parametrize(("method", "field"), [("GET", "args"), ("POST", "form")])
def test_a12_13_params_are_sent_and_target_name_renames(
    client: TestClient, tmp_path: Path, method: str, field: str
) -> None:
    with http_server(tmp_path) as info:
        text = _direct_http(
            info,
            "/echo",
            **{
                "url.method": method,
                "url.params": "key1",
                "key1.value": "value1",
                "target.name": "test.json",
            },
        )
        files = _published_bytes(client, text)
    assert list(files) == ["test.json"]
    assert json.loads(files["test.json"])[field] == {"key1": "value1"}


@pytest.mark.parametrize(("method", "field"), [("GET", "args"), ("POST", "form")])
def test_a12_13_the_source_sends_the_params(tmp_path: Path, method: str, field: str) -> None:
    """The primitive: the direct source reads /echo with the bank's method and params."""
    with http_server(tmp_path) as info:
        keys = {"url.method": method, "url.params": "key1", "key1.value": "value1"}
        spec, path = _direct_spec(_direct_http(info, "/echo", **keys))
        with open_source(spec) as source:
            answer = b"".join(source.read(path))
    assert json.loads(answer) == {field: {"key1": "value1"}}


def test_a12_13_missing_path_fails_while_listing(client: TestClient, tmp_path: Path) -> None:
    with http_server(_remote_tree(tmp_path / "www")) as info:
        error = _failed_listing(client, _direct_http(info, "/nothing/here.txt"))
    assert "/nothing/here.txt" in error and "404" in error


def test_a12_13_a_server_refusing_head_still_downloads(client: TestClient, tmp_path: Path) -> None:
    """BioMAJ tolerates a 405 to HEAD (no metadata); so does Conveyor."""
    with http_server(_remote_tree(tmp_path / "www")) as info:
        run = mirror_bank(client, _direct_http(info, "/no-head/README"))
        assert "HEAD /no-head/README" in info.faults.requests
    assert content(client, published(client, run)["README"]) == README
    [row] = run_files(client, run)
    assert (row["size"], row["mtime"]) == (None, None)


# --- 14. rsync (local mode) -------------------------------------------------------------------


def _rsync(remote_dir: Path, **keys: str) -> str:
    return bank_text("rsync", {"protocol": "rsync", "remote.dir": f"{remote_dir}/", **keys})


def test_a12_14_rsync_lists_matches_and_downloads(client: TestClient, bank_dir: Path) -> None:
    text = _rsync(bank_dir, **{"remote.files": GZ_PATTERN})
    spec = _folder_spec(text)
    assert (spec.protocol, spec.server) == ("rsync", "")
    assert _names(spec) == set(BANK_FILES)
    assert _selected(spec, GZ_PATTERN) == {"test.fasta.gz": "test.fasta.gz"}
    assert _published_bytes(client, text) == {"test.fasta.gz": BANK_FILES["test.fasta.gz"]}


def test_a12_14_rsync_subdir_pattern_from_the_parent(client: TestClient, bank_dir: Path) -> None:
    text = _rsync(bank_dir.parent, **{"remote.files": "^/bank/test.*"})
    assert _published_bytes(client, text) == {f"bank/{n}": data for n, data in BANK_FILES.items()}


def test_a12_14_rsync_missing_dir_fails(client: TestClient, tmp_path: Path) -> None:
    error = _failed_listing(client, _rsync(tmp_path / "missing"))
    assert error.startswith(f"rsync {tmp_path / 'missing'}/: ")
    assert "No such file or directory" in error


# --- protocol=multi ---------------------------------------------------------------------------


def test_a12_multi_publishes_every_remote_file(client: TestClient, tmp_path: Path) -> None:
    with (
        http_server(tmp_path / "empty") as web,
        ftp_server(_remote_tree(tmp_path / "ftp")) as ftp,
    ):
        keys = {
            "protocol": "multi",
            "remote.file.0.protocol": "directhttp",
            "remote.file.0.server": _server(web),
            "remote.file.0.path": "/echo",
            "remote.file.0.method": "GET",
            "remote.file.0.params.keys": "key1",
            "remote.file.0.params.key1": "value1",
            "remote.file.0.name": "echo.json",
            "remote.file.1.protocol": "directftp",
            "remote.file.1.server": _server(ftp),
            "remote.file.1.path": "/doc/mailing-lists.txt",
            "remote.file.1.credentials": _login(ftp),
            "remote.file.1.name": "lists.txt",
        }
        run = mirror_bank(client, bank_text("multi", keys))
        files = {path: content(client, file) for path, file in published(client, run).items()}
    assert set(files) == {"echo.json", "lists.txt"}
    assert json.loads(files["echo.json"])["args"] == {"key1": "value1"}
    assert files["lists.txt"] == MAILING_LISTS
    assert run["release"] == "2020-6-15"  # the newest file that has a date


# --- A2: remote.list --------------------------------------------------------------------------


def test_a2_remote_list_replaces_the_listing(client: TestClient, bank_dir: Path) -> None:
    """A2: ``remote.list`` names a JSON list of file records that stands in for the listing:
    only the files it names are mirrored."""
    records = [
        {
            "name": "test2.fasta",
            "root": f"{bank_dir}/",
            "size": len(BANK_FILES["test2.fasta"]),
            "year": 2013,
            "month": 11,
            "day": 12,
        }
    ]
    listed = bank_dir.parent / "files.json"
    listed.write_text(json.dumps(records))
    run = mirror_bank(client, _local(bank_dir, **{"remote.list": str(listed)}))
    assert list(published(client, run)) == ["test2.fasta"]
