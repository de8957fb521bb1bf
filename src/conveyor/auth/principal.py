"""Who is asking."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """An authenticated user (or, with auth off, the configured default user)."""

    user: str
    admin: bool
    authenticated: bool
    # A scoped token's scope (see conveyor.auth.scopes); None for a full token.
    scope: str | None = None
    # The consumer run (job id) whose token made the request: its ingests record that run's
    # provenance. Set with auth off too, where the token is not needed to get in.
    run_job: int | None = None

    def may_see(self, owner: str) -> bool:
        """Users see what they own; admins see everything."""
        return self.admin or owner == self.user
