"""Ingest benchmark: Conveyor over HTTP vs. the floor of `tar -xf` + `sha256sum`.

Two bundles: 200 files making 1 GiB, and 10,000 files of 4 KiB. For each, the floor
extracts the bundle with GNU tar, hashes every file with sha256sum and syncs (what ingest
must do at least: unpack, checksum, make durable); Conveyor receives the same bundle over
HTTP (curl), stores every file in its archive with sha256 (and sha1, which the bundle's
metadata declares), syncs and publishes the transaction. Peak RSS of the server process
is read from /proc.

    .venv/bin/python bench/ingest/run.py [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def floor_seconds(bundle: Path, scratch: Path) -> tuple[float, float]:
    """Seconds for `tar -xf`, `sha256sum` over every file, and `sync`: (without, with sync).

    Conveyor flushes the archive to disk before it publishes a transaction, so the floor
    that matches it includes the `sync`; the time without it is shown as well.
    """
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    os.sync()
    started = time.perf_counter()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(scratch)], check=True)
    subprocess.run(
        f"find {scratch}/data -type f -print0 | xargs -0 sha256sum > /dev/null",
        shell=True,
        check=True,
    )
    unsynced = time.perf_counter() - started
    os.sync()
    return unsynced, time.perf_counter() - started


def conveyor_seconds(bundle: Path, url: str) -> float:
    """Seconds from the first byte sent to the transaction published."""
    os.sync()
    started = time.perf_counter()
    ingest_bundle(bundle, url)
    return time.perf_counter() - started


def main() -> None:
    work, repeat = bench_arguments(__doc__)
    print(
        f"{'case':30} {'floor s':>8} {'+sync s':>8} {'conveyor s':>10} {'ratio':>6} "
        f"{'MB/s':>7} {'files/s':>8} {'RSS MB':>7}"
    )
    for number, (label, (count, size)) in enumerate(CASES.items()):
        tree = make_tree(work / f"tree{number}", count, size)
        bundle = make_bundle(tree, work / f"bundle{number}.tar")
        total = count * size
        bare, floors, ours, peaks = [], [], [], []
        for attempt in range(repeat):
            unsynced, synced = floor_seconds(bundle, work / "floor")
            bare.append(unsynced)
            floors.append(synced)
            data_dir = work / f"server{number}-{attempt}"
            port = 18000 + number * 10 + attempt
            server = start_server(data_dir, port)
            try:
                ours.append(conveyor_seconds(bundle, f"http://127.0.0.1:{port}"))
                peaks.append(peak_rss_mb(server.pid))
            finally:
                server.terminate()
                server.wait()
                shutil.rmtree(data_dir, ignore_errors=True)
        floor, conveyor = statistics.median(floors), statistics.median(ours)
        print(
            f"{label:30} {statistics.median(bare):8.2f} {floor:8.2f} {conveyor:10.2f} "
            f"{floor / conveyor:6.2f} {total / MIB / conveyor:7.0f} {count / conveyor:8.0f} "
            f"{max(peaks):7.0f}"
        )
    shutil.rmtree(work / "floor", ignore_errors=True)


if __name__ == "__main__":
    main()
