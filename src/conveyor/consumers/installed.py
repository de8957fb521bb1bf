"""A consumer version installed on this machine: unpacked code and a ready venv, made once.

Every machine that runs a consumer keeps its own copy under ``consumer_dir``, keyed by
the package's sha256, so a new version never disturbs runs of the old one. One process
at a time builds a version (a file lock); the others wait for it and then reuse it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conveyor.consumers.environments import Environment, build_environment, shim_wheelhouse
from conveyor.consumers.package import PackageError, read_package, unpack

READY = ".ready"
PACKAGE = "consumer.zip"
SETUP_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Installed:
    """The folder holding ``__main__.py`` and the venv to run it with."""

    code: Path
    environment: Environment


def installed(
    base: Path, sha256: str, write_package: Callable[[Path], None], timeout: float = SETUP_TIMEOUT
) -> Installed:
    """The installed version ``sha256``, installing it first when this machine lacks it.

    ``write_package`` writes the package's bytes to the path it is given; they must hash
    to ``sha256``. Setup failures raise ``ConsumerSetupError`` or ``PackageError``.
    """
    home = base / sha256[:32]
    found = _ready(home)
    if found is not None:
        return found
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f"{sha256[:32]}.lock"):
        found = _ready(home)
        if found is not None:
            return found
        home.mkdir(parents=True, exist_ok=True)
        package_path = home / PACKAGE
        write_package(package_path)
        package = read_package(package_path)
        if package.sha256 != sha256:
            raise PackageError(f"the stored package does not hash to {sha256}")
        code = unpack(package, home / "code")
        environment = build_environment(
            code, home / "venv", shim_wheelhouse(base / "wheels", timeout), timeout
        )
        (home / READY).write_text(package.root, encoding="utf-8")
    return Installed(code, environment)


def _ready(home: Path) -> Installed | None:
    try:
        root = (home / READY).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    code = home / "code"
    return Installed(code / root if root else code, Environment(home / "venv"))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
