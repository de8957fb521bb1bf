"""One consumer run's folders and process, the same on the server and in ``consumer serve``.

``SRC/notification.json`` holds the event; ``SRC/downloads/<subdir>/<name>`` the input
transaction's files; ``DST/uploads/`` the same folder tree, empty, since published
consumers write into it without making folders. The entry point runs as
``python __main__.py SRC DST`` in the consumer's venv, in its own process group, within
:class:`RunLimits`; it sees none of the server's ``CONVEYOR_*`` settings, only what the
run gives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.consumers.environments import Environment, venv_variables
from conveyor.consumers.package import ENTRY_POINT
from conveyor.ingest.events import metadata_entries
from conveyor.ingest.paths import UnsafePath, relative_parts

STDERR_TAIL = 4000
POLL_SECONDS = 0.05
KILL_GRACE_SECONDS = 5.0
# The least address space a run may be given: less and a venv's Python cannot start.
MIN_MEMORY_BYTES = 64 * 1024**2
# Sets the limits inside the child, then becomes the consumer: no preexec_fn, which is
# unsafe in a threaded server. A limit above the hard one this process may not raise is
# lowered to it. Python ignores SIGXFSZ, so a write past the file limit fails with EFBIG.
LIMITED_START = (
    "import os, resource, sys\n"
    "def limit(kind, value):\n"
    "    hard = resource.getrlimit(kind)[1]\n"
    "    value = value if hard == resource.RLIM_INFINITY else min(value, hard)\n"
    "    resource.setrlimit(kind, (value, value))\n"
    "memory, file_bytes, open_files = (int(value) for value in sys.argv[1:4])\n"
    "limit(resource.RLIMIT_AS, memory)\n"
    "limit(resource.RLIMIT_FSIZE, file_bytes)\n"
    "limit(resource.RLIMIT_NOFILE, open_files)\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[4:]])\n"
)


class ConsumerFailed(Exception):
    """The consumer's process failed; the message says how, with the end of its stderr."""


@dataclass(frozen=True)
class RunLimits:
    """What one run may use: wall time, address space, the largest file it may write, open
    files, and the total of ``DST/uploads`` that is published for it."""

    timeout_seconds: float
    memory_bytes: int
    file_bytes: int
    open_files: int
    uploads_bytes: int


@dataclass(frozen=True)
class InputFile:
    """A file of the input transaction, as the event describes it."""

    file_id: int
    subdir: str
    name: str
    size: int

    def relative(self) -> Path:
        """Its path below ``downloads/`` (refused if it would leave the folder)."""
        try:
            return Path(*relative_parts(f"{self.subdir}/{self.name}".lstrip("/")))
        except UnsafePath as error:
            raise ConsumerFailed(f"input file {self.file_id} has an unsafe path: {error}") from None


@dataclass(frozen=True)
class Workspace:
    """The run's folders."""

    root: Path

    @property
    def src(self) -> Path:
        """The incoming transaction's folder."""
        return self.root / "SRC"

    @property
    def dst(self) -> Path:
        """The outgoing transaction's folder."""
        return self.root / "DST"

    @property
    def uploads(self) -> Path:
        """Where the consumer writes what it publishes."""
        return self.dst / "uploads"


def input_files(document: Mapping[str, Any]) -> list[InputFile]:
    """The ``Files`` entries of a Pacifica-shaped event."""
    return [
        InputFile(
            int(entry["_id"]),
            str(entry.get("subdir") or ""),
            str(entry["name"]),
            int(entry.get("size") or 0),
        )
        for entry in metadata_entries(document.get("data"), "Files")
        if "_id" in entry
    ]


def lay_out(
    root: Path,
    document: Mapping[str, Any],
    files: list[InputFile],
    fetch: Callable[[InputFile, Path], None],
) -> Workspace:
    """Make the run's folders: the event, every input file (``fetch`` writes each one to the
    path it is given) and the empty output tree."""
    space = Workspace(root)
    (space.src / "downloads").mkdir(parents=True)
    space.uploads.mkdir(parents=True)
    (space.src / "notification.json").write_text(json.dumps(document), encoding="utf-8")
    for item in files:
        relative = item.relative()
        target = space.src / "downloads" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (space.uploads / relative).parent.mkdir(parents=True, exist_ok=True)
        fetch(item, target)
    return space


