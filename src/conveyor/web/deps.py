"""FastAPI dependencies: the runtime and the principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from conveyor.auth.principal import Principal
from conveyor.auth.resolve import authenticate
from conveyor.errors import Forbidden
from conveyor.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The runtime this app was started with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_principal(request: Request) -> Principal:
    """Who makes this request (raises 401 when credentials are missing or wrong)."""
    runtime = get_runtime(request)
    host = request.client.host if request.client else None
    return authenticate(runtime.settings, runtime.db, request.headers, host)


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The principal, when it is an admin."""
    if not principal.admin:
        raise Forbidden("this needs an admin token")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
