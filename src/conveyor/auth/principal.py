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

    def may_see(self, owner: str) -> bool:
        """Users see what they own; admins see everything."""
        return self.admin or owner == self.user
