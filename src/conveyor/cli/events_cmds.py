"""``conveyor events``: subscriptions, the event feed, deliveries and replay, over the API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from conveyor.cli.client_cmds import TokenOption, UrlOption, call_api
from conveyor.cli.common import die, err, print_json

events_app = typer.Typer(
    help="Subscribe targets to events; list, inspect and replay deliveries.",
    no_args_is_help=True,
)
DEFAULT_URL = "http://127.0.0.1:8080"
Limit = Annotated[int, typer.Option(help="How many.", min=1, max=1000)]


@events_app.command("subscribe")
def subscribe(
    name: Annotated[str, typer.Argument(help="A name for the subscription.")],
    target: Annotated[str, typer.Argument(help="http(s)://, amqp://, mqtt:// or nats:// URL.")],
    filter_text: Annotated[
        str, typer.Option("--filter", help="JSONPath; an event matches when it selects anything.")
    ] = "$",
    dialect: Annotated[str, typer.Option(help="rfc9535 or jsonpath2.")] = "rfc9535",
    shape: Annotated[
        str, typer.Option(help="cloudevents (1.0) or pacifica (0.1).")
    ] = "cloudevents",
    mode: Annotated[str, typer.Option(help="structured or binary.")] = "structured",
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only events of this type (repeatable).")
    ] = None,
    bearer: Annotated[
        str | None,
        typer.Option(envvar="CONVEYOR_TARGET_TOKEN", help="Bearer token for the target."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Subscribe a target; prints the subscription and, once only, its signing secret."""
    body: dict[str, Any] = {
        "name": name,
        "target": target,
        "filter": filter_text,
        "dialect": dialect,
        "shape": shape,
        "content_mode": mode,
        "types": event_type or [],
    }
    if bearer:
        body["auth"] = {"type": "bearer", "token": bearer}
    created = call_api(url, token, "POST", "/api/v1/subscriptions", json=body)
    err.print("keep the signing secret: it is not shown again")
    print_json(created)


@events_app.command("subscriptions")
def subscriptions(
    everyone: Annotated[bool, typer.Option("--all", help="Every user's (admins).")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Your subscriptions, with their circuit breakers."""
    params = {"all": "true"} if everyone else {}
    print_json(call_api(url, token, "GET", "/api/v1/subscriptions", params=params))


@events_app.command("unsubscribe")
def unsubscribe(subscription: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Delete a subscription; deliveries not yet made are cancelled."""
    call_api(url, token, "DELETE", f"/api/v1/subscriptions/{subscription}")
    err.print(f"subscription {subscription} deleted")


@events_app.command("pause")
def pause(
    subscription: str,
    resume: Annotated[bool, typer.Option("--resume", help="Resume instead.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Hold a subscription's deliveries (or resume them)."""
    path = f"/api/v1/subscriptions/{subscription}"
    print_json(call_api(url, token, "PATCH", path, json={"paused": not resume}))


@events_app.command("list")
def list_events(
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    after: Annotated[str | None, typer.Option(help="The last event id already seen.")] = None,
    limit: Limit = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Events you may read, oldest first."""
    params = {k: v for k, v in {"type": event_type, "after": after, "limit": limit}.items() if v}
    print_json(call_api(url, token, "GET", "/api/v1/events", params=params))


@events_app.command("show")
def show(event_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """One event, as CloudEvents 1.0."""
    print_json(call_api(url, token, "GET", f"/api/v1/events/{event_id}"))


@events_app.command("deliveries")
def deliveries(
    subscription: Annotated[str | None, typer.Option(help="Only this subscription's.")] = None,
    event: Annotated[str | None, typer.Option(help="Only this event's.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered, dead, …")] = None,
    after: Annotated[int | None, typer.Option(help="The last delivery id already seen.")] = None,
    limit: Limit = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Deliveries with their attempts (status codes, errors, answer excerpts)."""
    given = {
        "subscription": subscription,
        "event": event,
        "state": state,
        "after": after,
        "limit": limit,
    }
    params = {key: value for key, value in given.items() if value is not None}
    print_json(call_api(url, token, "GET", "/api/v1/deliveries", params=params))


@events_app.command("replay")
def replay(
    event_id: Annotated[str | None, typer.Argument(help="An event to deliver again.")] = None,
    delivery: Annotated[
        int | None, typer.Option(help="Instead, send this delivery (a dead letter) again.")
    ] = None,
    subscription: Annotated[
        str | None, typer.Option(help="Only to this subscription (with an event).")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Deliver an event again to its matching subscriptions, or send one delivery again."""
    if (event_id is None) == (delivery is None):
        die("give an EVENT_ID or --delivery ID, not both")
    if delivery is not None:
        print_json(call_api(url, token, "POST", f"/api/v1/deliveries/{delivery}/replay"))
        return
    body = {"subscription": subscription}
    print_json(call_api(url, token, "POST", f"/api/v1/events/{event_id}/replay", json=body))
