"""``conveyor motrpac``: take MoTrPAC zip requests from an AMQP queue."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from conveyor.cli.common import UNAVAILABLE, amqp_url_or_die, die, settings_or_die
from conveyor.observability.logs import configure_logging

motrpac_app = typer.Typer(help="MoTrPAC zip requests.", no_args_is_help=True)


@motrpac_app.command("consume")
def consume(
    queue: Annotated[str, typer.Option(help="The queue FileDownloadMessages arrive on.")],
    broker: Annotated[
        str | None, typer.Option(help="AMQP URL of the queue's broker (default: the broker).")
    ] = None,
) -> None:
    """Record every FileDownloadMessage of QUEUE as a zip cart, acknowledging each once saved."""
    from conveyor.carts.motrpac_queue import consume as consume_queue
    from conveyor.runtime import Runtime

    settings = settings_or_die()
    configure_logging(settings.log_format, settings.log_level)
    url = amqp_url_or_die(broker, settings, "motrpac consume")
    try:
        runtime = Runtime.open(settings)
    except UNAVAILABLE as exc:
        die(str(exc))
    runtime.executor.start()
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        consume_queue(runtime, url, queue, stop)
    finally:
        runtime.close()
