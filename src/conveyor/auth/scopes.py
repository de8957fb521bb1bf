"""What a scoped token may do: the routes each scope opens, nothing else.

A consumer run gets a ``consumer-run`` token: it may publish a bundle and follow its job,
and read transactions and files (as its user may), but not subscribe, delete or administer.
"""

from __future__ import annotations

import re

from conveyor.errors import Forbidden

CONSUMER_RUN = "consumer-run"
# A run's token outlives the run's timeout by this much (publishing its outputs), then
# expires: the same for runs on the server and for `consumer serve` runs elsewhere.
RUN_TOKEN_MARGIN_SECONDS = 3600.0

ROUTES: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
    CONSUMER_RUN: (
        ("POST", re.compile(r"/api/v1/ingest")),
        ("GET", re.compile(r"/api/v1/jobs/\d+")),
        ("GET", re.compile(r"/api/v1/transactions(/\d+(/files)?)?")),
        ("GET", re.compile(r"/api/v1/files/\d+(/content)?")),
    ),
}


def check_scope(scope: str, method: str, path: str) -> None:
    """Raise :class:`Forbidden` unless a token of ``scope`` may call ``method path``."""
    allowed = ROUTES.get(scope, ())
    verb = "GET" if method == "HEAD" else method
    if not any(verb == want and pattern.fullmatch(path) for want, pattern in allowed):
        raise Forbidden(f"a {scope} token may not {method} {path}")
