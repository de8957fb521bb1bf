"""What a Pacifica consumer imports: ``download`` and ``upload``, each returning a Promise.

Conveyor runs a consumer as ``python __main__.py SRC DST`` with its inputs already laid out
in ``SRC/downloads`` and the event in ``SRC/notification.json``, and with these in the
environment: ``CONVEYOR_URL`` and ``CONVEYOR_TOKEN`` (a token scoped to this run), and
``CONVEYOR_PROVENANCE`` (JSON key-values recorded on every transaction the run publishes).
The server records a run's provenance itself, whatever a bundle says; the key-values are
sent anyway for a producer that cannot tell (``conveyor consumer serve`` publishes with a
user's token), and take the place of any the consumer passes under the same keys.

``download(SRC)`` resolves with the event. ``upload(DST, attributes, key_values)``
publishes ``DST/uploads`` as a new transaction through Conveyor's ingest API, waits for it,
and resolves with the finished job. It also writes that job to ``CONVEYOR_RUN_RECORD``
when set (a path outside SRC and DST), so the runner knows the consumer published itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from promise import Promise

# Polling the publishing job: quick at first (a small bundle is done in tens of ms).
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 1.0
WAIT_SECONDS = 3600.0
FINISHED = ("succeeded", "failed", "cancelled")


def download(src: str) -> Promise:
    """The event the consumer runs for (its inputs are in ``SRC/downloads`` already)."""

    def run(resolve: Any, reject: Any) -> None:
        try:
            resolve(json.loads((Path(src) / "notification.json").read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            reject(error)

    return Promise(run)


def upload(dst: str, attributes: dict[str, Any], key_values: dict[str, Any]) -> Promise:
    """Publish ``DST/uploads`` as a new transaction; resolves with the finished job."""

    def run(resolve: Any, reject: Any) -> None:
        try:
            resolve(_publish(Path(dst) / "uploads", attributes, key_values))
        except Exception as error:  # every failure is the promise's rejection
            reject(error)

    return Promise(run)


def _publish(folder: Path, attributes: dict[str, Any], key_values: dict[str, Any]) -> Any:
    metadata: list[dict[str, Any]] = [
        {"destinationTable": name, "value": value} for name, value in attributes.items()
    ]
    provenance = json.loads(os.environ.get("CONVEYOR_PROVENANCE") or "{}")
    for key, value in {**key_values, **provenance}.items():  # one value per key
        metadata.append(
            {"destinationTable": "TransactionKeyValue", "key": key, "value": str(value)}
        )
    with tempfile.TemporaryFile() as bundle:
        with tarfile.open(fileobj=bundle, mode="w") as tar:
            for path in _files(folder):
                subdir = path.parent.relative_to(folder).as_posix()
                subdir = "" if subdir == "." else subdir
                metadata.append(_describe(path, subdir))
                tar.add(
                    path, arcname="/".join(part for part in ("data", subdir, path.name) if part)
                )
            document = json.dumps(metadata).encode()
            info = tarfile.TarInfo("metadata.txt")
            info.size = len(document)
            tar.addfile(info, fileobj=io.BytesIO(document))
        size = bundle.tell()
        bundle.seek(0)
        job = _call("POST", "/api/v1/ingest", bundle, size)
    deadline = time.monotonic() + WAIT_SECONDS
    delay = POLL_FIRST_SECONDS
    while job["state"] not in FINISHED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job['id']} did not finish in {WAIT_SECONDS:g} s")
        time.sleep(delay)
        delay = min(POLL_MAX_SECONDS, delay * 1.5)
        job = _call("GET", f"/api/v1/jobs/{job['id']}")
    if job["state"] != "succeeded":
        raise RuntimeError(f"publishing failed at {job['task']!r}: {job['error']}")
    record = os.environ.get("CONVEYOR_RUN_RECORD")
    if record:
        Path(record).write_text(json.dumps(job), encoding="utf-8")
    return job


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _describe(path: Path, subdir: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(chunk)
    status = path.stat()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(status.st_mtime))
    return {
        "destinationTable": "Files",
        "name": path.name,
        "subdir": subdir,
        "size": status.st_size,
        "hashtype": "sha256",
        "hashsum": digest.hexdigest(),
        "mimetype": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "ctime": stamp,
        "mtime": stamp,
    }


def _call(method: str, path: str, body: Any = None, size: int = 0) -> Any:
    url = os.environ["CONVEYOR_URL"].rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"CONVEYOR_URL must be an http(s) URL, not {url!r}")
    request = urllib.request.Request(url, method=method)  # noqa: S310 - scheme checked above
    if os.environ.get("CONVEYOR_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['CONVEYOR_TOKEN']}")
    if body is not None:
        request.add_header("Content-Type", "application/x-tar")
        request.add_header("Content-Length", str(size))
        request.data = body
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:  # noqa: S310 - checked
            return json.load(answer)
    except urllib.error.HTTPError as error:  # the server's reason, not only its status
        raise RuntimeError(f"{method} {path}: {error.code} {_reason(error)}") from None


def _reason(error: urllib.error.HTTPError) -> str:
    body = error.read().decode("utf-8", "replace")
    try:
        return str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return body[:2000]
