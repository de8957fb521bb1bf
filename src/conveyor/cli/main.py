"""``conveyor``: server, worker, admin and client verbs."""

from __future__ import annotations

import typer

from conveyor.cli import client_cmds, server
from conveyor.cli.biomaj_cmds import biomaj_app
from conveyor.cli.consumer_cmds import consumer_app
from conveyor.cli.events_cmds import events_app
from conveyor.cli.mirror_cmds import mirror_app
from conveyor.cli.motrpac_cmds import motrpac_app

app = typer.Typer(
    help="Conveyor moves research data: ingest, archive, follow jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(server.serve)
app.command()(server.worker)
app.command()(client_cmds.upload)
app.add_typer(server.db_app, name="db")
app.add_typer(server.admin_app, name="admin")
app.add_typer(client_cmds.job_app, name="job")
app.add_typer(mirror_app, name="mirror")
app.add_typer(events_app, name="events")
app.add_typer(consumer_app, name="consumer")
app.add_typer(biomaj_app, name="biomaj")
app.add_typer(motrpac_app, name="motrpac")
