"""Carts benchmark: downloads vs. the floor of `tar -cf -` and `zip -0` over the same files.

Two data sets: 200 files making 1 GiB, and 10,000 files of 4 KiB. Each is ingested once into
a `conveyor serve` on the embedded default; then a tar cart and a zip cart of the whole
transaction are downloaded with curl to /dev/null (time to first byte and total), next to
`tar -cf - DIR | cat > /dev/null` and `zip -0 -r -q - DIR > /dev/null` on the same files.
Page cache is warm for both sides (both read files the previous step just wrote or read).
Stream carts first, then build carts (the time from the request to `ready`, which includes
writing the bundle once, is shown as "build s"; the download then reads the bundle store).
Last, a 10 GiB stream tar (one 256 MiB file at 40 paths) on a new server checks memory.

    .venv/bin/python bench/carts/run.py [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (
    CASES,
    MIB,
    bench_arguments,
    ingest_bundle,
    make_bundle,
    make_tree,
    peak_rss_mb,
    start_server,
)

FLOORS = {
    "tar": "tar -cf - -C {parent} {name} | cat > /dev/null",
    "zip": "cd {parent} && zip -0 -r -q - {name} > /dev/null",
}


def floor_seconds(fmt: str, tree: Path) -> float:
    """Seconds for the reference tool to write the same files as one stream."""
    command = FLOORS[fmt].format(parent=tree.parent, name=tree.name)
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True)
    return time.perf_counter() - started


def download(url: str) -> tuple[float, float, int]:
    """(time to first byte, total seconds, bytes) of a curl download to /dev/null."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{time_starttransfer} %{time_total} %{size_download}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    first, total, size = result.stdout.split()
    return float(first), float(total), int(size)


def ready_cart(url: str, request: dict[str, object]) -> dict[str, object]:
    """Ask for a cart and wait until it is ready."""
    cart: dict[str, object] = httpx.post(f"{url}/api/v1/carts", json=request, timeout=120).json()
    while cart["status"] != "ready":
        if cart["status"] == "error":
            raise RuntimeError(f"cart failed: {cart}")
        time.sleep(0.05)
        cart = httpx.get(f"{url}/api/v1/carts/{cart['id']}", timeout=30).json()
    return cart


def huge_bundle(url: str, server_pid: int) -> None:
    """Stream a 10 GiB tar (one 256 MiB file at 40 paths) and report the server's peak RSS."""

    def random_chunks() -> Iterator[bytes]:
        for _ in range(256):
            yield os.urandom(MIB)

    httpx.put(f"{url}/pacifica/archive/huge", content=random_chunks(), timeout=600)
    file_id = huge_file_id(url)
    files = [{"id": file_id, "path": f"copy{n:02d}/huge.bin"} for n in range(40)]
    cart = ready_cart(url, {"files": files})
    first, total, got = download(f"{url}{cart['bundle']}")
    if got != cart["bytes_total"]:
        raise RuntimeError(f"downloaded {got} of {cart['bytes_total']} bytes")
    print(
        f"10 GiB stream tar: {got / MIB / total:.0f} MB/s, first byte {1000 * first:.1f} ms, "
        f"server peak RSS {peak_rss_mb(server_pid):.0f} MB"
    )


def huge_file_id(url: str) -> int:
    """The file id of the archive id ``huge`` (the newest transaction holds it)."""
    listed = httpx.get(f"{url}/api/v1/transactions?limit=1000", timeout=30).json()
    newest = listed["transactions"][-1]["id"]
    files = httpx.get(f"{url}/api/v1/transactions/{newest}", timeout=30).json()["files"]
    return int(files[0]["id"])


def main() -> None:
    work, repeat = bench_arguments(__doc__)
    print(
        f"{'case':26} {'mode':6} {'fmt':4} {'floor s':>8} {'conveyor s':>10} {'ratio':>6} "
        f"{'MB/s':>7} {'TTFB ms':>8} {'build s':>8} {'RSS MB':>7}"
    )
    data_dir = work / "server"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = start_server(data_dir, 18100)
    url = "http://127.0.0.1:18100"
    try:
        for number, (label, (count, size)) in enumerate(CASES.items()):
            tree = make_tree(work / f"tree{number}", count, size)
            job = ingest_bundle(make_bundle(tree, work / f"bundle{number}.tar"), url)
            for mode, fmt in (("stream", "tar"), ("stream", "zip"), ("build", "tar")):
                started = time.perf_counter()
                cart = ready_cart(
                    url, {"transactions": [job["transaction_id"]], "format": fmt, "mode": mode}
                )
                built = time.perf_counter() - started if mode == "build" else float("nan")
                floors, totals, firsts = [], [], []
                for _ in range(repeat):
                    floors.append(floor_seconds(fmt, tree))
                    first, total, got = download(f"{url}{cart['bundle']}")
                    if got != cart["bytes_total"]:
                        raise RuntimeError(f"downloaded {got} of {cart['bytes_total']} bytes")
                    firsts.append(first)
                    totals.append(total)
                floor, ours = statistics.median(floors), statistics.median(totals)
                print(
                    f"{label:26} {mode:6} {fmt:4} {floor:8.2f} {ours:10.2f} {floor / ours:6.2f} "
                    f"{cart['bytes_total'] / MIB / ours:7.0f} "
                    f"{1000 * statistics.median(firsts):8.1f} {built:8.2f} "
                    f"{peak_rss_mb(server.pid):7.0f}"
                )
    finally:
        server.terminate()
        server.wait()
    huge_on_a_new_server(work)


def huge_on_a_new_server(work: Path) -> None:
    """The 10 GiB stream on a server that has done nothing else, so its peak RSS is that
    stream's (the run above leaves the first server larger: its caches, its allocator)."""
    data_dir = work / "server-huge"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = start_server(data_dir, 18101)
    try:
        print(f"new server, idle: RSS {peak_rss_mb(server.pid):.0f} MB")
        huge_bundle("http://127.0.0.1:18101", server.pid)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
