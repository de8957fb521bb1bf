"""Consumer benchmark: what Conveyor adds around each consumer run, with its venv reused.

`conveyor serve` on the embedded default runs two consumers, one after the other:

- **minimal**: `__main__.py` copies its one input file to `DST/uploads`; the runner
  publishes it;
- **seed example**: Pacifica's published example (`tests/support/seed_consumer`):
  imports jsonpath2 and the stand-in libraries, upper-cases the text file and publishes
  it itself through the ingest API.

For each, N single-file transactions are uploaded one at a time; for each, the time from
the input transaction's commit to the end of its consumer run (its output published) is
read from the API. The reference is the same entry point run directly on the same layout
(`venv/bin/python __main__.py SRC DST`, no Conveyor). Overhead = Conveyor's median minus
the direct run's median.

    .venv/bin/python bench/consumers/run.py [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import bench_arguments, start_server

from conveyor.client.api import ConveyorClient
from conveyor.client.bundler import BundleStream, collect, metadata_fields

PORT = 18660
URL = f"http://127.0.0.1:{PORT}"
SEED = Path(__file__).resolve().parents[2] / "tests" / "support" / "seed_consumer"
MINIMAL_MAIN = b"""import shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in (src / "downloads").rglob("*"):
    if path.is_file():
        target = dst / "uploads" / path.relative_to(src / "downloads")
        shutil.copyfile(path, target)
"""


def only_project(project: str) -> bytes:
    """A jsonpath2 filter matching new transactions of ``project``."""
    return (
        '$[?(@["eventType"] = "org.pacifica.metadata.ingest")]["data"][*]'
        f'[?(@["destinationTable"] = "Transactions.project" and @["value"] = "{project}")]'
    ).encode()


def package(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def seed_members() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in SEED.iterdir() if path.name != "README.md"}


def install(client: ConveyorClient, name: str, body: bytes) -> dict[str, Any]:
    created = client.request(
        "POST",
        "/api/v1/consumers",
        params={"name": name},
        content=body,
        headers={"Content-Type": "application/zip"},
    )
    client.wait(int(created["job_id"]))
    shown: dict[str, Any] = client.request("GET", f"/api/v1/consumers/{name}")
    if shown["state"] != "ready":
        raise SystemExit(f"consumer {name} is {shown['state']}: {shown['error']}")
    return shown


def upload(client: ConveyorClient, folder: Path, project: str) -> int:
    stream = BundleStream(collect([folder]), metadata_fields(project, "bench-instrument", [], None))
    job = client.wait(int(client.upload(stream.chunks(), stream.length())["id"]))
    return int(job["transaction_id"])


def run_of(client: ConveyorClient, seen: set[int]) -> dict[str, Any]:
    """The next consumer run to finish that was not seen before."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = client.request("GET", "/api/v1/jobs", params={"kind": "consumer.run", "limit": 20})
        for job in jobs["jobs"]:
            if job["id"] not in seen and job["state"] in ("succeeded", "failed"):
                seen.add(job["id"])
                if job["state"] != "succeeded":
                    raise SystemExit(f"run {job['id']} failed at {job['task']}: {job['error']}")
                return job  # type: ignore[no-any-return]
        time.sleep(0.01)
    raise SystemExit("no consumer run finished within 120 s")


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def through_conveyor(client: ConveyorClient, work: Path, project: str, count: int) -> list[float]:
    """Seconds from each input's commit to its run's end (the output published)."""
    earlier = client.request("GET", "/api/v1/jobs", params={"kind": "consumer.run", "limit": 1000})
    seen = {int(job["id"]) for job in earlier["jobs"]}
    folder = work / "input"
    spent: list[float] = []
    for index in range(count):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "note.txt").write_text(f"event {index}: some text to copy\n")
        transaction_id = upload(client, folder, project)
        job = run_of(client, seen)
        given = client.request("GET", f"/api/v1/transactions/{transaction_id}")
        spent.append(stamp(job["finished_at"]) - stamp(given["created_at"]))
    return spent


def direct(venv_python: Path, code: Path, work: Path, count: int) -> list[float]:
    """The entry point alone, on a prepared layout, as the floor."""
    spent: list[float] = []
    # What the seed example reads: the transaction's attributes and a text/plain file.
    document = {
        "data": [
            {"destinationTable": "Transactions._id", "value": 1},
            {"destinationTable": "Transactions.instrument", "value": "bench-instrument"},
            {"destinationTable": "Transactions.proposal", "value": "p-direct"},
            {"destinationTable": "Transactions.submitter", "value": "bench"},
            {
                "destinationTable": "Files",
                "_id": 1,
                "subdir": "in",
                "name": "n.txt",
                "mimetype": "text/plain",
            },
        ]
    }
    for _ in range(count):
        root = work / "direct"
        shutil.rmtree(root, ignore_errors=True)
        (root / "SRC" / "downloads" / "in").mkdir(parents=True)
        (root / "DST" / "uploads" / "in").mkdir(parents=True)
        (root / "SRC" / "notification.json").write_text(json.dumps(document))
        (root / "SRC" / "downloads" / "in" / "n.txt").write_text("some text to copy\n")
        started = time.perf_counter()
        subprocess.run(
            [str(venv_python), "__main__.py", str(root / "SRC"), str(root / "DST")],
            cwd=code,
            check=True,
            env={"PATH": os.environ["PATH"], "CONVEYOR_URL": URL},
        )
        spent.append(time.perf_counter() - started)
    return spent


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    work, repeat = bench_arguments(__doc__)
    count = 10 * repeat
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    server = start_server(data, PORT)
    rows = []
    try:
        with ConveyorClient(URL, timeout=600) as client:
            cases = {
                "minimal": {"__main__.py": MINIMAL_MAIN, "jsonpath2.txt": only_project("p-min")},
                "seed example": seed_members(),
            }
            for label, members in cases.items():
                project = "p-min" if label == "minimal" else "p-seed"
                shown = install(client, label.replace(" ", "-"), package(members))
                home = data / "consumers" / shown["sha256"][:32]
                through = through_conveyor(client, work, project, count)
                client.request("DELETE", f"/api/v1/consumers/{shown['name']}")
                alone = direct(home / "venv" / "bin" / "python", home / "code", work, count)
                rows.append((label, summary(through), summary(alone)))
    finally:
        server.terminate()
        server.wait()
    print(f"{count} events per consumer, one at a time; seconds (median / p95)")
    print("| consumer | commit → run end | entry point alone | overhead (medians) |")
    print("|---|---|---|---|")
    for label, (median, p95), (alone, alone_p95) in rows:
        print(
            f"| {label} | {median:.3f} / {p95:.3f} | {alone:.3f} / {alone_p95:.3f} "
            f"| {median - alone:.3f} |"
        )


if __name__ == "__main__":
    main()
