"""Transfer workers: the same mirror runs on two services, one fetching small files in its
own process and one with transfer worker processes (``CONVEYOR_MIRROR_PROCESSES``).

Both services run side by side on the embedded default, each with a new archive, and take
turns, one run each a round (the order alternating), against one server of the protocol:
nginx or vsftpd with ``--servers native`` (what `run.py --servers native` uses), else the
test suite's Python server. Every run is of a new mirror (nothing reused), timed from its
request until its release is published, after the same settling as in `run.py`. Prints
each round and the medians, with the CPU seconds of each service (its workers included).

    .venv/bin/python bench/mirror/processes.py [--workdir DIR] [--repeat N]
        [--servers python|native] [--protocol ftp|http|sftp] [--processes P]
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import bench_parser, start_server, workdir_and_repeat
from run import SETS, WORKERS_START_SECONDS, Timing, conveyor, make_files, serve


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--servers", choices=("python", "native"), default="native")
    parser.add_argument("--protocol", choices=("ftp", "http", "sftp"), default="http")
    parser.add_argument("--processes", type=int, default=2)
    arguments = parser.parse_args()
    work, repeat = workdir_and_repeat(arguments)
    work.chmod(0o755)  # vsftpd reads the served tree as the ftp user
    logging.disable(logging.INFO)
    count, size = SETS["1,000 x 100 KiB"]
    tree = make_files(work / f"set-{count}", count, size)
    protocol = arguments.protocol
    setups = {"in process": 0, f"{arguments.processes} workers": arguments.processes}
    services = {
        label: start_server(
            work / f"service-{processes}-{time.time_ns()}",
            18300 + number,
            settings={"mirror_processes": str(processes)},
        )
        for number, (label, processes) in enumerate(setups.items())
    }
    timings: dict[str, list[Timing]] = {label: [] for label in setups}
    try:
        time.sleep(WORKERS_START_SECONDS)
        with serve(protocol, tree, arguments.servers) as info:
            known = work / "known_hosts"
            known.write_text(f"{info.known_hosts_line or ''}\n")
            ports = {label: 18300 + number for number, label in enumerate(setups)}
            for number in range(repeat):
                order = list(setups) if number % 2 == 0 else list(reversed(setups))
                for label in order:
                    service = (f"http://127.0.0.1:{ports[label]}", services[label].pid)
                    name = f"{protocol}-{label.replace(' ', '-')}-{number}"
                    timings[label].append(
                        conveyor(service, protocol, info, known, name, warm=number == 0)
                    )
                print(
                    f"round {number}: "
                    + ", ".join(f"{label} {timings[label][-1].seconds:.3f} s" for label in setups),
                    flush=True,
                )
    finally:
        for process in services.values():
            process.terminate()
            process.wait()
    report(timings)


def report(timings: dict[str, list[Timing]]) -> None:
    """Medians of seconds and CPU seconds, and the median of the rounds' ratios."""
    (first, ours), (second, theirs) = timings.items()
    for label, runs in timings.items():
        seconds = statistics.median(run.seconds for run in runs)
        spent = statistics.median(run.client_cpu for run in runs)
        print(f"{label:12} {seconds:.3f} s, service CPU {spent:.2f} s")
    ratio = statistics.median(a.seconds / b.seconds for a, b in zip(ours, theirs, strict=True))
    print(f"{first} over {second}: {ratio:.2f}")


if __name__ == "__main__":
    main()
