"""A consumer's own virtualenv: made once per consumer version, then reused for every run.

The steps, in the order the consumer document gives them: a venv with the server's Python,
``init.sh`` run once inside it (for what a requirements file cannot install), then
``requirements.txt``. The names the published example requires that no package index
serves, ``pacifica-notifications-consumer`` and ``promises``, are offered from a local
folder of wheels Conveyor builds from ``shims/``, so the file installs as written. Every
step has a time limit, and a failed one says which step and ends with its output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conveyor.consumers.package import INIT_SCRIPT, REQUIREMENTS

SHIMS = Path(__file__).with_name("shims")
OUTPUT_TAIL = 4000
PIP = (sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check")


class ConsumerSetupError(Exception):
    """A step of making a consumer's environment failed; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step


@dataclass(frozen=True)
class Environment:
    """A ready virtualenv and the interpreter to run the consumer with."""

    path: Path

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"


def shim_wheelhouse(directory: Path, timeout: float = 600.0) -> Path:
    """The folder of stand-in wheels for these shim sources, built on first use."""
    house = directory / f"shims-{_shims_digest()}"
    if (house / ".complete").exists():
        return house
    building = directory / f"{house.name}.part"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for source in sorted(path for path in SHIMS.iterdir() if (path / "pyproject.toml").exists()):
        _run(
            f"build the {source.name} stand-in",
            [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(building), str(source)],
            cwd=directory,
            timeout=timeout,
        )
    (building / ".complete").touch()
    shutil.rmtree(house, ignore_errors=True)
    building.rename(house)
    return house


def _shims_digest() -> str:
    """What the shim sources hash to: a change to them makes new wheels."""
    digest = hashlib.sha256()
    for path in sorted(SHIMS.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(SHIMS).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_environment(
    code: Path, destination: Path, wheelhouse: Path, timeout: float = 1800.0
) -> Environment:
    """Make the consumer's venv at ``destination`` (anew) for the unpacked ``code``."""
    building = destination.with_name(destination.name + ".part")
    shutil.rmtree(building, ignore_errors=True)
    _run(
        "create the virtualenv",
        [sys.executable, "-m", "venv", str(building)],
        cwd=code,
        timeout=timeout,
    )
    environment = venv_variables(building)
    if (code / INIT_SCRIPT).exists():
        _run("run init.sh", ["sh", INIT_SCRIPT], cwd=code, timeout=timeout, env=environment)
    if (code / REQUIREMENTS).exists():
        _run(
            "install requirements.txt",
            [
                str(building / "bin" / "python"),
                *PIP[1:],
                "install",
                "--no-input",
                "--find-links",
                str(wheelhouse),
                "-r",
                REQUIREMENTS,
            ],
            cwd=code,
            timeout=timeout,
            env=environment,
        )
    shutil.rmtree(destination, ignore_errors=True)
    building.rename(destination)
    return Environment(destination)


def venv_variables(venv: Path) -> dict[str, str]:
    """The process environment with the venv active (as ``activate`` would set it).

    The server's own ``CONVEYOR_*`` settings (database URL, secret key) are left out.
    """
    variables = {key: value for key, value in os.environ.items() if not key.startswith("CONVEYOR_")}
    variables.pop("PYTHONHOME", None)
    variables["VIRTUAL_ENV"] = str(venv)
    variables["PATH"] = f"{venv / 'bin'}{os.pathsep}{variables.get('PATH', '')}"
    return variables


def _run(
    step: str,
    command: list[str],
    *,
    cwd: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> None:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConsumerSetupError(step, f"did not finish in {timeout:g} s") from None
    except OSError as error:
        raise ConsumerSetupError(step, str(error)) from None
    if done.returncode != 0:
        output = done.stdout.decode("utf-8", "replace").strip()[-OUTPUT_TAIL:]
        raise ConsumerSetupError(step, f"exit status {done.returncode}: {output}")
