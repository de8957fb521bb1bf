"""Server-side commands: serve, worker, db, admin. They use the database directly."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy.orm import Session

from conveyor.auth import tokens
from conveyor.cli.common import die, out, print_json, settings_or_die
from conveyor.config import Settings, is_loopback
from conveyor.db.engine import Database, DatabaseUnavailable
from conveyor.db.migrate import current_revision, head_revision, upgrade
from conveyor.heap import freeze_startup_objects
from conveyor.ingest import policy
from conveyor.observability.logs import configure_logging

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(
    help="Administration: tokens, projects, instruments, users.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
project_app = typer.Typer(help="Projects.", no_args_is_help=True)
instrument_app = typer.Typer(help="Instruments.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
admin_app.add_typer(token_app, name="token")
admin_app.add_typer(project_app, name="project")
admin_app.add_typer(instrument_app, name="instrument")
admin_app.add_typer(user_app, name="user")
archive_app = typer.Typer(help="The archive.", no_args_is_help=True)
admin_app.add_typer(archive_app, name="archive")


def _database(settings: Settings) -> Database:
    database = Database(settings.database_url)
    try:
        database.wait_until_ready(settings.db_connect_attempts, settings.db_connect_wait)
    except DatabaseUnavailable as exc:
        die(str(exc))
    upgrade(database)
    return database


@contextmanager
def admin_session() -> Iterator[Session]:
    """A session on the configured database, migrated, for one admin command."""
    settings = settings_or_die()
    configure_logging(settings.log_format, "WARNING")
    database = _database(settings)
    try:
        with database.session() as session:
            yield session
    except policy.PolicyError as exc:
        die(str(exc))
    finally:
        database.dispose()


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    workers: Annotated[int | None, typer.Option(help="In-process job workers.")] = None,
    processes: Annotated[
        int, typer.Option(help="Server processes sharing the port, each with its own workers.")
    ] = 1,
) -> None:
    """Run the API (and, without a broker, the job workers in this process)."""
    import uvicorn

    from conveyor.jobs.celery_app import BrokerUnavailable, wait_for_broker
    from conveyor.runtime import Runtime
    from conveyor.web.app import create_app

    overrides = {"workers": workers} if workers else {}
    settings = settings_or_die(**overrides)
    if not settings.public_url:
        # Consumers run here call the API back at this server's own address.
        settings.public_url = f"http://{_reachable(host)}:{port}"
    configure_logging(settings.log_format, settings.log_level)
    if settings.auth == "none" and not is_loopback(host):
        die(
            f"CONVEYOR_AUTH=none only serves on loopback; {host} is not. "
            "Use CONVEYOR_AUTH=token or proxy-header, or --host 127.0.0.1"
        )
    try:
        runtime = Runtime.open(settings)
        if settings.uses_broker:
            wait_for_broker(settings)
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        die(str(exc))
    except Exception as exc:  # archive or migration problems: one line, not a traceback
        die(f"cannot start: {type(exc).__name__}: {exc}")
    runtime.executor.start()
    mode = (
        "celery workers via broker"
        if settings.uses_broker
        else f"{settings.workers} in-process workers"
    )
    log.info("conveyor on http://%s:%s (%s; archive %s)", host, port, mode, runtime.archive.url)
    if processes > 1:
        _serve_processes(runtime, host, port, processes, workers)
        return
    # The app's shutdown closes the runtime: after it, uvicorn raises the signal that
    # stopped it again, which ends the process before any code after run() (a finally).
    app = create_app(runtime=runtime, close_runtime=True)
    freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


def _reachable(host: str) -> str:
    """An address of this machine to call a server listening on ``host``."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is answered on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    beat: Annotated[
        bool, typer.Option(help="Also run Celery beat here (scheduled mirror runs); run one.")
    ] = False,
    queues: Annotated[
        str,
        typer.Option(
            help="Lanes to work: jobs, consumers or both (run consumers on their own workers "
            "so long consumer runs never hold every thread their outputs need)."
        ),
    ] = "jobs,consumers",
) -> None:
    """Run a Celery worker (needs CONVEYOR_BROKER_URL)."""
    from conveyor.jobs.celery_app import (
        QUEUES,
        BrokerUnavailable,
        bind_runtime,
        celery_app,
        wait_for_broker,
    )
    from conveyor.jobs.executors import Sweeper
    from conveyor.runtime import Runtime

    settings = settings_or_die()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.uses_broker:
        die("conveyor worker needs CONVEYOR_BROKER_URL (amqp://… or redis://…)")
    lanes = [lane.strip() for lane in queues.split(",") if lane.strip()]
    unknown = [lane for lane in lanes if lane not in QUEUES]
    if unknown or not lanes:
        die(f"--queues takes {' and/or '.join(QUEUES)}, not {queues!r}")
    try:
        runtime = Runtime.open(settings)
        wait_for_broker(settings)
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        die(str(exc))
    bind_runtime(runtime)
    sweeper = Sweeper(runtime, runtime.executor)
    sweeper.start()
    if runtime.transfer_workers is not None:
        runtime.transfer_workers.warm()
    freeze_startup_objects()
    try:
        celery_app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency or settings.workers}",
                "--without-gossip",
                "--without-mingle",
                f"--queues={','.join(QUEUES[lane] for lane in lanes)}",
                f"--loglevel={settings.log_level}",
                *(
                    ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
                    if beat
                    else []
                ),
            ]
        )
    finally:
        sweeper.stop()
        runtime.close()


