"""``conveyor consumer serve``: a consumer on another machine, fed by a producing Conveyor.

The deployment the Pacifica consumer document describes: install the package locally,
open a webhook endpoint, subscribe it with the producer (the consumer's jsonpath2 filter,
Pacifica-shaped events), run the entry point on each event with inputs downloaded through
the producer's API, publish ``DST/uploads`` back through it, and remove the subscription
on stop. Each event is written to a spool folder before the webhook is answered, so one
the consumer accepted survives a restart; an event id already spooled is not run twice.
Each run's process gets a ``consumer-run`` token of its own from the producer (publish and
read only, revoked when the run ends), never the operator's token.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conveyor.auth.scopes import RUN_TOKEN_MARGIN_SECONDS
from conveyor.client.api import ApiError, ConveyorClient
from conveyor.client.bundler import BundleFile, BundleStream, metadata_fields
from conveyor.consumers.installed import Installed, installed
from conveyor.consumers.package import read_package
from conveyor.consumers.provenance import Lineage
from conveyor.consumers.registry import DEFAULT_FILTER
from conveyor.consumers.workspace import (
    ConsumerFailed,
    InputFile,
    RunLimits,
    Workspace,
    input_files,
    lay_out,
    publishable,
    run_entry_point,
)
from conveyor.ingest.events import metadata_value

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024 * 1024
RUN_RECORD = "published.json"
RUN_TOKENS = "/api/v1/tokens/consumer-run"


@dataclass(frozen=True)
class RemoteOptions:
    """Where the consumer runs and how it is reached and limited."""

    producer_url: str
    token: str | None
    work_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    # The URL the producer calls (default: http://listen_host:port/events).
    callback_url: str | None = None
    name: str | None = None
    allow_self: bool = False
    max_depth: int = 5
    timeout_seconds: float = 3600.0
    memory_bytes: int = 4 * 1024**3
    file_bytes: int = 16 * 1024**3
    open_files: int = 1024
    uploads_bytes: int = 64 * 1024**3

    @property
    def limits(self) -> RunLimits:
        """What each run may use."""
        return RunLimits(
            self.timeout_seconds,
            self.memory_bytes,
            self.file_bytes,
            self.open_files,
            self.uploads_bytes,
        )


class RemoteConsumer:
    """One consumer.zip served against a producer; ``start``, then ``stop``."""

    def __init__(self, package_path: Path, options: RemoteOptions) -> None:
        self.options = options
        self.package = read_package(package_path)
        self.name = options.name or self.package.root or package_path.stem
        self.spool = options.work_dir / "spool"
        self.done = options.work_dir / "done"
        self.client = ConveyorClient(options.producer_url, options.token, timeout=600.0)
        self.subscription_id: str | None = None
        self._secret = ""
        self._ready: Installed | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.runs: list[dict[str, Any]] = []

    @property
    def callback_url(self) -> str:
        """The URL the producer delivers events to."""
        if self.options.callback_url:
            return self.options.callback_url
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://{self.options.listen_host}:{port}/events"

    def start(self) -> None:
        """Install, listen, subscribe; events are then run as they arrive."""
        # Fails at once, not on every run, where runs could get no token of their own (a
        # producer without the route, a scoped --token, a timeout over the server's maximum).
        self._revoke_run_token(self._issue_run_token("check")[0])
        for folder in (self.spool, self.done):
            folder.mkdir(parents=True, exist_ok=True)
        package_path = self.package.path
        self._ready = installed(
            self.options.work_dir / "installed",
            self.package.sha256,
            lambda target: _copy(package_path, target),
        )
        self._server = ThreadingHTTPServer(
            (self.options.listen_host, self.options.listen_port), _handler_for(self)
        )
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="consumer-http", daemon=True),
            threading.Thread(target=self._work, name="consumer-runs", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        created = self.client.request(
            "POST",
            "/api/v1/subscriptions",
            json={
                "name": f"consumer {self.name} at {self.callback_url}",
                "target": self.callback_url,
                "filter": self.package.filter_text or DEFAULT_FILTER,
                "dialect": "jsonpath2",
                "shape": "pacifica",
            },
        )
        self.subscription_id, self._secret = created["id"], created["secret"]
        self._wake.set()  # events spooled before a restart
        log.info("consumer %s subscribed as %s", self.name, self.subscription_id)

    def stop(self) -> None:
        """Unsubscribe, stop listening, let the run in progress finish."""
        self._stopping.set()
        try:
            if self.subscription_id is not None:
                self.client.request("DELETE", f"/api/v1/subscriptions/{self.subscription_id}")
                self.subscription_id = None
        finally:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            self._wake.set()
            for thread in self._threads:
                thread.join()
            self.client.close()

    def accept(self, body: bytes, headers: dict[str, str]) -> HTTPStatus:
        """Verify a delivery and spool it; the answer the producer gets."""
        if not self._secret:
            return HTTPStatus.SERVICE_UNAVAILABLE
        try:
            Webhook(self._secret).verify(body, headers)
        except WebhookVerificationError:
            return HTTPStatus.UNAUTHORIZED
        try:
            event = json.loads(body)
        except ValueError:
            return HTTPStatus.BAD_REQUEST
        if not isinstance(event, dict):
            return HTTPStatus.BAD_REQUEST
        event_id = str(headers.get("webhook-id") or event.get("eventID") or "")
        if not event_id or "/" in event_id or event_id.startswith("."):
            return HTTPStatus.BAD_REQUEST
        # Spool before done: a run finishing between the two checks is still seen.
        if (self.spool / f"{event_id}.json").exists() or (self.done / event_id).exists():
            return HTTPStatus.NO_CONTENT
        part = self.spool / f".{event_id}.{uuid.uuid4().hex}"
        part.write_bytes(body)
        part.replace(self.spool / f"{event_id}.json")
        self._wake.set()
        return HTTPStatus.NO_CONTENT

    def _work(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            for path in sorted(self.spool.glob("*.json"), key=lambda item: item.stat().st_mtime):
                if self._stopping.is_set():
                    return
                self._run_spooled(path)

    def _run_spooled(self, path: Path) -> None:
        event_id = path.stem
        if (self.done / event_id).exists():  # ran before a crash kept its spool file
            path.unlink()
            return
        try:
            outcome = self.run_event(json.loads(path.read_bytes()), event_id)
        except Exception as error:  # one bad event must not stop the consumer
            log.exception("consumer %s failed on event %s", self.name, event_id)
            outcome = {"event": event_id, "state": "failed", "error": str(error)}
        self.runs.append(outcome)
        (self.done / event_id).write_text(json.dumps(outcome), encoding="utf-8")
        path.unlink()

    def run_event(self, event: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Run the consumer on one event; what came of it."""
        lineage = Lineage.of_document(event)
        refusal = lineage.refusal(self.name, self.options.allow_self, self.options.max_depth)
        if refusal is not None:
            return {"event": event_id, "state": "skipped", "error": refusal}
        assert self._ready is not None
        input_id = metadata_value(event.get("data"), "Transactions._id")
        root = self.options.work_dir / "runs" / event_id
        shutil.rmtree(root, ignore_errors=True)
        values = lineage.provenance(self.name, self.package.version, f"remote:{event_id}", input_id)
        try:
            space = lay_out(root, event, input_files(event), self._download)
            record = root / RUN_RECORD
            self._run_with_token(space, event_id, values, record)
            if record.exists():
                job = json.loads(record.read_text(encoding="utf-8"))
            else:
                job = self._publish(space, event, values)
        except (ConsumerFailed, ApiError) as error:
            return {"event": event_id, "state": "failed", "error": str(error)}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return {
            "event": event_id,
            "state": "succeeded",
            "transaction_id": job.get("transaction_id") if job else None,
        }

    def _run_with_token(
        self, space: Workspace, event_id: str, values: dict[str, str], record: Path
    ) -> None:
        """Run the entry point with a consumer-run token of its own (never the operator's),
        revoked once the process has ended."""
        assert self._ready is not None
        try:
            token_id, secret = self._issue_run_token(f"remote:{event_id}")
        except ApiError as error:
            raise ConsumerFailed(f"getting the run's token from the producer: {error}") from None
        try:
            run_entry_point(
                self._ready.environment,
                self._ready.code,
                space,
                variables={
                    "CONVEYOR_URL": self.options.producer_url,
                    "CONVEYOR_TOKEN": secret,
                    "CONVEYOR_PROVENANCE": json.dumps(values),
                    "CONVEYOR_CONSUMER": self.name,
                    "CONVEYOR_RUN_RECORD": str(record),
                },
                limits=self.options.limits,
            )
        finally:
            self._revoke_run_token(token_id)

    def _issue_run_token(self, run: str) -> tuple[int, str]:
        """A consumer-run token from the producer, as the operator's user; its id and secret."""
        issued = self.client.request(
            "POST",
            RUN_TOKENS,
            json={
                "expires_in_seconds": self.options.timeout_seconds + RUN_TOKEN_MARGIN_SECONDS,
                "label": f"consumer {self.name} run {run}"[:255],
            },
        )
        return int(issued["id"]), str(issued["token"])

    def _revoke_run_token(self, token_id: int) -> None:
        """Revoke a run's token; a failure is logged, the token still ends at its expiry."""
        try:
            self.client.request("DELETE", f"/api/v1/tokens/{token_id}")
        except ApiError as error:
            log.warning("consumer %s: run token %s not revoked: %s", self.name, token_id, error)

    def _download(self, item: InputFile, target: Path) -> None:
        with (
            self.client.http.stream("GET", f"/api/v1/files/{item.file_id}/content") as answer,
            target.open("wb") as out,
        ):
            if answer.status_code != HTTPStatus.OK:
                answer.read()
                raise ConsumerFailed(
                    f"downloading file {item.file_id}: {answer.status_code} {answer.text[:200]}"
                )
            for chunk in answer.iter_bytes(1024 * 1024):
                out.write(chunk)

    def _publish(
        self, space: Workspace, event: dict[str, Any], values: dict[str, str]
    ) -> dict[str, Any] | None:
        files = [
            BundleFile(
                path,
                f"{subdir}/{path.name}" if subdir else path.name,
                path.stat().st_size,
                int(path.stat().st_mtime),
            )
            for path, subdir in publishable(space, self.options.uploads_bytes)
        ]
        if not files:
            return None
        project = metadata_value(event.get("data"), "Transactions.project") or ""
        instrument = metadata_value(event.get("data"), "Transactions.instrument")
        stream = BundleStream(
            files,
            metadata_fields(
                str(project),
                str(instrument) if instrument is not None else None,
                sorted(values.items()),
                None,
            ),
        )
        job = self.client.upload(stream.chunks(), stream.length())
        finished = self.client.wait(int(job["id"]), timeout=self.options.timeout_seconds)
        if finished["state"] != "succeeded":
            raise ConsumerFailed(
                f"publishing the outputs failed at {finished['task']!r}: {finished['error']}"
            )
        return finished


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


def _handler_for(consumer: RemoteConsumer) -> Callable[..., BaseHTTPRequestHandler]:
    class EventHandler(BaseHTTPRequestHandler):
        """Accepts signed deliveries on POST /events."""

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/events" or not 0 < length <= MAX_EVENT_BYTES:
                self._answer(HTTPStatus.NOT_FOUND if self.path != "/events" else 400)
                return
            body = self.rfile.read(length)
            headers = {key.lower(): value for key, value in self.headers.items()}
            self._answer(consumer.accept(body, headers))

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("consumer endpoint: " + format, *args)

    return EventHandler
