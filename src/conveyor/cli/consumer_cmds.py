"""``conveyor consumer``: check, install, list and remove consumers; serve one elsewhere."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli.client_cmds import TokenOption, UrlOption, call_api
from conveyor.cli.common import byte_size, die, err, print_json
from conveyor.client.api import ApiError, ConveyorClient
from conveyor.consumers.environments import ConsumerSetupError, build_environment, shim_wheelhouse
from conveyor.consumers.package import PackageError, read_package, unpack
from conveyor.consumers.remote import RemoteConsumer, RemoteOptions
from conveyor.consumers.workspace import MIN_MEMORY_BYTES
from conveyor.events.filters import FilterError, compile_filter

DEFAULT_URL = "http://127.0.0.1:8080"
consumer_app = typer.Typer(
    help="Consumers: consumer.zip programs run on matching events.", no_args_is_help=True
)


def _memory(text: str) -> int:
    """``--memory``: a size, at least the least a run may be given."""
    size = byte_size(text)
    if size < MIN_MEMORY_BYTES:
        raise typer.BadParameter(f"{text!r} is less than the least a run may have, 64MiB")
    return size


MemoryOption = Annotated[
    int | None,
    typer.Option(
        "--memory",
        parser=_memory,
        metavar="SIZE",
        help="A run's address-space limit: bytes, or 512MiB, 4GiB (binary), 2G (decimal).",
    ),
]


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


@consumer_app.command("add")
def add(
    package_path: Annotated[Path, typer.Argument(help="The consumer.zip to install.")],
    name: Annotated[
        str | None, typer.Option(help="The consumer's name (default: the package's folder).")
    ] = None,
    allow_self: Annotated[
        bool, typer.Option(help="Let its own outputs (directly or via a chain) trigger it.")
    ] = False,
    max_depth: Annotated[
        int | None, typer.Option(help="Runs on data at most this many derivations deep.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds a run may take.")] = None,
    memory: MemoryOption = None,
    wait: Annotated[bool, typer.Option(help="Wait until it is ready (or failed).")] = True,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Install a consumer on the server: its venv is built and it is subscribed."""
    params: dict[str, Any] = {"allow_self": allow_self}
    chosen = name or (package_path.stem if package_path.stem != "consumer" else None)
    for key, value in (
        ("name", chosen),
        ("max_depth", max_depth),
        ("timeout_seconds", timeout),
        ("memory_bytes", memory),
    ):
        if value is not None:
            params[key] = value
    try:
        handle = package_path.open("rb")
        size = package_path.stat().st_size
    except OSError as error:
        die(f"cannot read {package_path}: {error.strerror or error}", code=1)
    with handle:
        created = call_api(
            url,
            token,
            "POST",
            "/api/v1/consumers",
            params=params,
            content=handle,
            headers={"Content-Type": "application/zip", "Content-Length": str(size)},
            timeout=None,
        )
    if not wait:
        print_json(created)
        return
    err.print(f"consumer {created['name']}: setting up (job {created['job_id']})…")
    with ConveyorClient(url, token) as client:
        try:
            client.wait(int(created["job_id"]))
            shown = client.request("GET", f"/api/v1/consumers/{created['name']}")
        except ApiError as error:
            die(str(error), code=1)
    print_json(shown)
    if shown["state"] != "ready":
        die(f"consumer {shown['name']} is {shown['state']}: {shown['error']}", code=1)


@consumer_app.command("list")
def list_consumers(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Installed consumers, their versions and states."""
    print_json(call_api(url, token, "GET", "/api/v1/consumers"))


@consumer_app.command("show")
def show(name: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """One consumer."""
    print_json(call_api(url, token, "GET", f"/api/v1/consumers/{name}"))


@consumer_app.command("remove")
def remove(name: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Remove a consumer and its subscription."""
    call_api(url, token, "DELETE", f"/api/v1/consumers/{name}")
    err.print(f"consumer {name} removed")


@consumer_app.command("serve")
def serve(
    package_path: Annotated[Path, typer.Argument(help="The consumer.zip to run.")],
    producer: Annotated[str, typer.Option(help="The producing Conveyor's URL.")],
    token: TokenOption = None,
    listen: Annotated[
        str, typer.Option(help="host:port for the event endpoint (port 0: any free one).")
    ] = "127.0.0.1:0",
    callback_url: Annotated[
        str | None,
        typer.Option(help="The URL the producer calls (default: http://LISTEN/events)."),
    ] = None,
    work_dir: Annotated[
        Path, typer.Option(help="The venv, the spool of accepted events and run folders.")
    ] = Path("conveyor-consumer"),
    name: Annotated[str | None, typer.Option(help="The consumer's name.")] = None,
    allow_self: Annotated[bool, typer.Option(help="Let its own outputs trigger it.")] = False,
    max_depth: Annotated[int, typer.Option(help="Derivation depth limit.", min=1)] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds a run may take.")] = 3600.0,
    memory: MemoryOption = None,
) -> None:
    """Run a consumer here on a producer's events, until interrupted (then unsubscribe).

    Each run gets a consumer-run token of its own from the producer, not --token.
    """
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        die(f"--listen takes host:port, not {listen!r}")
    if host in ("0.0.0.0", "::", "[::]") and not callback_url:  # noqa: S104 - checked
        die("listening on every interface: give --callback-url, the URL the producer calls")
    options = RemoteOptions(
        producer_url=producer,
        token=token,
        work_dir=work_dir.absolute(),
        listen_host=host,
        listen_port=int(port),
        callback_url=callback_url,
        name=name,
        allow_self=allow_self,
        max_depth=max_depth,
        timeout_seconds=timeout,
        memory_bytes=RemoteOptions.memory_bytes if memory is None else memory,
    )
    try:
        consumer = RemoteConsumer(package_path, options)
        consumer.start()
    except (PackageError, ConsumerSetupError, ApiError) as error:
        die(str(error), code=1)
    err.print(f"consumer {consumer.name} listening at {consumer.callback_url}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    err.print("stopping: removing the subscription…")
    try:
        consumer.stop()
    except ApiError as error:
        die(f"stopped, but the subscription could not be removed: {error}", code=1)
