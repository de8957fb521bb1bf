"""FastAPI dependencies: the runtime and the principal."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Request

from conveyor.auth.principal import Principal
from conveyor.auth.resolve import anonymous, authenticate
from conveyor.auth.scopes import check_scope
from conveyor.errors import Forbidden
from conveyor.runtime import Runtime

# Dependencies are async where they need no I/O: FastAPI runs a sync dependency in a worker
# thread, and each such hop costs more than a small request's own work.


async def get_runtime(request: Request) -> Runtime:
    """The runtime this app was started with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_principal(request: Request) -> Principal:
    """Who makes this request (raises 401 when credentials are missing or wrong)."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    if settings.auth == "none" and "authorization" not in request.headers:
        return anonymous(settings)  # nothing to look up: no thread hop
    host = request.client.host if request.client else None
    principal = await to_thread.run_sync(authenticate, settings, runtime.db, request.headers, host)
    if principal.scope is not None:
        check_scope(principal.scope, request.method, request.url.path)
    return principal


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The principal, when it is an admin."""
    if not principal.admin:
        raise Forbidden("this needs an admin token")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
