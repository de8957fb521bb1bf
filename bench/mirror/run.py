"""Mirror benchmark: Conveyor's mirror runs next to `rclone copy` and `lftp mirror`.

Two data sets, 1,000 files of 100 KiB and 4 files of 256 MiB, served from loopback FTP,
HTTP (nginx-style index) and SFTP servers (the test suite's pyftpdlib, http.server and
asyncssh servers, each in a process of its own, so every client meets the same server and
the benchmark's polling of Conveyor's API never holds the server's interpreter). For each
protocol and data set: `rclone copy --transfers 4`, `lftp mirror --parallel=4` (FTP and
HTTP), and a Conveyor mirror run with 4 threads on the embedded default (`conveyor serve`),
timed from the run request until the release is published, archive writes included. Beside
rclone alone, rclone followed by what Conveyor does beyond copying (sha256 of every file, a
flush to disk before publishing) shows the cost of the same work done after the copy,
`rclone hashsum sha256 --download` rclone computing those digests as it downloads (writing
nothing), `floor.py` (FTP and HTTP) what a bare threaded Python client reaches on this
machine (over HTTP also with 4 connections on one asyncio loop instead of 4 threads), and
`core.py` Conveyor's transfer path alone (the run's own fetching, hashing, checks and
archive renames, without the service: no listing, database or flush), which tells the
service's share of a run from the transfers'.
Before each client, dirty pages are flushed, the page cache dropped (as root) and the
served tree read back in: every client starts with the source cached and nothing else.
The clients run in rounds, each client once per round, and each ratio is the median of
the rounds' ratios: a slow spell of the machine then weighs on every client alike.
Each Conveyor run gets a new server with an empty archive, so no blob is deduplicated
against an earlier run; its peak RSS must not grow with file count. Before the timed run
the server runs a mirror that selects no file, so the run timed is that of a running
service; the first run of a fresh process (loading its protocol's client library and
compiling its first queries) is timed as well, on servers of its own. Nothing is deleted
between the clients of one protocol, and after deleting a protocol's copies the benchmark
waits a minute: ext4 without a journal makes every new file look past the inodes freed in
the last minute, which made whichever client came next pay for the deletions.

    .venv/bin/python bench/mirror/run.py [--workdir DIR] [--repeat N]
        [--servers python|native] [--mirror-processes P]
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MIB, bench_parser, peak_rss_mb, start_server, workdir_and_repeat
from native import family, native_server, tree_cpu_seconds
from tests.support.mirror_servers import ServerInfo, ftp_server, http_server, sftp_server

SETS = {"1,000 x 100 KiB": (1000, 100 * 1024), "4 x 256 MiB": (4, 256 * MIB)}
THREADS = 4
PORT = 18200
EXT4_RECENTLY_DELETED_SECONDS = 65
WAIT_SECONDS = 60  # the longest the API lets a request wait for a run
WORKERS_START_SECONDS = 5.0  # transfer workers import the mirror's code: 1-2 s
FLOOR = Path(__file__).with_name("floor.py")
CORE = Path(__file__).with_name("core.py")


def make_files(root: Path, count: int, size: int) -> Path:
    """``count`` files of ``size`` random bytes in 10 folders."""
    if root.exists():
        return root
    for index in range(count):
        folder = root / f"d{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"f{index:05d}.bin").open("wb") as out:
            left = size
            while left:
                chunk = min(left, 4 * MIB)
                out.write(os.urandom(chunk))
                left -= chunk
    return root


@dataclass(frozen=True)
class Served:
    """Where a loopback server listens and how to log in to it."""

    root: Path
    host: str
    port: int
    user: str | None
    password: str | None
    known_hosts_line: str | None
    pid: int  # the server's process, whose CPU time each client's run is charged


class Timing(NamedTuple):
    """One client's run: seconds, and the CPU seconds (user and system) it and the
    loopback server used meanwhile."""

    seconds: float
    client_cpu: float
    server_cpu: float

    def then(self, other: Timing) -> Timing:
        """This run followed by ``other``: their seconds and CPU seconds added up."""
        return Timing(*(mine + theirs for mine, theirs in zip(self, other, strict=True)))


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """The CPU time of this process's children that have ended and been waited for."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@contextmanager
def serve(protocol: str, root: Path, servers: str) -> Iterator[Served]:
    """The loopback server of ``protocol`` over ``root``: with ``servers`` "native",
    nginx or vsftpd (SFTP has none here: asyncssh serves it either way), else the test
    suite's Python server."""
    if servers == "native" and protocol != "sftp":
        with native_server(protocol, root, root.parent / f"{protocol}-server") as native:
            yield Served(
                root, "127.0.0.1", native.port, native.user, native.password, None, native.pid
            )
        return
    with python_server(protocol, root) as served:
        yield served


