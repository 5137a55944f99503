"""Route table. Handlers live in small modules; this file only wires them."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HealthProbe = Callable[[], Awaitable[dict[str, Any]]]


def create_app(health: HealthProbe) -> Starlette:
    async def health_route(_: Request) -> JSONResponse:
        report = await health()
        return JSONResponse(report, status_code=200 if report.get("ok") else 503)

    return Starlette(routes=[Route("/xrpc/_health", health_route, methods=["GET"])])
