"""Conveyor's transfer path alone: known files fetched as a mirror run fetches them, no more.

The run's own code: its readers and sources, fetch and fetch_async (sha256 and CRC-32 of
every byte, the size and archive checks, the part file), files up to the run's loop limit
on one event loop and larger ones in 4 threads, each checked part renamed into a folder
archive. Not done: the listing, the database (file rows, outcomes, the transaction), the
flush to disk and the API. Beside a whole run it tells the service's share of a run from
the transfers'. It prints its seconds and CPU seconds from after its imports, its
protocol's client library included (loading Conveyor takes longer than a run of small
files), as ``SECONDS CPU_SECONDS``.

    python bench/mirror/core.py PROTOCOL HOST PORT USER PASSWORD KNOWN_HOSTS LIST DEST [CONNECTIONS]

LIST holds one ``path<TAB>size`` line a file; CONNECTIONS (4 unless given) caps the
transfers at once, so that two processes given half of a list each with 2 connections
tell what a second core would give the same transfers.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from conveyor.mirror.downloads import LOOP_MAX_BYTES
from conveyor.mirror.gate import HostGate
from conveyor.mirror.retry import retry_policy
from conveyor.mirror.sources import AsyncReader, Source, open_async_reader, open_source
from conveyor.mirror.sources.base import source_class
from conveyor.mirror.spec import Credentials, SourceOptions, SourceSpec
from conveyor.mirror.transfer import Fetched, Wanted, fetch, fetch_async
from conveyor.storage.archive import Archive, open_archive

CONNECTIONS = 4
ATTEMPT_SECONDS = 3600.0
POLICY = retry_policy(None, None)


class Transfers:
    """The files of one benchmark client, fetched into one archive."""

    def __init__(self, spec: SourceSpec, archive: Archive, parts: Path, connections: int) -> None:
        self.spec = spec
        self.archive = archive
        self.parts = parts
        self.connections = connections
        self.gate = HostGate(connections)

    def wanted(self, path: str, size: int) -> Wanted:
        """A file as the run asks for it: no part left by an earlier run, kept for the archive."""
        return Wanted(path, path, size, self.parts / path, keep_part=True, may_resume=False)

    def adopt(self, fetched: Fetched) -> None:
        """Give the checked part its blob name, as the run does."""
        hashes = {"sha256": fetched.sha256, "crc32": f"{fetched.crc32:08x}"}
        self.archive.adopt(fetched.path, hashes, fetched.size)

    async def on_loop(self, reader: AsyncReader, files: list[tuple[str, int]]) -> None:
        """Small files: every one a task of one event loop, at most ``connections`` at once."""
        slots = asyncio.Semaphore(self.connections)

        async def one(path: str, size: int) -> None:
            async with slots:
                wanted = self.wanted(path, size)
                fetched = await fetch_async(
                    reader, wanted, POLICY, gate=self.gate, attempt_seconds=ATTEMPT_SECONDS
                )
                self.adopt(fetched)

        try:
            await asyncio.gather(*(one(path, size) for path, size in files))
        finally:
            await reader.close()

    def in_threads(self, files: list[tuple[str, int]]) -> None:
        """Large files: a thread a connection, each with a source of its own."""
        local = threading.local()
        sources: list[Source] = []

        def one(path: str, size: int) -> None:
            source = getattr(local, "source", None)
            if source is None:
                source = local.source = open_source(self.spec)
                sources.append(source)
            wanted = self.wanted(path, size)
            fetched = fetch(source, wanted, POLICY, gate=self.gate, attempt_seconds=ATTEMPT_SECONDS)
            self.adopt(fetched)

        try:
            with ThreadPoolExecutor(self.connections) as pool:
                for done in [pool.submit(one, path, size) for path, size in files]:
                    done.result()
        finally:
            for source in sources:
                source.close()


def source_spec(
    protocol: str, host: str, port: str, user: str, password: str, known: str
) -> SourceSpec:
    """The source a benchmark mirror definition gives the service."""
    return SourceSpec(
        protocol=protocol,
        server=f"{host}:{port}",
        remote_dir="/",
        credentials=Credentials(user=user, password=password) if user else None,
        options=SourceOptions(ssh_hosts_file=known),
    )


def main() -> None:
    protocol, host, port, user, password, known, listing, dest = sys.argv[1:9]
    connections = int(sys.argv[9]) if len(sys.argv) > 9 else CONNECTIONS
    files = [
        (path, int(size))
        for path, size in (line.split("\t") for line in Path(listing).read_text().splitlines())
    ]
    transfers = Transfers(
        source_spec(protocol, host, port, user, password, known),
        open_archive(Path(dest).resolve().as_uri()),
        Path(dest) / "parts",
        connections,
    )
    # The protocol's client libraries are loaded before the clock starts, as a running
    # service has them (aiohttp alone takes 0.17 s).
    source_class(transfers.spec.protocol)
    started, spent = time.perf_counter(), time.process_time()
    small = [(path, size) for path, size in files if size <= LOOP_MAX_BYTES]
    large = [(path, size) for path, size in files if size > LOOP_MAX_BYTES]
    reader = open_async_reader(transfers.spec, connections) if small else None
    if reader is None:
        large += small
    else:
        uvloop.run(transfers.on_loop(reader, small))
    transfers.in_threads(large)
    print(f"{time.perf_counter() - started:.4f} {time.process_time() - spent:.4f}")


if __name__ == "__main__":
    main()
