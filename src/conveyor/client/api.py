"""A small synchronous client for the native API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """The server answered with an error; the message is its problem detail."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ConveyorClient:
    """Talks to one Conveyor server with an optional API token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> ConveyorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("detail") or body.get("message") or response.text
            except ValueError:
                message = response.text or response.reason_phrase
            raise ApiError(response.status_code, str(message))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the decoded JSON answer, or raise :class:`ApiError`."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach {self.http.base_url}: {exc}") from None
        return self._check(response)

    def upload(self, chunks: Iterator[bytes], length: int) -> dict[str, Any]:
        """Stream a bundle; the job the server created for it."""
        headers = {"Content-Type": "application/x-tar", "Content-Length": str(length)}
        result: dict[str, Any] = self.request(
            "POST", "/api/v1/ingest", content=chunks, headers=headers, timeout=None
        )
        return result

    def job(self, job_id: int) -> dict[str, Any]:
        """One job."""
        result: dict[str, Any] = self.request("GET", f"/api/v1/jobs/{job_id}")
        return result

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Poll the job until it finishes (backing off from 0.2 s to 2 s)."""
        delay = 0.2
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, f"job {job_id} did not finish within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
