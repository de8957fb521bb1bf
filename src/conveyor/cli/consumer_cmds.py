"""``conveyor consumer``: check a consumer.zip and build its environment, as a run would."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.common import die, err, print_json
from conveyor.consumers.environments import ConsumerSetupError, build_environment, shim_wheelhouse
from conveyor.consumers.package import PackageError, read_package, unpack
from conveyor.events.filters import FilterError, compile_filter

consumer_app = typer.Typer(
    help="Consumers: consumer.zip programs run on matching events.", no_args_is_help=True
)


@consumer_app.command("check")
def check(
    package_path: Annotated[Path, typer.Argument(help="The consumer.zip to check.")],
    into: Annotated[
        Path | None,
        typer.Option("--into", help="Keep the unpacked code and venv here (default: a temp dir)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each setup step may take.")] = 1800.0,
) -> None:
    """Check the package, unpack it and build its venv (init.sh, requirements.txt).

    Exit 0 and a summary when it would install; exit 1 with the failing step otherwise.
    """
    try:
        package = read_package(package_path)
    except PackageError as error:
        die(str(error), code=1)
    if package.filter_text is not None:
        try:
            compile_filter("jsonpath2", package.filter_text)
        except FilterError as error:
            die(f"jsonpath2.txt: {error}", code=1)
    with tempfile.TemporaryDirectory(prefix="conveyor-consumer-") as scratch:
        work = into or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        code = unpack(package, work / "code")
        err.print(f"unpacked {len(package.members)} files; building the environment…")
        try:
            environment = build_environment(
                code, work / "venv", shim_wheelhouse(work / "wheels", timeout), timeout
            )
        except ConsumerSetupError as error:
            die(str(error), code=1)
        print_json(
            {
                "package": str(package_path),
                "version": package.version,
                "sha256": package.sha256,
                "files": len(package.members),
                "filter": package.filter_text,
                "init_sh": package.has_init,
                "requirements": package.has_requirements,
                "python": str(environment.python) if into else None,
            }
        )