def _serve_processes(
    runtime: Runtime, host: str, port: int, processes: int, workers: int | None
) -> None:
    """Several server processes on one port; the database keeps them from doing work twice."""
    import uvicorn

    # This process checked the settings and migrated the database; each server process
    # opens its own runtime from the same environment.
    runtime.close()
    if workers:
        os.environ["CONVEYOR_WORKERS"] = str(workers)
    os.environ["CONVEYOR_PUBLIC_URL"] = runtime.settings.public_url
    uvicorn.run(
        "conveyor.web.app:app_from_environment",
        factory=True,
        workers=processes,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending schema migration."""
    settings = settings_or_die()
    database = _database(settings)
    out.print(f"database at revision {current_revision(database)}")
    database.dispose()


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision (and whether it is the newest this code knows)."""
    settings = settings_or_die()
    database = Database(settings.database_url)
    current = current_revision(database)
    head = head_revision()
    out.print(f"current {current}, newest {head}")
    database.dispose()
    if current != head:
        raise typer.Exit(1)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="The user the token acts as.")],
    admin: Annotated[bool, typer.Option("--admin", help="Grant admin rights.")] = False,
    label: Annotated[str, typer.Option(help="A note on what the token is for.")] = "",
) -> None:
    """Issue a token and print it (it is shown only this once)."""
    with admin_session() as session:
        issued = tokens.create_token(session, user, admin, label)
    print_json(
        {"id": issued.id, "user": issued.user, "admin": issued.admin, "token": issued.secret}
    )


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="The token's id.")]) -> None:
    """Revoke a token at once."""
    with admin_session() as session:
        if not tokens.revoke_token(session, token_id):
            die(f"token {token_id} does not exist or is already revoked")
    out.print(f"token {token_id} revoked")


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    with admin_session() as session:
        rows = [
            {
                "id": row.id,
                "user": row.user_id,
                "admin": row.admin,
                "label": row.label,
                "revoked": row.revoked_at is not None,
            }
            for row in tokens.list_tokens(session)
        ]
    print_json(rows)


@project_app.command("add")
def project_add(
    project_id: Annotated[str, typer.Argument(help="The project's id.")],
    title: Annotated[str, typer.Option(help="A title.")] = "",
) -> None:
    """Register a project."""
    with admin_session() as session:
        policy.add_project(session, project_id, title)
        print_json(policy.describe_project(session, project_id))


@instrument_app.command("add")
def instrument_add(
    instrument_id: Annotated[str, typer.Argument(help="The instrument's id.")],
    project: Annotated[list[str], typer.Option(help="A project it delivers to (repeatable).")],
    name: Annotated[str, typer.Option(help="A name.")] = "",
) -> None:
    """Register an instrument for one or more projects."""
    with admin_session() as session:
        policy.add_instrument(session, instrument_id, name, project)
    print_json({"id": instrument_id, "projects": project})


@user_app.command("add")
def user_add(
    user_id: Annotated[str, typer.Argument(help="The user's id.")],
    project: Annotated[
        list[str] | None, typer.Option(help="A project to join (repeatable).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
) -> None:
    """Register a user as a member of projects."""
    with admin_session() as session:
        policy.add_user(session, user_id, admin, project or [])
    print_json({"id": user_id, "admin": admin, "projects": project or []})


@archive_app.command("gc")
def archive_gc(
    min_age: Annotated[
        float, typer.Option(help="Only blobs older than this many seconds.", min=0)
    ] = 86400.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete blobs nothing refers to (left by crashed writers)."""
    from conveyor.ingest.staging import collect_garbage
    from conveyor.storage.archive import open_archive

    settings = settings_or_die()
    configure_logging(settings.log_format, "WARNING")
    database = _database(settings)
    try:
        report = collect_garbage(database, open_archive(settings.archive_url), min_age, dry_run)
    finally:
        database.dispose()
    print_json(
        {
            "checked": report.checked,
            "unreferenced": report.unreferenced,
            "removed": 0 if dry_run else report.removed,
            "would_remove": report.removed if dry_run else 0,
            "kept_young": report.kept_young,
        }
    )
