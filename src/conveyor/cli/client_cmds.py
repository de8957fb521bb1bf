"""Client verbs: they talk to a server over HTTP (``--url``, ``--token``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from conveyor.cli.common import die, err, print_json
from conveyor.client.api import ApiError, ConveyorClient
from conveyor.client.bundler import BundleSourceError, BundleStream, collect, metadata_fields

job_app = typer.Typer(help="Follow and manage jobs.", no_args_is_help=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="CONVEYOR_URL", help="The server.")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="CONVEYOR_TOKEN", help="API token.")
]


def _client(url: str, token: str | None) -> ConveyorClient:
    return ConveyorClient(url, token)


def _parse_kv(pairs: list[str]) -> list[tuple[str, str]]:
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            die(f"--kv {pair!r} is not key=value")
        parsed.append((key, value))
    return parsed


def upload(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to upload.")],
    project: Annotated[str, typer.Option(help="The project the data belongs to.")],
    instrument: Annotated[str | None, typer.Option(help="The instrument that made it.")] = None,
    kv: Annotated[
        list[str] | None, typer.Option(help="A key=value to attach (repeatable).")
    ] = None,
    submitter: Annotated[
        str | None, typer.Option(help="Submitter (servers with auth off).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the transaction.")] = True,
    url: UrlOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Stream PATHs as a Pacifica bundle (no temporary file), wait, print the transaction."""
    try:
        files = collect(paths)
    except (BundleSourceError, OSError) as exc:
        die(str(exc))
    if not files:
        die("nothing to upload: the paths hold no files")
    stream = BundleStream(
        files, metadata_fields(project, instrument, _parse_kv(kv or []), submitter)
    )
    total = sum(item.size for item in files)
    with _client(url, token) as client:
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task(f"uploading {len(files)} files", total=total)
                job = client.upload(stream.chunks(lambda n: bar.advance(task, n)), stream.length())
            err.print(f"job {job['id']} accepted; waiting for it to finish")
            if not wait:
                print_json(job)
                return
            job = client.wait(int(job["id"]))
            if job["state"] != "succeeded":
                print_json(job)
                die(f"job {job['id']} failed at {job['task']!r}: {job['error']}", code=1)
            print_json(client.request("GET", f"/api/v1/transactions/{job['transaction_id']}"))
        except (ApiError, BundleSourceError) as exc:
            die(str(exc), code=1)


def call_api(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One API request; its JSON answer, or a one-line error and exit code 1."""
    with _client(url, token) as client:
        try:
            return client.request(method, path, **kwargs)
        except ApiError as exc:
            die(str(exc), code=1)


@job_app.command("show")
def job_show(
    job_id: int, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None
) -> None:
    """Show one job."""
    print_json(call_api(url, token, "GET", f"/api/v1/jobs/{job_id}"))


@job_app.command("list")
def job_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(help="How many.", min=1, max=1000)] = 50,
    url: UrlOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """List jobs, newest first."""
    params = {k: v for k, v in {"state": state, "kind": kind, "limit": limit}.items() if v}
    print_json(call_api(url, token, "GET", "/api/v1/jobs", params=params)["jobs"])


@job_app.command("set-state")
def job_set_state(
    job_id: Annotated[int, typer.Option("--job-id", help="The job.")],
    state: Annotated[str, typer.Option("--state", help="OK, FAILED, or a native state.")],
    task: Annotated[str | None, typer.Option("--task", help="The task name.")] = None,
    task_percent: Annotated[float | None, typer.Option("--task-percent", help="0 to 100.")] = None,
    exception: Annotated[str | None, typer.Option("--exception", help="The error text.")] = None,
    url: UrlOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Force a job's state (admin), with the published ``job`` command's flags."""
    body = {"state": state, "task": task, "task_percent": task_percent, "exception": exception}
    print_json(call_api(url, token, "POST", f"/api/v1/jobs/{job_id}/state", json=body))


@job_app.command("retry")
def job_retry(
    job_id: int, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None
) -> None:
    """Run a failed job again (admin)."""
    print_json(call_api(url, token, "POST", f"/api/v1/jobs/{job_id}/retry"))