@contextmanager
def python_server(protocol: str, root: Path) -> Iterator[Served]:
    """The test suite's loopback server of ``protocol`` over ``root``, in a process of its own.

    Not a thread of the benchmark: waiting for a Conveyor run means polling its API, and
    each poll's interpreter time would stall a server sharing this process (and only while
    Conveyor is the client).
    """
    context = multiprocessing.get_context("spawn")  # forking a process with threads is unsafe
    answers = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve_until, args=(protocol, root, answers, stop))
    process.start()
    try:
        assert process.pid is not None  # started
        yield Served(**answers.get(timeout=120), pid=process.pid)
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()


def _serve_until(protocol: str, root: Path, answers: Any, stop: Any) -> None:
    """Run the server of ``protocol`` until ``stop`` is set; its address goes to ``answers``."""
    logging.disable(logging.INFO)
    servers: dict[str, Callable[[Path], AbstractContextManager[ServerInfo]]] = {
        "ftp": ftp_server,
        "http": lambda folder: http_server(folder, index_style="nginx"),
        "sftp": sftp_server,
    }
    with servers[protocol](root) as info:
        answers.put(
            {
                "root": root,
                "host": info.host,
                "port": info.port,
                "user": info.user,
                "password": info.password,
                "known_hosts_line": info.known_hosts_line,
            }
        )
        stop.wait()


def settle(tree: Path) -> None:
    """The same start for every client: nothing left to flush, and in the page cache only
    the served ``tree``.

    Each client leaves its copy dirty or cached; with many GiB cached, this virtual
    machine's kernel reclaimed and compacted memory inside whichever client wrote next
    (2.6 to 2.9 s of system time for a 1 GiB Conveyor run against 0.4 to 0.5 s). Dropping the
    cache needs root; without it only the flush is done.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return
    for path in tree.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(4 * MIB):
                    pass


def timed(command: list[str], info: Served) -> Timing:
    """A command run to its end (it must succeed) after :func:`settle`."""
    settle(info.root)
    started, children = time.perf_counter(), children_cpu_seconds()
    server = tree_cpu_seconds(info.pid)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return Timing(
        time.perf_counter() - started,
        children_cpu_seconds() - children,
        tree_cpu_seconds(info.pid) - server,
    )


def hashed_and_synced(dest: Path) -> Timing:
    """What Conveyor does beyond the copy, done to rclone's copy: sha256 of every file by
    OpenSSL (the implementation Conveyor uses), the files shared out to 4 processes as to
    Conveyor's 4 threads, then a flush to disk before it publishes."""
    started, children = time.perf_counter(), children_cpu_seconds()
    files = sorted(str(path) for path in dest.rglob("*") if path.is_file())
    hashers = [
        subprocess.Popen(
            ["openssl", "dgst", "-sha256", *files[n::THREADS]], stdout=subprocess.DEVNULL
        )
        for n in range(min(THREADS, len(files)))
    ]
    for hasher in hashers:
        if hasher.wait() != 0:
            raise RuntimeError("openssl dgst failed")
    os.sync()
    return Timing(time.perf_counter() - started, children_cpu_seconds() - children, 0.0)


