"""The floor of a Python client: fetch known files with 4 threads, write them, nothing else.

No listing, no hashing, no resume or checks, no archive or database: ftplib or urllib3 (the
libraries Conveyor's FTP and HTTP sources use), one connection a thread, each file written
to its own new file. What any threaded Python mirror on this machine can at best reach;
run as a process of its own, so it shares no interpreter with the benchmark's servers.
``http-async`` does the same with 4 connections on one asyncio loop (aiohttp on uvloop,
both already among Conveyor's locked dependencies): one thread, so no interpreter lock
handed between transfer threads around every system call.

    python bench/mirror/floor.py PROTOCOL HOST PORT USER PASSWORD LIST DEST

LIST holds one ``path<TAB>size`` line a file (the size is not used here).
"""

from __future__ import annotations

import asyncio
import ftplib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

THREADS = 4
READ_SIZE = 1024 * 1024


def ftp_worker(host: str, port: int, user: str, password: str) -> Callable[[str, Path], None]:
    """A fetch over this thread's own FTP connection."""
    local = threading.local()

    def fetch(path: str, target: Path) -> None:
        ftp = getattr(local, "ftp", None)
        if ftp is None:
            ftp = local.ftp = ftplib.FTP()
            ftp.connect(host, port)
            ftp.login(user, password)
            ftp.voidcmd("TYPE I")
        with target.open("wb") as out, ftp.transfercmd(f"RETR /{path}") as data:
            while chunk := data.recv(READ_SIZE):
                out.write(chunk)
        ftp.voidresp()

    return fetch


def http_worker(host: str, port: int) -> Callable[[str, Path], None]:
    """A fetch through one pool of kept-alive connections, one a thread."""
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=THREADS)

    def fetch(path: str, target: Path) -> None:
        response = pool.request("GET", f"/{path}", preload_content=False, decode_content=False)
        with target.open("wb") as out:
            while chunk := response.read1(READ_SIZE):
                out.write(chunk)
        response.release_conn()

    return fetch


def http_async(host: str, port: int, paths: list[str], root: Path) -> None:
    """Every file over 4 kept-alive connections driven by one event loop."""
    # Imported here: the threaded floors would otherwise pay for loading them.
    import aiohttp
    import uvloop

    async def fetch_all() -> None:
        queue = list(reversed(paths))
        connector = aiohttp.TCPConnector(limit=THREADS)
        async with aiohttp.ClientSession(
            f"http://{host}:{port}", connector=connector, auto_decompress=False
        ) as session:

            async def worker() -> None:
                while queue:
                    path = queue.pop()
                    async with session.get(f"/{path}") as response:
                        response.raise_for_status()
                        out = os.open(root / path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
                        try:
                            async for chunk in response.content.iter_any():
                                os.write(out, chunk)
                        finally:
                            os.close(out)

            await asyncio.gather(*(worker() for _ in range(THREADS)))

    uvloop.run(fetch_all())


def main() -> None:
    protocol, host, port, user, password, listing, dest = sys.argv[1:8]
    paths = [line.split("\t", 1)[0] for line in Path(listing).read_text().splitlines()]
    root = Path(dest)
    for folder in {path.rpartition("/")[0] for path in paths}:
        (root / folder).mkdir(parents=True, exist_ok=True)
    if protocol == "http-async":
        http_async(host, int(port), paths, root)
        return
    if protocol == "ftp":
        fetch = ftp_worker(host, int(port), user, password)
    else:
        fetch = http_worker(host, int(port))
    with ThreadPoolExecutor(THREADS) as pool:
        for done in [pool.submit(fetch, path, root / path) for path in paths]:
            done.result()


if __name__ == "__main__":
    main()
