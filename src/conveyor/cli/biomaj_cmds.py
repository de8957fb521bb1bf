"""``conveyor biomaj``: stand in for BioMAJ's download service."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from conveyor.cli.common import amqp_url_or_die, die, err, settings_or_die
from conveyor.observability.logs import configure_logging

biomaj_app = typer.Typer(help="BioMAJ's download service.", no_args_is_help=True)


@biomaj_app.command("consume")
def consume(
    queue: Annotated[str, typer.Option(help="The queue BioMAJ sends Operations to.")] = (
        "biomajdownload"
    ),
    broker: Annotated[
        str | None, typer.Option(help="AMQP URL of BioMAJ's RabbitMQ (default: the broker).")
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(help="BioMAJ's Redis URL (default: CONVEYOR_BIOMAJ_REDIS_URL)."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Downloads at once.")] = 4,
    metrics_url: Annotated[
        str | None,
        typer.Option(help="Post per-file metrics to this server's /api/download/metrics."),
    ] = None,
) -> None:
    """Download what each Operation of QUEUE asks, recording progress in BioMAJ's Redis."""
    from conveyor.mirror.biomaj.consumer import consume as consume_queue
    from conveyor.mirror.biomaj.sessions import DownloadSessions

    settings = settings_or_die()
    configure_logging(settings.log_format, settings.log_level)
    url = amqp_url_or_die(broker, settings, "biomaj consume")
    redis_url = redis or settings.biomaj_redis_url
    if not redis_url:
        die("biomaj consume needs BioMAJ's Redis: --redis redis://… or CONVEYOR_BIOMAJ_REDIS_URL")
    sessions = DownloadSessions.from_url(redis_url, settings.biomaj_redis_prefix)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    handled = consume_queue(
        url, sessions, stop, name=queue, threads=threads, metrics_url=metrics_url
    )
    err.print(f"{handled} BioMAJ message(s) handled")
