"""Carts of files held by a remote Pacifica archive interface, through the shared input cache.

The archive interface is a loopback server that answers as the published one does (tape
media, 500 for a missing file). The runtime is inline: a cart's job runs inside the request
that asks for it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conveyor.auth.tokens import create_token
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.filesystems import small_filesystem
from tests.support.pacifica_archive import FakeArchive, running_archive

CARTD = "/pacifica/cartd"


@pytest.fixture
def remote() -> Iterator[FakeArchive]:
    with running_archive() as archive:
        yield archive


def entry(remote_id: str, data: bytes, path: str, checksum: str | None = None) -> dict[str, str]:
    return {
        "id": remote_id,
        "path": path,
        "hashtype": "md5",
        "hashsum": checksum if checksum is not None else hashlib.md5(data).hexdigest(),
    }


def ask(client: TestClient, uid: str, *entries: dict[str, str]) -> httpx.Response:
    answer: httpx.Response = client.post(f"{CARTD}/{uid}", json={"fileids": list(entries)})
    assert answer.status_code == 201, answer.text
    return client.head(f"{CARTD}/{uid}")


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def client_for(make_runtime: Callable[..., Runtime], url: str, **settings: object) -> TestClient:
    runtime = make_runtime(pacifica_archive_url=url, **settings)
    return TestClient(create_app(runtime=runtime))


def test_remote_files_are_staged_from_tape_once_and_bundled(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    one, two = b"first remote file\n", b"second, it was on tape\n"
    remote.put("r1", one)
    remote.put("r2", two, tape_heads=2)
    with client_for(make_runtime, remote.url) as client:
        started = time.monotonic()
        head = ask(client, "c1", entry("r1", one, "a/one.txt"), entry("r2", two, "b/two.txt"))
        waited = time.monotonic() - started
        assert (head.status_code, head.headers["x-pacifica-status"]) == (204, "ready")
        got = client.get(f"{CARTD}/c1", params={"filename": "c1"})
        assert got.status_code == 200
        assert members(got.content) == {"c1/a/one.txt": one, "c1/b/two.txt": two}
        again = ask(client, "c2", entry("r2", two, "elsewhere/two.txt"))
        assert again.headers["x-pacifica-status"] == "ready"
    # Staged, polled with growing pauses (0.5 s, then 1 s) while on tape, pulled once each.
    assert remote.calls[("POST", "r2")] == 1
    assert remote.calls[("HEAD", "r2")] == 3
    assert waited >= 1.5
    assert remote.calls[("GET", "r1")] == remote.calls[("GET", "r2")] == 1


def test_many_carts_wanting_one_file_fetch_it_once(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    data = b"wanted by everyone\n" * 1000
    remote.put("shared", data, tape_heads=1)
    with client_for(make_runtime, remote.url) as client:

        def one_cart(number: int) -> str:
            head = ask(client, f"u{number}", entry("shared", data, f"copy{number}/shared.bin"))
            return str(head.headers["x-pacifica-status"])

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(one_cart, range(6)))
        assert outcomes == ["ready"] * 6
        got = client.get(f"{CARTD}/u3", params={"filename": "x"})
        assert members(got.content) == {"x/copy3/shared.bin": data}
    assert remote.calls[("GET", "shared")] == 1


def test_a_wrong_hash_or_a_missing_file_fails_that_cart_with_the_reason(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    data = b"the bytes\n"
    remote.put("f", data)
    with client_for(make_runtime, remote.url) as client:
        bad = ask(client, "bad", entry("f", data, "f.txt", checksum="0" * 32))
        assert bad.status_code == 500
        assert bad.headers["x-pacifica-status"] == "error"
        assert f"its md5 is {hashlib.md5(data).hexdigest()}" in bad.headers["x-pacifica-message"]
        gone = ask(client, "gone", entry("nothing-here", b"", "n.txt"))
        assert gone.status_code == 500
        assert "is not in the archive at" in gone.headers["x-pacifica-message"]
        good = ask(client, "good", entry("f", data, "f.txt"))
        assert good.headers["x-pacifica-status"] == "ready"
    assert remote.calls[("GET", "f")] == 1  # the good cart reused the cached bytes


def test_a_download_cut_half_way_is_pulled_again(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    data = bytes(range(256)) * 400
    remote.put("cut", data)
    remote.break_next.add("cut")
    with client_for(make_runtime, remote.url) as client:
        head = ask(client, "cut", entry("cut", data, "cut.bin"))
        assert head.headers["x-pacifica-status"] == "ready"
        got = client.get(f"{CARTD}/cut", params={"filename": "z"})
        assert members(got.content) == {"z/cut.bin": data}
    assert remote.calls[("GET", "cut")] == 2


FIRST, SECOND = b"a" * 600, b"b" * 600


def small_cache_client(
    make_runtime: Callable[..., Runtime], remote: FakeArchive, buffer_seconds: float
) -> TestClient:
    """A client whose input cache holds 1,000 bytes (700 after eviction), one cart of
    ``FIRST`` ready and downloaded, and ``SECOND`` waiting in the remote archive."""
    remote.put("first", FIRST)
    remote.put("second", SECOND)
    client = client_for(
        make_runtime,
        remote.url,
        lru_buffer_seconds=buffer_seconds,
        cart_cache_high_bytes=1000,
        cart_cache_low_bytes=700,
    )
    assert ask(client, "one", entry("first", FIRST, "1")).headers["x-pacifica-status"] == "ready"
    assert client.get(f"{CARTD}/one", params={"filename": "o"}).status_code == 200
    return client


def test_eviction_makes_room_and_an_evicted_cart_is_staged_again(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    with small_cache_client(make_runtime, remote, buffer_seconds=0) as client:
        two = ask(client, "two", entry("second", SECOND, "2"))
        assert two.headers["x-pacifica-status"] == "ready"
        # "first" was evicted to make room: asking for cart one stages it again.
        again = client.get(f"{CARTD}/one", params={"filename": "o"})
        assert again.status_code == 202
        assert client.head(f"{CARTD}/one").headers["x-pacifica-status"] == "ready"
        got = client.get(f"{CARTD}/one", params={"filename": "o"})
        assert members(got.content) == {"o/1": FIRST}
    assert remote.calls[("GET", "first")] == 2


def test_recently_used_files_are_kept_and_the_newcomer_gets_no_space(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    with small_cache_client(make_runtime, remote, buffer_seconds=3600) as client:
        refused = ask(client, "two", entry("second", SECOND, "2"))
        assert refused.status_code == 500
        assert refused.headers["x-pacifica-message"].startswith("No Space Available")
        kept = client.get(f"{CARTD}/one", params={"filename": "o"})
        assert members(kept.content) == {"o/1": FIRST}
    assert remote.calls[("GET", "second")] == 0


def test_a_local_file_the_requester_may_not_read_is_not_fetched_from_the_remote(
    make_runtime: Callable[..., Runtime], remote: FakeArchive
) -> None:
    runtime = make_runtime(auth="token", pacifica_archive_url=remote.url)
    with runtime.db.session() as session:
        owner = create_token(session, "owner", admin=True).secret
        alice = create_token(session, "alice").secret
    with TestClient(create_app(runtime=runtime)) as client:
        stored = client.put(
            "/pacifica/archive/7",
            content=b"private\n",
            headers={"Authorization": f"Bearer {owner}"},
        )
        assert stored.status_code == 201
        remote.put("7", b"something else entirely\n")
        as_alice = {"Authorization": f"Bearer {alice}"}
        made = client.post(
            f"{CARTD}/a1",
            json={"fileids": [entry("7", b"private\n", "p.txt")]},
            headers=as_alice,
        )
        assert made.status_code == 201
        head = client.head(f"{CARTD}/a1", headers=as_alice)
        assert (head.status_code, head.headers["x-pacifica-status"]) == (500, "error")
        assert "file 7 is not in the archive" in head.headers["x-pacifica-message"]
    assert sum(count for (_method, name), count in remote.calls.items() if name == "7") == 0


def test_a_full_input_cache_disk_fails_that_cart_only(
    make_runtime: Callable[..., Runtime], remote: FakeArchive, tmp_path: Path
) -> None:
    big, small = os.urandom(1536 * 1024), b"fits\n"
    remote.put("big", big)
    remote.put("small", small)
    url = f"file://{tmp_path / 'cache'}"
    with (
        small_filesystem(tmp_path / "cache", "1m") as cache,
        client_for(make_runtime, remote.url, cart_cache_url=url) as client,
    ):
        full = ask(client, "big", entry("big", big, "big.bin"))
        assert full.status_code == 500
        assert full.headers["x-pacifica-message"].startswith("No Space Available")
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        fits = ask(client, "small", entry("small", small, "small.txt"))
        assert fits.headers["x-pacifica-status"] == "ready"
