"""The servers public banks run, on loopback: nginx (HTTP, its autoindex pages) and vsftpd
(FTP, anonymous, LIST in Unix format), from Debian's packages.

Beside the test suite's Python servers they use a fraction of the CPU (nginx sends files
with sendfile), so on a machine of two cores the benchmark's clients meet a server that
leaves them a core, as a remote bank does, rather than one that competes for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ANONYMOUS = ("anonymous", "bench@")
# vsftpd's sessions run as this user: what it serves must be readable by it.
VSFTPD_USER = "ftp"
# Where vsftpd drops a session's root while it checks the login (its Debian default).
VSFTPD_EMPTY = Path("/var/run/vsftpd/empty")


class NativeServer(NamedTuple):
    """A native server's port, login and process (the root of its process tree)."""

    port: int
    user: str | None
    password: str | None
    pid: int


@contextmanager
def native_server(protocol: str, root: Path, folder: Path) -> Iterator[NativeServer]:
    """nginx (``http``) or vsftpd (``ftp``) serving ``root``, configured in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    if protocol == "http":
        command, login = _nginx(root, folder, port), (None, None)
    elif protocol == "ftp":
        command, login = _vsftpd(root, folder, port), ANONYMOUS
    else:
        raise ValueError(f"no native server for {protocol}")
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"{command[0]} is missing: run bench/install-tools")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        yield NativeServer(port, *login, pid=process.pid)
    finally:
        process.terminate()
        process.wait(30)


def family(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
    members, queue = [], [pid]
    while queue:
        current = queue.pop()
        members.append(current)
        queue += [child for child, parent in parents.items() if parent == current]
    return members


def tree_cpu_seconds(pid: int) -> float:
    """The CPU time of ``pid`` and of its descendants, live or ended (nginx works in a
    child process, vsftpd in a process per session, Conveyor's transfer workers in
    theirs)."""
    ticks = 0
    for member in family(pid):
        try:
            fields = _stat_fields(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
        # utime, stime, and cutime, cstime: those of its children that ended.
        ticks += sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from its third field (the state) on."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _nginx(root: Path, folder: Path, port: int) -> list[str]:
    config = folder / "nginx.conf"
    config.write_text(
        f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
    }}
}}
"""
    )
    return ["nginx", "-c", str(config), "-p", str(folder), "-e", str(folder / "error.log")]


def _vsftpd(root: Path, folder: Path, port: int) -> list[str]:
    _readable_by_ftp(root)
    VSFTPD_EMPTY.mkdir(parents=True, exist_ok=True)
    config = folder / "vsftpd.conf"
    config.write_text(
        f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
local_enable=NO
write_enable=NO
anon_root={root}
ftp_username={VSFTPD_USER}
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=40000
pasv_max_port=44999
max_clients=64
max_per_ip=64
xferlog_enable=NO
seccomp_sandbox=NO
secure_chroot_dir={VSFTPD_EMPTY}
"""
    )
    return ["vsftpd", str(config)]


def _readable_by_ftp(root: Path) -> None:
    """vsftpd's sessions read as the ``ftp`` user, who must reach ``root`` and list it."""
    for folder in [root, *root.parents]:
        needed = 0o005 if folder == root else 0o001
        if folder.stat().st_mode & needed != needed:
            raise RuntimeError(
                f"vsftpd serves as the {VSFTPD_USER} user, who cannot reach {folder}: "
                "use a --workdir that others may read (as under /tmp)"
            )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {seconds:g} s")
