"""What every command shares: settings, errors as one line, the API client."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console

from conveyor.config import ConfigError, Settings, load_settings
from conveyor.db.engine import DatabaseUnavailable

err = Console(stderr=True)
out = Console()


def die(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_die(**overrides: Any) -> Settings:
    """The settings, or exit with the one line that says what is wrong."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        die(str(exc))


def print_json(value: Any) -> None:
    """Pretty JSON on stdout (plain when piped)."""
    if sys.stdout.isatty():
        out.print_json(data=value)
    else:
        print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def byte_size(text: str) -> int:
    """A size option's bytes: ``4096``, ``512MiB``, ``4GiB`` (binary) or ``2G``, ``2GB``
    (decimal), as pydantic's ByteSize reads them; a bad one is a usage error naming it."""
    try:
        return int(TypeAdapter(ByteSize).validate_python(text.strip()))
    except ValidationError:
        raise typer.BadParameter(
            f"{text!r} is not a size: give bytes or a number with a unit (512MiB, 4GiB, 2G)"
        ) from None


UNAVAILABLE = (DatabaseUnavailable,)


def amqp_url_or_die(broker: str | None, settings: Settings, command: str) -> str:
    """The AMQP URL a queue consumer reads from: ``--broker``, else the configured broker."""
    url = broker or settings.broker_url
    if not url.startswith(("amqp://", "amqps://", "pyamqp://")):
        die(f"{command} needs an AMQP broker: --broker amqp://… or CONVEYOR_BROKER_URL")
    return url