def rclone(protocol: str, info: Served, dest: Path, known_hosts: Path) -> Timing:
    """`rclone copy` of the whole tree with 4 transfers."""
    # rclone's multi-thread download of one large FTP file closes data connections early,
    # which pyftpdlib answers with 426 and rclone 1.60 counts as a failure: one stream a file.
    streams = ["--multi-thread-streams", "0"] if protocol == "ftp" else []
    command = ["rclone", "copy", "--transfers", str(THREADS), *streams, "--config", "/dev/null"]
    return timed([*command, rclone_remote(protocol, info, known_hosts), str(dest)], info)


def rclone_hashing(protocol: str, info: Served, known_hosts: Path) -> Timing:
    """`rclone hashsum sha256 --download`: rclone computing, as it downloads every file with
    4 transfers, the sha256 Conveyor computes (the bytes are not written)."""
    command = ["rclone", "hashsum", "sha256", "--download", "--config", "/dev/null"]
    parallel = ["--checkers", str(THREADS), "--transfers", str(THREADS)]
    return timed([*command, *parallel, rclone_remote(protocol, info, known_hosts)], info)


def rclone_remote(protocol: str, info: Served, known_hosts: Path) -> str:
    """The served tree as an rclone remote given on the command line."""
    password = subprocess.run(
        ["rclone", "obscure", info.password or ""], check=True, capture_output=True, text=True
    ).stdout.strip()
    return {
        "ftp": f":ftp,host={info.host},port={info.port},user={info.user},pass={password}:/",
        "http": f":http,url='http://{info.host}:{info.port}/':",
        "sftp": (
            f":sftp,host={info.host},port={info.port},user={info.user},pass={password},"
            f"known_hosts_file={known_hosts}:/"
        ),
    }[protocol]


def known_files(tree: Path, dest: Path) -> Path:
    """A list of the served files beside ``dest``, one ``path<TAB>size`` line each, for the
    clients that are given the files rather than list them."""
    listing = dest.parent / f"{dest.name}.list"
    files = sorted(tree.rglob("*.bin"))
    listing.write_text("".join(f"{p.relative_to(tree)}\t{p.stat().st_size}\n" for p in files))
    return listing


def python_floor(protocol: str, info: Served, tree: Path, dest: Path) -> Timing:
    """`floor.py`: the known files fetched by 4 bare ftplib or urllib3 threads (or, for
    ``http-async``, 4 aiohttp connections on one event loop), no more."""
    command = [sys.executable, str(FLOOR), protocol, info.host, str(info.port)]
    command += [info.user or "", info.password or "", str(known_files(tree, dest)), str(dest)]
    return timed(command, info)


def conveyor_core(protocol: str, info: Served, tree: Path, dest: Path, known_hosts: Path) -> Timing:
    """`core.py`: the known files through Conveyor's transfer path alone (no service, no
    listing, database or flush), timed by the process itself from after its imports."""
    command = [sys.executable, str(CORE), protocol, info.host, str(info.port)]
    command += [info.user or "", info.password or "", str(known_hosts)]
    command += [str(known_files(tree, dest)), str(dest)]
    settle(info.root)
    server = tree_cpu_seconds(info.pid)
    answer = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds, spent = (float(figure) for figure in answer.stdout.split())
    return Timing(seconds, spent, tree_cpu_seconds(info.pid) - server)


def lftp(protocol: str, info: Served, dest: Path) -> Timing:
    """`lftp mirror --parallel=4` of the whole tree."""
    if protocol == "ftp":
        script = f"open -u {info.user},{info.password} -p {info.port} {info.host}; "
    else:
        script = f"open http://{info.host}:{info.port}/; "
    script += f"mirror --parallel={THREADS} / {dest}; quit"
    return timed(["lftp", "-c", script], info)


