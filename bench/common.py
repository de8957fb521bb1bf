"""What the benchmarks share: data sets, a server on the embedded default, and RSS."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from conveyor.client.bundler import BundleStream, collect, metadata_fields

MIB = 1024 * 1024
# The two data sets every benchmark uses: (file count, file size).
CASES = {
    "large: 200 files, 1 GiB": (200, 5 * MIB + 128 * 1024),
    "small: 10,000 x 4 KiB": (10_000, 4096),
}


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--workdir`` and ``--repeat``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    return parser


def workdir_and_repeat(args: argparse.Namespace) -> tuple[Path, int]:
    """The work folder (created) and the repeat count of parsed arguments."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="conveyor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    return work, int(args.repeat)


def bench_arguments(description: str | None) -> tuple[Path, int]:
    """The work folder (created) and the repeat count from the command line."""
    return workdir_and_repeat(bench_parser(description).parse_args())


def make_tree(root: Path, count: int, size: int) -> Path:
    """``count`` files of ``size`` random bytes (random, so no blob is deduplicated)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for index in range(count):
        sub = root / f"d{index % 50:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{index:05d}.bin").write_bytes(os.urandom(size))
    return root


def make_bundle(tree: Path, path: Path) -> Path:
    """A Pacifica bundle of ``tree`` as the uploader writes it (metadata.txt last, sha1)."""
    stream = BundleStream(collect([tree]), metadata_fields("bench", None, [], None))
    with path.open("wb") as out:
        for chunk in stream.chunks():
            out.write(chunk)
    return path


def start_server(
    data_dir: Path,
    port: int,
    extra_args: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`conveyor serve` on the embedded default in ``data_dir``, with ``settings`` (names
    without their ``CONVEYOR_`` prefix) on top; returns once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(data_dir)
    env.update({f"CONVEYOR_{name.upper()}": value for name, value in (settings or {}).items()})
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "serve", "--port", str(port), *extra_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until_answering(f"http://127.0.0.1:{port}/readyz", "conveyor serve", ready=(200,))
    return process


def wait_until_answering(
    url: str, what: str, seconds: float = 30.0, ready: tuple[int, ...] | None = None
) -> None:
    """Return once ``url`` answers (with one of ``ready`` when given); fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=1)
            if ready is None or answer.status_code in ready:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within {seconds:g} s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ingest_bundle(bundle: Path, url: str) -> dict[str, object]:
    """Upload a bundle with curl and wait for its job; the finished job."""
    answer = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-T",
            str(bundle),
            "-H",
            "Content-Type: application/x-tar",
            f"{url}/api/v1/ingest",
        ],
        check=True,
        capture_output=True,
    )
    job = json.loads(answer.stdout)
    while not job.get("complete"):
        time.sleep(0.02)
        job = httpx.get(f"{url}/api/v1/jobs/{job['id']}").json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"ingest failed: {job}")
    return dict(job)
