"""``conveyor mirror``: define mirrors from bank files, run them and watch the transfers."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from conveyor.cli.client_cmds import TokenOption, UrlOption, call_api
from conveyor.cli.common import die, err, print_json
from conveyor.client.api import ApiError, ConveyorClient
from conveyor.mirror.definition import MirrorDefinition, parse_definition
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.properties import load_properties

mirror_app = typer.Typer(help="Mirror remote data banks, release by release.", no_args_is_help=True)

FINISHED = ("published", "up_to_date", "failed", "cancelled")
# Each look answers as the run ends, or after this long with progress for the bars.
PROGRESS_SECONDS = 0.5


def read_definition(path: Path, name: str | None) -> tuple[MirrorDefinition, str]:
    """A definition file (BioMAJ ``.properties``, TOML, YAML or JSON) and its origin."""
    try:
        if path.suffix == ".properties":
            return load_properties(path, name=name), "biomaj"
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            die(f"{path}: use a .properties, .toml, .yaml or .json file")
    except (OSError, UnicodeDecodeError) as error:
        die(f"{path}: {error}")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as error:
        die(f"{path}: {error}")
    except DefinitionError as error:
        die(str(error))
    if not isinstance(data, dict):
        die(f"{path}: a mirror definition is a mapping of keys to values")
    if name:
        data["name"] = name
    try:
        return parse_definition(data), "native"
    except DefinitionError as error:
        die(f"{path}: {error}")


@mirror_app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="bank.properties, or a .toml/.yaml/.json file.")],
    name: Annotated[str | None, typer.Option(help="The mirror's name (default: db.name).")] = None,
    replace: Annotated[bool, typer.Option(help="Replace a mirror of that name.")] = False,
    url: UrlOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Define a mirror; BIOMAJ_* variables of this shell override the bank file's keys."""
    definition, origin = read_definition(path, name)
    body = definition.model_dump(mode="json", context={"reveal": True})
    with ConveyorClient(url, token) as client:
        try:
            if replace:
                saved = client.request("PUT", f"/api/v1/mirrors/{definition.name}", json=body)
            else:
                saved = client.request(
                    "POST", "/api/v1/mirrors", params={"origin": origin}, json=body
                )
        except ApiError as error:
            die(error.message)
    print_json(saved)


@mirror_app.command("list")
def list_mirrors(url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None) -> None:
    """The mirrors you own (all of them for an admin)."""
    print_json(call_api(url, token, "GET", "/api/v1/mirrors"))


@mirror_app.command("show")
def show(name: str, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None) -> None:
    """One mirror: definition (no passwords), last release."""
    print_json(call_api(url, token, "GET", f"/api/v1/mirrors/{name}"))


@mirror_app.command("remove")
def remove(name: str, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None) -> None:
    """Remove a mirror (its published releases stay)."""
    call_api(url, token, "DELETE", f"/api/v1/mirrors/{name}")
    err.print(f"mirror {name} removed")


@mirror_app.command("runs")
def runs(name: str, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None) -> None:
    """A mirror's runs, newest first."""
    print_json(call_api(url, token, "GET", f"/api/v1/mirrors/{name}/runs"))


@mirror_app.command("cancel")
def cancel(
    run_id: int, url: UrlOption = "http://127.0.0.1:8080", token: TokenOption = None
) -> None:
    """Cancel a run; what it downloaded is kept for the next one."""
    print_json(call_api(url, token, "POST", f"/api/v1/mirror-runs/{run_id}/cancel"))


@mirror_app.command("run")
def run(
    name: str,
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
    url: UrlOption = "http://127.0.0.1:8080",
    token: TokenOption = None,
) -> None:
    """Run a mirror now and follow it with progress bars; exit 1 unless it succeeds."""
    with ConveyorClient(url, token) as client:
        try:
            started = client.request("POST", f"/api/v1/mirrors/{name}/runs")
            final = _follow(client, int(started["id"])) if wait else started
        except ApiError as error:
            die(error.message)
    print_json(final)
    if wait and final["state"] not in ("published", "up_to_date"):
        raise typer.Exit(1)


def _follow(client: ConveyorClient, run_id: int) -> dict[str, Any]:
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("queued", total=None)
        while True:
            asked = time.monotonic()
            state: dict[str, Any] = client.request(
                "GET", f"/api/v1/mirror-runs/{run_id}?wait={PROGRESS_SECONDS}"
            )
            finished = state["files_done"] + state["files_reused"] + state["files_failed"]
            release = f" {state['release']}" if state["release"] else ""
            bar.update(
                task,
                description=f"{state['state']}{release}: {finished}/{state['files_total']} files",
                total=state["bytes_total"] or None,
                completed=state["bytes_done"],
            )
            if state["state"] in FINISHED:
                return state
            # A server older than ?wait= answers at once: never ask more often than a tick.
            time.sleep(max(0.0, PROGRESS_SECONDS - (time.monotonic() - asked)))