def conveyor(
    service: tuple[str, int], protocol: str, info: Served, known_hosts: Path, name: str, warm: bool
) -> Timing:
    """A mirror run of the service at ``service`` (its URL and process), from the request
    until its release is published; the service's CPU time is the client's.

    With ``warm``, a run that selects no file goes first on the same server (it fails at
    its listing): the timed run then meets a service that has run a mirror of this
    protocol before, as a running service has, rather than a fresh process loading its
    client libraries (aiohttp alone: 0.17 s) and compiling its first queries.
    """
    source: dict[str, object] = {
        "protocol": protocol,
        "server": f"{info.host}:{info.port}",
        "remote_dir": "/",
    }
    if info.user:
        source["credentials"] = {"user": info.user, "password": info.password}
    if protocol == "sftp":
        source["options"] = {"ssh_hosts_file": str(known_hosts)}
    definition = {
        "name": name,
        "source": source,
        "remote_files": ["**/*"],
        "threads": THREADS,
        "release": {"format": f"{name}-%Y%m%d%H%M%S"},
    }
    # One client for every request: making one costs 16 ms of CPU (its TLS context).
    url, pid = service
    with httpx.Client(base_url=url, timeout=WAIT_SECONDS + 30) as client:
        if warm:
            warm_name = f"{name}-warm"
            warm_up = {**definition, "name": warm_name, "remote_files": ["^no-such-file$"]}
            _define(client, warm_up)
            run = _finished(client, warm_name)
            if run["state"] != "failed" or "no file found" not in (run["error"] or ""):
                raise RuntimeError(f"the warm-up run did not fail as meant: {run}")
        _define(client, definition)
        settle(info.root)
        started, spent = time.perf_counter(), tree_cpu_seconds(pid)
        server = tree_cpu_seconds(info.pid)
        run = _finished(client, name)
        timing = Timing(
            time.perf_counter() - started,
            tree_cpu_seconds(pid) - spent,
            tree_cpu_seconds(info.pid) - server,
        )
    if run["state"] != "published":
        raise RuntimeError(f"mirror run failed: {run}")
    return timing


def _define(client: httpx.Client, definition: dict[str, Any]) -> None:
    client.post("/api/v1/mirrors", json=definition).raise_for_status()


def _finished(client: httpx.Client, name: str) -> dict[str, Any]:
    """Run a defined mirror and wait for it: the finished run.

    The run is waited for as a client waits for it (``?wait=``: the answer comes when the
    run's last commit lands), not polled, so no poll interval is counted.
    """
    run: dict[str, Any] = client.post(f"/api/v1/mirrors/{name}/runs").json()
    while run["state"] not in ("published", "up_to_date", "failed", "cancelled"):
        answer = client.get(f"/api/v1/mirror-runs/{run['id']}", params={"wait": WAIT_SECONDS})
        run = answer.raise_for_status().json()
    return run


def fresh_conveyor(
    data_dir: Path, run: Callable[[tuple[str, int]], Timing], processes: int = 0
) -> tuple[Timing, float]:
    """``run`` against a new `conveyor serve` (its URL and process) with an empty archive in
    ``data_dir`` (a blob already held would be deduplicated, and its bytes never written);
    its timing and the server's peak RSS. The folder is kept until the caller is done with
    every client: ext4 makes each new file look past the inodes freed in the last 30 s or
    so, so deleting one run's files just before the next (rclone's copies are kept the same
    way) costs it. With ``processes``, the service has as many transfer workers, given
    time to start as a running service's have; their peak RSS counts with its own."""
    shutil.rmtree(data_dir, ignore_errors=True)
    server = start_server(data_dir, PORT, settings={"mirror_processes": str(processes)})
    try:
        if processes:
            time.sleep(WORKERS_START_SECONDS)
        timing = run((f"http://127.0.0.1:{PORT}", server.pid))
        return timing, sum(peak_rss_mb(member) for member in family(server.pid))
    finally:
        server.terminate()
        server.wait()


