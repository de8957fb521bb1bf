"""Carts benchmark: stream-mode downloads vs. the floor of `tar -cf -` and `zip -0` over the files.

Two data sets: 200 files making 1 GiB, and 10,000 files of 4 KiB. Each is ingested once into
a `conveyor serve` on the embedded default; then a tar cart and a zip cart of the whole
transaction are downloaded with curl to /dev/null (time to first byte and total), next to
`tar -cf - DIR | cat > /dev/null` and `zip -0 -r -q - DIR > /dev/null` on the same files.
Page cache is warm for both sides (both read files the previous step just wrote or read).

    .venv/bin/python bench/carts/run.py [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
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


def main() -> None:
    work, repeat = bench_arguments(__doc__)
    print(
        f"{'case':26} {'fmt':4} {'floor s':>8} {'conveyor s':>10} {'ratio':>6} "
        f"{'MB/s':>7} {'TTFB ms':>8} {'RSS MB':>7}"
    )
    data_dir = work / "server"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = start_server(data_dir, 18100)
    url = "http://127.0.0.1:18100"
    try:
        for number, (label, (count, size)) in enumerate(CASES.items()):
            tree = make_tree(work / f"tree{number}", count, size)
            job = ingest_bundle(make_bundle(tree, work / f"bundle{number}.tar"), url)
            for fmt in ("tar", "zip"):
                cart = httpx.post(
                    f"{url}/api/v1/carts",
                    json={"transactions": [job["transaction_id"]], "format": fmt},
                    timeout=120,
                ).json()
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
                    f"{label:26} {fmt:4} {floor:8.2f} {ours:10.2f} {floor / ours:6.2f} "
                    f"{cart['bytes_total'] / MIB / ours:7.0f} "
                    f"{1000 * statistics.median(firsts):8.1f} {peak_rss_mb(server.pid):7.0f}"
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
