"""Self-test of the loopback mirror servers: each lists, serves, resumes and misbehaves on cue."""

from __future__ import annotations

import calendar
import ftplib
import os
import re
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import paramiko
import pytest

from tests.support.mirror_servers import (
    IndexStyle,
    ServerInfo,
    _apache_size,
    ftp_server,
    http_server,
    sftp_server,
)

BIG = os.urandom(200_000)
MTIME = calendar.timegm((2024, 1, 3, 10, 22, 0))  # 03-Jan-2024 10:22 UTC, as in the examples


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Every server thread is gone once its context manager has exited."""
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("mirror-")]
    assert left == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """pub/f.gz (1234 bytes), pub/sub/x y.txt, a/b.gz (200 kB), hello.txt; all dated MTIME."""
    root = tmp_path / "root"
    (root / "pub" / "sub").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "pub" / "f.gz").write_bytes(b"z" * 1234)
    (root / "pub" / "sub" / "x y.txt").write_text("spaced\n")
    (root / "a" / "b.gz").write_bytes(BIG)
    (root / "hello.txt").write_text("hello\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (MTIME, MTIME))
    return root


def collect(chunks: Iterable[bytes], into: bytearray) -> None:
    """Append chunks to ``into`` until they end (or the read fails, keeping what came)."""
    for chunk in chunks:
        into.extend(chunk)


# --- FTP ---------------------------------------------------------------------------------------


def ftp_login(info: ServerInfo, timeout: float = 5.0) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(info.host, info.port)
        ftp.login(info.user or "anonymous", info.password or "")
    except BaseException:
        ftp.close()
        raise
    return ftp


def retr(ftp: ftplib.FTP, path: str, rest: int | None = None) -> bytes:
    data = bytearray()
    ftp.retrbinary(f"RETR {path}", data.extend, rest=rest)
    return bytes(data)


def test_ftp_lists_fetches_and_resumes(tree: Path) -> None:
    with ftp_server(tree) as info:
        ftp = ftp_login(info)
        facts = dict(ftp.mlsd("a"))
        assert facts["b.gz"]["size"] == str(len(BIG))
        assert facts["b.gz"]["modify"] == "20240103102200"
        assert retr(ftp, "a/b.gz") == BIG
        assert retr(ftp, "a/b.gz", rest=1000) == BIG[1000:]
        ftp.voidcmd("TYPE I")
        assert ftp.size("a/b.gz") == len(BIG)
        assert ftp.sendcmd("MDTM a/b.gz") == "213 20240103102200"
        with pytest.raises(ftplib.error_perm):
            ftp.mkd("new")  # read-only
        ftp.quit()
    requests = info.faults.requests
    assert requests[:2] == ["USER user", "PASS ******"]
    assert requests[requests.index("REST 1000") + 1] == "RETR a/b.gz"  # resumed at 1000


def test_ftp_anonymous_login(tree: Path) -> None:
    with ftp_server(tree, anonymous=True) as info:
        ftp = ftplib.FTP(timeout=5)
        ftp.connect(info.host, info.port)
        ftp.login()  # anonymous
        assert retr(ftp, "hello.txt") == b"hello\n"
        ftp.quit()


def test_ftp_msdos_listing(tree: Path) -> None:
    with ftp_server(tree, listing="msdos") as info:
        ftp = ftp_login(info)
        lines: list[str] = []
        ftp.retrlines("LIST pub", lines.append)
        assert ftp.sendcmd("SYST") == "215 Windows_NT"
        ftp.quit()
    assert lines == [
        "01-03-24  10:22AM                 1234 f.gz",
        "01-03-24  10:22AM       <DIR>          sub",
    ]


def test_ftps_requires_tls_and_verifies_with_the_cafile(tree: Path) -> None:
    with ftp_server(tree, tls=True) as info:
        assert info.scheme == "ftps" and info.cafile is not None
        with pytest.raises(ftplib.error_perm, match="550"):
            ftp_login(info)  # no AUTH TLS first
        context = ssl.create_default_context(cafile=str(info.cafile))
        ftps = ftplib.FTP_TLS(context=context, timeout=5)
        ftps.connect(info.host, info.port)
        ftps.login(info.user or "", info.password or "")
        ftps.prot_p()
        assert "b.gz" in ftps.nlst("a")
        assert retr(ftps, "a/b.gz") == BIG
        ftps.quit()


def test_ftp_refuses_with_421_then_accepts(tree: Path) -> None:
    with ftp_server(tree) as info:
        info.faults.refuse_connections = 1
        with pytest.raises(ftplib.error_temp, match="421"):
            ftp_login(info)
        ftp = ftp_login(info)
        ftp.quit()
        assert info.faults.refuse_connections == 0


def test_ftp_cut_once_after_n_bytes(tree: Path) -> None:
    with ftp_server(tree) as info:
        info.faults.cut_after["a/b.gz"] = 5000
        ftp = ftp_login(info)
        received = bytearray()
        with pytest.raises(ftplib.error_temp, match="426"):
            ftp.retrbinary("RETR a/b.gz", received.extend)
        assert bytes(received) == BIG[:5000]
        assert info.faults.cut_after == {}
        assert retr(ftp, "a/b.gz", rest=5000) == BIG[5000:]  # resumed, and only once cut
        ftp.quit()


def test_ftp_stall_times_out_and_does_not_hold_shutdown(tree: Path) -> None:
    with ftp_server(tree) as info:
        info.faults.stall_after["a/b.gz"] = 5000
        info.faults.stall_seconds = 3
        ftp = ftp_login(info, timeout=1.0)
        ftp.voidcmd("TYPE I")
        data = ftp.transfercmd("RETR a/b.gz")  # held open through the shutdown
        received = bytearray()
        with pytest.raises(TimeoutError):
            collect(iter(lambda: data.recv(65536), b""), received)
        assert bytes(received) == BIG[:5000]
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0  # stall_seconds is 3
    data.close()
    ftp.close()


# --- HTTP --------------------------------------------------------------------------------------


def test_apache_sizes_round_like_apr_strfsize() -> None:
    assert [_apache_size(n) for n in (-1, 0, 972, 973, 1234, 10 * 1024, 200_000, 5 * 2**30)] == [
        "  - ",
        "  0 ",
        "972 ",
        "1.0K",
        "1.2K",
        " 10K",
        "195K",
        "5.0G",
    ]


def test_http_files_ranges_and_validators(tree: Path) -> None:
    with http_server(tree) as info, httpx.Client(base_url=info.url) as client:
        full = client.get("/a/b.gz")
        assert full.status_code == 200 and full.content == BIG
        assert full.headers["content-length"] == str(len(BIG))
        assert full.headers["last-modified"] == "Wed, 03 Jan 2024 10:22:00 GMT"
        assert full.headers["accept-ranges"] == "bytes"
        etag = full.headers["etag"]
        assert etag.startswith('"')

        head = client.head("/a/b.gz")
        assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""

        part = client.get("/a/b.gz", headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == BIG[1000:]
        assert part.headers["content-range"] == f"bytes 1000-{len(BIG) - 1}/{len(BIG)}"
        middle = client.get("/a/b.gz", headers={"Range": "bytes=10-19", "If-Range": etag})
        assert middle.status_code == 206 and middle.content == BIG[10:20]
        dated = {"Range": "bytes=10-", "If-Range": full.headers["last-modified"]}
        assert client.get("/a/b.gz", headers=dated).status_code == 206
        changed = client.get("/a/b.gz", headers={"Range": "bytes=10-", "If-Range": '"other"'})
        assert changed.status_code == 200 and changed.content == BIG

        past = client.get("/a/b.gz", headers={"Range": f"bytes={len(BIG)}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{len(BIG)}"
        assert client.get("/missing").status_code == 404
        folder = client.get("/pub")
        assert folder.status_code == 301 and folder.headers["location"] == "/pub/"
    assert "GET /a/b.gz bytes=1000-" in info.faults.requests
    assert "HEAD /a/b.gz" in info.faults.requests
    assert "GET /a/b.gz -" in info.faults.requests


INDEX_EXPECTED: dict[str, list[str]] = {
    "apache": [
        '<img src="/icons/folder.gif" alt="[DIR]"> <a href="sub/">sub/</a>'
        "                    03-Jan-2024 10:22    -   \n",
        '<img src="/icons/unknown.gif" alt="[   ]"> <a href="f.gz">f.gz</a>'
        "                    03-Jan-2024 10:22  1.2K  \n",
        '<a href="/">Parent Directory</a>',
    ],
    "apache_table": [
        '<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td>'
        '<a href="sub/">sub/</a></td><td align="right">2024-01-03 10:22  </td>'
        '<td align="right">  - </td><td>&nbsp;</td></tr>',
        '<a href="f.gz">f.gz</a></td><td align="right">2024-01-03 10:22  </td>'
        '<td align="right">1.2K</td>',
    ],
    "nginx": [
        '<a href="sub/">sub/</a>' + " " * 46 + " 03-Jan-2024 10:22" + " " * 19 + "-\r\n",
        '<a href="f.gz">f.gz</a>' + " " * 46 + " 03-Jan-2024 10:22" + " " * 16 + "1234\r\n",
    ],
    "iis": [
        '<pre><A HREF="/">[To Parent Directory]</A><br><br>',
        '1/3/2024 10:22 AM        &lt;dir&gt; <A HREF="/pub/sub/">sub</A><br>',
        '1/3/2024 10:22 AM         1234 <A HREF="/pub/f.gz">f.gz</A><br>',
    ],
    "simple": ['<ul>\n<li><a href="f.gz">f.gz</a></li>\n<li><a href="sub/">sub/</a></li>\n</ul>'],
}


@pytest.mark.parametrize("style", list(INDEX_EXPECTED))
def test_http_index_styles(tree: Path, style: IndexStyle) -> None:
    with http_server(tree, index_style=style) as info, httpx.Client(base_url=info.url) as client:
        page = client.get("/pub/")
        quoted = client.get("/pub/sub/").text
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for snippet in INDEX_EXPECTED[style]:
        assert snippet in page.text
    assert "x%20y.txt" in quoted


def test_http_index_is_streamed_in_chunks(tmp_path: Path) -> None:
    names = [f"file-{i:05d}.dat" for i in range(3000)]
    for name in names:
        (tmp_path / name).touch()
    with http_server(tmp_path, index_style="nginx") as info:
        page = httpx.get(f"{info.url}/")
    assert page.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in page.headers
    assert re.findall(r'<a href="(file-[^"]+)">', page.text) == names


def test_http_redirects_echo_and_no_head(tree: Path) -> None:
    redirects = {"/old/": "/pub/", "/away": "https://example.invalid/x"}
    with http_server(tree, redirects=redirects) as info, httpx.Client(base_url=info.url) as client:
        moved = client.get("/old/")
        assert moved.status_code == 302 and moved.headers["location"] == "/pub/"
        assert client.get("/away").headers["location"] == "https://example.invalid/x"
        assert client.get("/old/", follow_redirects=True).url.path == "/pub/"
        assert client.get("/echo", params={"q": "a b", "n": "1"}).json() == {
            "args": {"q": "a b", "n": "1"}
        }
        assert client.post("/echo", data={"user": "x", "pw": "y"}).json() == {
            "form": {"user": "x", "pw": "y"}
        }
        assert client.head("/no-head/a/b.gz").status_code == 405
        got = client.get("/no-head/a/b.gz")
        assert got.status_code == 200 and got.content == BIG


def test_http_basic_auth(tree: Path) -> None:
    with http_server(tree, basic_auth=("me", "pw")) as info:
        assert (info.user, info.password) == ("me", "pw")
        refused = httpx.get(f"{info.url}/hello.txt")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(f"{info.url}/hello.txt", auth=("me", "bad")).status_code == 401
        assert httpx.get(f"{info.url}/hello.txt", auth=("me", "pw")).text == "hello\n"


def test_http_503_and_429_with_retry_after(tree: Path) -> None:
    with http_server(tree) as info, httpx.Client(base_url=info.url) as client:
        info.faults.refuse_connections = 1
        info.faults.too_many_requests = 1
        first, second, third = (client.get("/hello.txt") for _ in range(3))
    assert (first.status_code, first.headers["retry-after"]) == (503, "1")
    assert (second.status_code, second.headers["retry-after"]) == (429, "1")
    assert third.status_code == 200
    assert info.faults.requests == ["GET /hello.txt -"] * 3


def test_http_cut_once_after_n_bytes(tree: Path) -> None:
    with http_server(tree) as info, httpx.Client(base_url=info.url) as client:
        info.faults.cut_after["a/b.gz"] = 5000
        received = bytearray()
        with client.stream("GET", "/a/b.gz") as reply:
            assert reply.headers["content-length"] == str(len(BIG))  # promised in full
            with pytest.raises(httpx.RemoteProtocolError):
                collect(reply.iter_bytes(), received)
        assert bytes(received) == BIG[:5000]
        resumed = client.get("/a/b.gz", headers={"Range": "bytes=5000-"})
        assert resumed.content == BIG[5000:]


def test_https_and_a_stall_that_does_not_hold_shutdown(tree: Path) -> None:
    with http_server(tree, tls=True) as info:
        assert info.url.startswith("https://") and info.cafile is not None
        context = ssl.create_default_context(cafile=str(info.cafile))
        with httpx.Client(base_url=info.url, verify=context, timeout=1.0) as client:
            assert client.get("/a/b.gz").content == BIG
            info.faults.stall_after["a/b.gz"] = 5000
            info.faults.stall_seconds = 3
            received = bytearray()
            with client.stream("GET", "/a/b.gz") as reply, pytest.raises(httpx.ReadTimeout):
                collect(reply.iter_bytes(), received)
            assert bytes(received) == BIG[:5000]
        stopping = time.monotonic()  # the server thread is still parked in the stall
    assert time.monotonic() - stopping < 2.0


# --- SFTP --------------------------------------------------------------------------------------


@contextmanager
def sftp_client(info: ServerInfo, folder: Path) -> Iterator[paramiko.SFTPClient]:
    """Paramiko trusting only the server's known_hosts line."""
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"{info.known_hosts_line}\n")
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(known_hosts))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(
        info.host,
        port=info.port,
        username=info.user,
        password=info.password,
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    try:
        yield ssh.open_sftp()
    finally:
        ssh.close()


def test_sftp_lists_fetches_and_resumes(tree: Path, tmp_path: Path) -> None:
    with sftp_server(tree) as info:
        assert info.known_hosts_line is not None
        assert info.known_hosts_line.startswith(f"[127.0.0.1]:{info.port} ssh-ed25519 AAAA")
        with sftp_client(info, tmp_path) as sftp:
            assert sorted(sftp.listdir("/")) == ["a", "hello.txt", "pub"]
            attrs = sftp.stat("a/b.gz")
            assert (attrs.st_size, attrs.st_mtime) == (len(BIG), MTIME)
            sftp.get("/a/b.gz", str(tmp_path / "b.gz"))
            assert (tmp_path / "b.gz").read_bytes() == BIG
            with sftp.open("a/b.gz") as handle:
                handle.seek(150_000)
                assert handle.read() == BIG[150_000:]
            with pytest.raises(PermissionError):
                sftp.open("new.txt", "w")
    assert "READ a/b.gz 150000" in info.faults.requests


def test_sftp_cut_once_after_n_bytes(tree: Path, tmp_path: Path) -> None:
    with sftp_server(tree) as info:
        info.faults.cut_after["a/b.gz"] = 5000
        with (
            sftp_client(info, tmp_path) as sftp,
            sftp.open("a/b.gz") as handle,
            pytest.raises((paramiko.SSHException, EOFError, OSError)),
        ):
            handle.read(40_000)  # a short read of 5000 bytes, then the connection drops
        assert info.faults.requests == ["READ a/b.gz 0", "READ a/b.gz 5000"]
        assert info.faults.cut_after == {}
        with sftp_client(info, tmp_path) as sftp, sftp.open("a/b.gz") as handle:
            handle.seek(5000)
            assert handle.read() == BIG[5000:]


def test_sftp_stall_times_out_and_does_not_hold_shutdown(tree: Path, tmp_path: Path) -> None:
    with ExitStack() as clients:
        with sftp_server(tree) as info:
            info.faults.stall_after["a/b.gz"] = 5000
            info.faults.stall_seconds = 3
            sftp = clients.enter_context(sftp_client(info, tmp_path))  # outlives the server
            channel = sftp.get_channel()
            assert channel is not None
            channel.settimeout(1.0)
            handle = sftp.open("a/b.gz")
            assert handle.read(5000) == BIG[:5000]
            with pytest.raises(TimeoutError):
                handle.read(100)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2.0