class Row(NamedTuple):
    """Median seconds of each client on one server, the median of the rounds' ratios of
    rclone to Conveyor, Conveyor's highest peak RSS, and the median CPU seconds of each
    client and of the server while it ran."""

    rclone: float
    rclone_plus: float  # rclone, then Conveyor's extra work (hashing, a flush)
    rclone_hashing: float  # rclone hashing every file as it downloads it, writing nothing
    lftp: float  # FTP and HTTP
    floor: float  # the bare Python client, FTP and HTTP
    async_floor: float  # its asyncio form, HTTP
    core: float  # Conveyor's transfer path alone
    conveyor: float  # a running service
    first_run: float  # the first run of a fresh process
    vs_rclone: float  # rclone over Conveyor, round by round
    vs_rclone_plus: float
    vs_rclone_hashing: float
    core_vs_rclone: float  # rclone over the transfer path alone
    peak_rss: float
    cpu: dict[str, tuple[float, float]]  # client: (its CPU s, the server's CPU s)


def compare(
    protocol: str, tree: Path, work: Path, repeat: int, servers: str, processes: int
) -> Row:
    """Every client against one server of ``protocol`` serving ``tree``, in rounds.

    Each round runs every client once, one after the other, so that a slow spell of this
    virtual machine (the same client took from 1x to 2x its usual time for minutes on end)
    falls on all of them rather than on whichever ran during it; the ratios are taken
    within each round.
    """
    with serve(protocol, tree, servers) as info:
        known = work / "known_hosts"
        known.write_text(f"{info.known_hosts_line or ''}\n")
        peaks: list[float] = []

        def fresh(name: str) -> Path:
            dest = work / "dest" / name
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            return dest

        def equal_work(number: int) -> Timing:
            dest = fresh(f"rclone-hashed{number}")
            return rclone(protocol, info, dest, known).then(hashed_and_synced(dest))

        def conveyor_once(number: int, warm: bool) -> Timing:
            name = f"{protocol}-{'warm' if warm else 'cold'}-{number}"
            timing, peak = fresh_conveyor(
                work / "dest" / name,
                lambda service: conveyor(service, protocol, info, known, name, warm),
                processes,
            )
            peaks.append(peak)
            return timing

        clients: dict[str, Callable[[int], Timing]] = {
            "rclone": lambda n: rclone(protocol, info, fresh(f"rclone{n}"), known),
            "rclone_plus": equal_work,
            "rclone_hashing": lambda n: rclone_hashing(protocol, info, known),
            "core": lambda n: conveyor_core(protocol, info, tree, fresh(f"core{n}"), known),
            "conveyor": lambda n: conveyor_once(n, warm=True),
            "first_run": lambda n: conveyor_once(n, warm=False),
        }
        if protocol == "http":
            clients["async_floor"] = lambda n: python_floor(
                "http-async", info, tree, fresh(f"async{n}")
            )
        if protocol != "sftp":
            clients["lftp"] = lambda n: lftp(protocol, info, fresh(f"lftp{n}"))
            clients["floor"] = lambda n: python_floor(protocol, info, tree, fresh(f"floor{n}"))
        timings: dict[str, list[Timing]] = {name: [] for name in clients}
        for number in range(repeat):
            for name, once in clients.items():
                timings[name].append(once(number))
    forget(work / "dest")
    times = {name: [timing.seconds for timing in runs] for name, runs in timings.items()}

    def median(name: str) -> float:
        return statistics.median(times[name]) if name in times else float("nan")

    def ratio(name: str, of: str = "conveyor") -> float:
        return statistics.median(
            theirs / ours for theirs, ours in zip(times[name], times[of], strict=True)
        )

    cpu = {
        name: (
            statistics.median(timing.client_cpu for timing in runs),
            statistics.median(timing.server_cpu for timing in runs),
        )
        for name, runs in timings.items()
    }

    medians = {name: median(name) for name in Row._fields[:9]}
    return Row(
        **medians,
        vs_rclone=ratio("rclone"),
        vs_rclone_plus=ratio("rclone_plus"),
        vs_rclone_hashing=ratio("rclone_hashing"),
        core_vs_rclone=ratio("rclone", of="core"),
        peak_rss=max(peaks),
        cpu=cpu,
    )