def run_entry_point(
    environment: Environment,
    code: Path,
    space: Workspace,
    *,
    variables: Mapping[str, str],
    limits: RunLimits,
    still_wanted: Callable[[], None] = lambda: None,
) -> None:
    """Run ``python __main__.py SRC DST``; :class:`ConsumerFailed` unless it exits 0.

    ``still_wanted`` is called while the process runs; if it raises (the job's lease was
    lost, say), the process group is killed and the error goes on up.
    """
    log = space.root / "stderr.log"
    command = [
        str(environment.python),
        "-c",
        LIMITED_START,
        str(limits.memory_bytes),
        str(limits.file_bytes),
        str(limits.open_files),
        ENTRY_POINT,
        str(space.src),
        str(space.dst),
    ]
    env = {**venv_variables(environment.path), **variables}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=code,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    timeout = limits.timeout_seconds
    try:
        code_or_none = _wait(process, timeout, still_wanted)
    except BaseException:
        _kill(process)
        raise
    if code_or_none is None:
        _kill(process)
        raise ConsumerFailed(f"did not finish in {timeout:g} s and was killed; {_tail(log)}")
    if code_or_none != 0:
        how = (
            f"killed by signal {-code_or_none}"
            if code_or_none < 0
            else f"exit status {code_or_none}"
        )
        raise ConsumerFailed(f"{how}{_file_limit_hint(space, limits.file_bytes)}; {_tail(log)}")


def _file_limit_hint(space: Workspace, file_bytes: int) -> str:
    """Why the run may have failed when one of its outputs reached the file size limit."""
    for folder, _, names in os.walk(space.dst):  # links are not followed
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= file_bytes:
                where = path.relative_to(space.root).as_posix()
                return f" ({where} reached the limit of {file_bytes} bytes on a file's size)"
    return ""


def outputs(space: Workspace) -> Iterator[tuple[Path, str]]:
    """Each file the consumer left in ``DST/uploads`` and its subdir, in a stable order.

    A link is refused (it could point at any file the server may read).
    """
    if not space.uploads.is_dir():
        return
    for folder, dirs, names in os.walk(space.uploads):
        dirs.sort()
        here = Path(folder)
        for name in sorted(names):
            path = here / name
            if path.is_symlink() or not path.is_file():
                raise ConsumerFailed(f"output {path.relative_to(space.uploads)} is not a file")
            subdir = here.relative_to(space.uploads).as_posix()
            yield path, "" if subdir == "." else subdir
        for name in dirs:
            if (here / name).is_symlink():
                raise ConsumerFailed(f"output {(here / name).relative_to(space.uploads)} is a link")


def publishable(space: Workspace, max_bytes: int) -> list[tuple[Path, str]]:
    """The outputs to publish (see :func:`outputs`); :class:`ConsumerFailed` when together
    they exceed ``max_bytes``."""
    found = list(outputs(space))
    total = sum(path.stat().st_size for path, _ in found)
    if total > max_bytes:
        raise ConsumerFailed(
            f"DST/uploads holds {total} bytes in {len(found)} files, over the limit of "
            f"{max_bytes} bytes a run may publish"
        )
    return found


def _wait(
    process: subprocess.Popen[bytes], timeout: float, still_wanted: Callable[[], None]
) -> int | None:
    deadline = time.monotonic() + timeout
    delay = POLL_SECONDS
    while time.monotonic() < deadline:
        try:
            return process.wait(timeout=min(delay, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            still_wanted()
            delay = min(1.0, delay * 2)
    return process.poll()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """End the whole process group: TERM, a grace period, then KILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _tail(log: Path) -> str:
    try:
        with log.open("rb") as stream:
            stream.seek(max(0, log.stat().st_size - STDERR_TAIL))
            text = stream.read().decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f"stderr: {text}" if text else "no output on stderr"
