"""rsync: the ``rsync`` binary with argument lists (never a shell string, unlike BioMAJ)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError, stalled
from conveyor.mirror.sources.base import READ_CHUNK, Source, join_remote, register
from conveyor.mirror.sources.parts import open_part

# rsync --list-only: permissions, size (with thousands separators), date, time, name.
LIST_LINE = re.compile(
    r"^(?P<mode>[-dlbcps][-rwxsStT]{9})\s+(?P<size>[\d,.]+)\s+"
    r"(?P<date>\d{4}/\d{2}/\d{2})\s+(?P<time>\d{2}:\d{2}:\d{2})\s+(?P<name>.+)$"
)
MISSING_MARKERS = ("No such file or directory", "change_dir", "failed: Not a directory")
# How often a transfer in progress looks for the bytes rsync wrote since.
FOLLOW_SECONDS = 0.01


@register
class RsyncSource(Source):
    """``[user@]server:remote_dir``, or the local path ``remote_dir`` when no server is set."""

    protocols = ("rsync",)

    def location(self, path: str, folder: bool = False) -> str:
        """The rsync argument naming ``path``."""
        remote = join_remote(self.spec.remote_dir, path)
        if folder:
            remote = remote.rstrip("/") + "/"
        if not self.spec.server:
            return remote
        user = f"{self.spec.credentials.user}@" if self.spec.credentials else ""
        return f"{user}{self.spec.server}:{remote}"

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """``rsync --list-only``, read line by line as rsync prints it."""
        where = self.location(folder, folder=True)
        with subprocess.Popen(
            ["rsync", "--list-only", "--no-motd", where],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                entry = _parse(line.rstrip("\n"))
                if entry is not None and entry.name not in (".", ".."):
                    yield entry
            stderr = process.stderr.read() if process.stderr else ""
            if process.wait() != 0:
                raise _failure(where, process.returncode, stderr)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """rsync copies the file into a private folder; its bytes are read from there."""
        source = self.location(path)
        scratch = Path(tempfile.mkdtemp(prefix="conveyor-rsync-"))
        try:
            target = scratch / "file"
            finished = subprocess.run(
                ["rsync", "--no-motd", "--times", "--", source, str(target)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=None,
                check=False,
            )
            if finished.returncode != 0:
                raise _failure(source, finished.returncode, finished.stderr)
            with target.open("rb") as handle:
                handle.seek(offset)
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def read_into(self, path: str, part: Path, offset: int) -> Iterator[bytes]:
        """rsync appends the file to ``part`` itself (``--inplace --append``: a partial
        file is resumed, never copied through a scratch folder); the bytes it writes are
        read back as they land, for the caller's hashes and progress."""
        source = self.location(path)
        # Followed from the start, before rsync has made it (and at offset 0 emptied, so
        # that rsync appends to nothing an earlier attempt left).
        os.close(open_part(part, offset))
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                [
                    "rsync",
                    "--no-motd",
                    "--inplace",
                    "--append",
                    # Local copies imply --whole-file, which --append refuses.
                    "--no-whole-file",
                    "--",
                    source,
                    str(part),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            try:
                yield from self._follow(part, offset, process, source)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
            if process.returncode != 0:
                errors.seek(0)
                text = errors.read().decode("utf-8", "replace")
                raise _failure(source, process.returncode, text)

    def _follow(
        self, part: Path, offset: int, process: subprocess.Popen[bytes], where: str
    ) -> Iterator[bytes]:
        """What rsync appends to ``part`` after ``offset``, until it exits."""
        with part.open("rb") as landed:
            landed.seek(offset)
            quiet_since = time.monotonic()
            while True:
                chunk = landed.read(READ_CHUNK)
                if chunk:
                    quiet_since = time.monotonic()
                    yield chunk
                    continue
                if process.poll() is not None:
                    while rest := landed.read(READ_CHUNK):  # written just before it exited
                        yield rest
                    return
                if time.monotonic() - quiet_since > self.spec.stall_timeout:
                    raise stalled(f"rsync {where}", self.spec.stall_timeout)
                time.sleep(FOLLOW_SECONDS)

    def stat(self, path: str) -> RemoteEntry:
        """``rsync --list-only`` of the one file."""
        where = self.location(path)
        finished = subprocess.run(
            ["rsync", "--list-only", "--no-motd", where],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
        if finished.returncode != 0:
            raise _failure(where, finished.returncode, finished.stderr)
        for line in finished.stdout.splitlines():
            entry = _parse(line)
            if entry is not None:
                return entry
        raise SourceError(f"rsync {where}: no such file", permanent=True)


def _parse(line: str) -> RemoteEntry | None:
    match = LIST_LINE.match(line)
    if match is None:
        return None
    mode, name = match["mode"], match["name"]
    is_link = mode.startswith("l")
    if is_link:
        name = name.split(" -> ", 1)[0]
    # rsync prints times in the local time zone of the machine running it.
    stamp = datetime.strptime(f"{match['date']} {match['time']}", "%Y/%m/%d %H:%M:%S")
    is_dir = mode.startswith("d")
    size = int(re.sub(r"[,.]", "", match["size"]))
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir else size,
        mtime=stamp.astimezone().astimezone(UTC),
        fingerprint=hashlib.md5(line.encode(), usedforsecurity=False).hexdigest(),
        is_link=is_link,
    )


def _failure(where: str, code: int, stderr: str) -> SourceError:
    message = " ".join(stderr.split())[:500] or f"exit status {code}"
    permanent = any(marker in stderr for marker in MISSING_MARKERS)
    return SourceError(f"rsync {where}: {message}", permanent=permanent)