def forget(folder: Path) -> None:
    """Delete ``folder``, then wait until ext4 (without a journal, as on this machine) stops
    checking each new inode against the ones just freed (60 s once they are written back),
    so that the next client timed does not pay for these deletions."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()
    time.sleep(EXT4_RECENTLY_DELETED_SECONDS)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--servers",
        choices=("python", "native"),
        default="python",
        help="the test suite's Python servers, or nginx and vsftpd (bench/install-tools)",
    )
    parser.add_argument(
        "--mirror-processes",
        type=int,
        default=0,
        help="the service's transfer workers for small files (CONVEYOR_MIRROR_PROCESSES)",
    )
    arguments = parser.parse_args()
    work, repeat = workdir_and_repeat(arguments)
    if arguments.servers == "native":
        work.chmod(0o755)  # vsftpd reads the served tree as the ftp user
    # The loopback servers log every command at INFO; only the figures matter here.
    logging.disable(logging.INFO)
    print(
        f"{'set':18} {'proto':5} {'rclone s':>9} {'+hash+sync s':>12} {'hashsum s':>9} "
        f"{'lftp s':>7} {'python s':>8} {'async s':>7} {'core s':>6} {'conveyor s':>10} "
        f"{'1st run s':>9} {'vs rclone':>9} {'vs +hash':>8} {'vs hashsum':>10} "
        f"{'core vs rclone':>14} {'vs python':>9} "
        f"{'1st vs rclone':>13} {'MB/s':>6} {'RSS MB':>7}"
    )
    rows: list[tuple[str, str, Row]] = []
    for label, (count, size) in SETS.items():
        tree = make_files(work / f"set-{count}", count, size)
        total_mb = count * size / MIB
        for protocol in ("ftp", "http", "sftp"):
            row = compare(
                protocol, tree, work, repeat, arguments.servers, arguments.mirror_processes
            )
            rows.append((label, protocol, row))
            ours = row.conveyor
            print(
                f"{label:18} {protocol:5} {row.rclone:9.2f} {row.rclone_plus:12.2f} "
                f"{row.rclone_hashing:9.2f} {row.lftp:7.2f} {row.floor:8.2f} "
                f"{row.async_floor:7.2f} {row.core:6.2f} {ours:10.2f} {row.first_run:9.2f} "
                f"{row.vs_rclone:9.2f} {row.vs_rclone_plus:8.2f} {row.vs_rclone_hashing:10.2f} "
                f"{row.core_vs_rclone:14.2f} {row.floor / ours:9.2f} "
                f"{row.rclone / row.first_run:13.2f} "
                f"{total_mb / ours:6.0f} {row.peak_rss:7.0f}"
            )
    print_cpu(rows)


def print_cpu(rows: list[tuple[str, str, Row]]) -> None:
    """Median CPU seconds of each client and of the loopback server during its runs: with
    two cores, a client whose CPU time and the server's add up to about twice its seconds
    was bound by the CPU, not by waiting."""
    clients = ("rclone", "rclone_plus", "rclone_hashing", "core", "conveyor")
    print(f"\nCPU s, client + server: {', '.join(clients)}")
    for label, protocol, row in rows:
        spent = (f"{row.cpu[name][0]:.2f} + {row.cpu[name][1]:.2f}" for name in clients)
        print(f"{label:18} {protocol:5} " + " | ".join(f"{cell:>13}" for cell in spent))


if __name__ == "__main__":
    main()
