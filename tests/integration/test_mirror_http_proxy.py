"""HTTP and HTTPS sources through a forward proxy, over real loopback connections.

The origin is :func:`tests.support.mirror_servers.http_server`; between it and the source sits
:func:`tests.support.http_proxy.forward_proxy`, which logs every request it handles. Each test
checks what the source got *and* that the proxy saw the traffic (a source ignoring its proxy
setting would still reach a loopback origin directly). Only the public source API is used.
"""

from __future__ import annotations

import json
import os
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from conveyor.mirror.errors import SourceError
from conveyor.mirror.sources import open_async_reader, open_source
from conveyor.mirror.spec import Credentials, SourceOptions, SourceSpec
from tests.support.http_proxy import ProxyInfo, SeenRequest, forward_proxy
from tests.support.mirror_servers import ServerInfo, http_server
from tests.support.reading import read_whole
from tests.support.services import free_port

pytestmark = pytest.mark.timeout(30)

MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SMALL = b"alpha\n" * 20
BIG = random.Random(7).randbytes(300_000)  # several proxy relay chunks
USER = "proxyuser"
PASSWORD = "s3cret-Proxy-pw"  # distinctive, so a leak into a message is unmistakable


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small tree with known sizes and times."""
    files = {"a.txt": SMALL, "big.bin": BIG, "sub/c.txt": b"c"}
    for name, data in files.items():
        path = tmp_path / "www" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in (tmp_path / "www").rglob("*"):
        os.utime(path, (MTIME, MTIME))
    return tmp_path / "www"


@pytest.fixture
def proxy() -> Iterator[ProxyInfo]:
    """An authenticating forward proxy (USER / PASSWORD)."""
    with forward_proxy(login=(USER, PASSWORD)) as info:
        yield info


@pytest.fixture
def origin(root: Path) -> Iterator[ServerInfo]:
    """A plain HTTP origin with nginx-style index pages (exact sizes)."""
    with http_server(root, index_style="nginx") as info:
        yield info


@pytest.fixture
def tls_origin(root: Path) -> Iterator[ServerInfo]:
    """An HTTPS origin whose certificate is signed by the test CA (``cafile``)."""
    with http_server(root, tls=True, index_style="nginx") as info:
        yield info


def _spec(
    origin: ServerInfo,
    proxy_url: str,
    login: str | None,
    *,
    method: Literal["GET", "POST"] = "GET",
    params: dict[str, str] | None = None,
) -> SourceSpec:
    tls = origin.cafile is not None
    return SourceSpec(
        protocol="https" if tls else "http",
        server=f"{origin.host}:{origin.port}",
        remote_dir="/",
        proxy=proxy_url,
        proxy_auth=Credentials.parse(login) if login is not None else None,
        options=SourceOptions(ssl_server_cert=str(origin.cafile) if tls else None),
        stall_timeout=10,
        connect_timeout=3,
        method=method,
        params=params or {},
    )


def _forwarded(proxy: ProxyInfo, method: str, origin: ServerInfo, path: str) -> list[SeenRequest]:
    """The requests for ``origin/path`` the proxy forwarded successfully."""
    target = f"{origin.url}{path}"
    return [
        seen
        for seen in proxy.log.entries()
        if seen.method == method and seen.target == target and seen.status < 300
    ]


# --- plain http origin: the proxy forwards absolute-form requests ---------------------------


def test_list_through_proxy(proxy: ProxyInfo, origin: ServerInfo) -> None:
    with open_source(_spec(origin, proxy.url, f"{USER}:{PASSWORD}")) as source:
        entries = {entry.name: entry for entry in source.list("")}

    assert set(entries) >= {"a.txt", "big.bin"}
    assert entries["a.txt"].size == len(SMALL)
    assert entries["big.bin"].size == len(BIG)
    # The index page went through the proxy, with the proxy's login accepted.
    assert _forwarded(proxy, "GET", origin, "/"), proxy.log.entries()
    assert all(seen.status != 407 for seen in proxy.log.entries())


def test_read_through_proxy(proxy: ProxyInfo, origin: ServerInfo) -> None:
    with open_source(_spec(origin, proxy.url, f"{USER}:{PASSWORD}")) as source:
        small = b"".join(source.read("a.txt"))
        big = b"".join(source.read("big.bin"))

    assert small == SMALL
    assert big == BIG
    assert [seen.status for seen in _forwarded(proxy, "GET", origin, "/a.txt")] == [200]
    assert [seen.status for seen in _forwarded(proxy, "GET", origin, "/big.bin")] == [200]


def test_resumed_read_through_proxy(proxy: ProxyInfo, origin: ServerInfo) -> None:
    offset = 123_457
    with open_source(_spec(origin, proxy.url, f"{USER}:{PASSWORD}")) as source:
        rest = b"".join(source.read("big.bin", offset))

    assert rest == BIG[offset:]
    # The proxy forwarded the Range header (the origin saw it) and passed the 206 back.
    assert f"GET /big.bin bytes={offset}-" in origin.faults.requests
    assert [seen.status for seen in _forwarded(proxy, "GET", origin, "/big.bin")] == [206]


def test_stat_through_proxy(proxy: ProxyInfo, origin: ServerInfo) -> None:
    with open_source(_spec(origin, proxy.url, f"{USER}:{PASSWORD}")) as source:
        entry = source.stat("big.bin")

    assert entry.size == len(BIG)
    assert entry.mtime is not None
    assert entry.mtime.timestamp() == MTIME
    assert _forwarded(proxy, "HEAD", origin, "/big.bin"), proxy.log.entries()


def test_post_form_through_proxy(proxy: ProxyInfo, origin: ServerInfo) -> None:
    spec = _spec(origin, proxy.url, f"{USER}:{PASSWORD}", method="POST", params={"release": "42"})
    with open_source(spec) as source:
        answer = json.loads(b"".join(source.read("echo")))

    # The form body crossed the proxy intact.
    assert answer == {"form": {"release": "42"}}
    assert _forwarded(proxy, "POST", origin, "/echo"), proxy.log.entries()


# --- https origin: the proxy tunnels with CONNECT -------------------------------------------


def test_https_origin_through_connect_tunnel(proxy: ProxyInfo, tls_origin: ServerInfo) -> None:
    with open_source(_spec(tls_origin, proxy.url, f"{USER}:{PASSWORD}")) as source:
        names = {entry.name for entry in source.list("")}
        data = b"".join(source.read("big.bin"))

    assert {"a.txt", "big.bin"} <= names
    assert data == BIG
    tunnels = [seen for seen in proxy.log.entries() if seen.method == "CONNECT"]
    assert tunnels, proxy.log.entries()
    assert all(seen.target == f"127.0.0.1:{tls_origin.port}" for seen in tunnels)
    assert all(seen.status == 200 for seen in tunnels)
    # Nothing went in the clear: a CONNECT tunnel carries https, never absolute-form GETs.
    assert proxy.log.count("GET") == 0


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http-origin", "https-origin"])
@pytest.mark.parametrize(
    "login", [f"{USER}:wrong-{PASSWORD}", None], ids=["wrong-password", "no-login"]
)
def test_proxy_refuses_login(proxy: ProxyInfo, root: Path, tls: bool, login: str | None) -> None:
    with http_server(root, tls=tls, index_style="nginx") as info:
        spec = _spec(info, proxy.url, login)
        with open_source(spec) as source, pytest.raises(SourceError) as caught:
            b"".join(source.read("a.txt"))

    message = str(caught.value)
    assert "407" in message or "proxy authentication" in message.lower(), message
    # Neither the message nor the whole printed error shows the password given (the wrong
    # one contains PASSWORD, so one check covers both).
    printed = "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in printed, printed
    assert PASSWORD not in repr(caught.value)
    assert proxy.log.entries()
    assert all(seen.status == 407 for seen in proxy.log.entries())
    # The origin never saw the request.
    assert info.faults.requests == []


def test_proxy_not_listening(origin: ServerInfo) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    spec = _spec(origin, nobody, f"{USER}:{PASSWORD}")
    start = time.monotonic()
    with open_source(spec) as source, pytest.raises(SourceError) as caught:
        list(source.list(""))

    assert time.monotonic() - start < 5
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))
    # The source did not fall back to reaching the origin directly.
    assert origin.faults.requests == []


# --- the event-loop reader ------------------------------------------------------------------


@pytest.fixture
def open_proxy() -> Iterator[ProxyInfo]:
    """A forward proxy that asks for no login."""
    with forward_proxy() as info:
        yield info


def test_the_loop_reader_goes_through_the_proxy(
    open_proxy: ProxyInfo, origin: ServerInfo, tls_origin: ServerInfo
) -> None:
    plain = _spec(origin, open_proxy.url, None)
    assert read_whole(plain, "a.txt", loop=True) == SMALL
    assert read_whole(plain, "big.bin", 123_457, loop=True) == BIG[123_457:]
    form = _spec(origin, open_proxy.url, None, method="POST", params={"release": "42"})
    assert json.loads(read_whole(form, "echo", loop=True)) == {"form": {"release": "42"}}
    assert read_whole(_spec(tls_origin, open_proxy.url, None), "big.bin", loop=True) == BIG

    assert [seen.status for seen in _forwarded(open_proxy, "GET", origin, "/a.txt")] == [200]
    assert [seen.status for seen in _forwarded(open_proxy, "GET", origin, "/big.bin")] == [206]
    assert "GET /big.bin bytes=123457-" in origin.faults.requests
    assert _forwarded(open_proxy, "POST", origin, "/echo")
    tunnels = [seen for seen in open_proxy.log.entries() if seen.method == "CONNECT"]
    assert [seen.target for seen in tunnels] == [f"127.0.0.1:{tls_origin.port}"]


def test_the_loop_reader_does_not_bypass_a_dead_proxy(origin: ServerInfo) -> None:
    spec = _spec(origin, f"http://127.0.0.1:{free_port()}", None)
    with pytest.raises(SourceError, match="proxy"):
        read_whole(spec, "a.txt", loop=True)
    assert origin.faults.requests == []


def test_a_proxy_login_is_left_to_the_threaded_source(origin: ServerInfo) -> None:
    # aiohttp 3 sends a proxy login on plain requests, tunnels and after redirects alike only
    # through its deprecated proxy_auth; the threaded source does all three.
    assert open_async_reader(_spec(origin, "http://127.0.0.1:1", f"{USER}:{PASSWORD}"), 2) is None
    assert open_async_reader(_spec(origin, "http://127.0.0.1:1", None), 2) is not None


@pytest.mark.parametrize("tls", [False, True], ids=["http-origin", "https-origin"])
def test_the_loop_reader_takes_a_proxy_refusal_as_permanent(
    proxy: ProxyInfo, root: Path, tls: bool
) -> None:
    with http_server(root, tls=tls, index_style="nginx") as info:
        with pytest.raises(SourceError, match="407") as caught:
            read_whole(_spec(info, proxy.url, None), "a.txt", loop=True)
        assert info.faults.requests == []
    assert caught.value.permanent
