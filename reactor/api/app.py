"""Route table. Handlers live in small modules; this file only wires them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from reactor.api.bundle_routes import bundle_route
from reactor.api.context import ApiContext
from reactor.api.errors import XrpcHttpError, from_http_status, internal_error
from reactor.api.invoke import invoke
from reactor.api.middleware import RequestContext


ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DESCRIBE_TTL_S = 5.0  # describe() lists runtimes from disk: not on every request


async def health(request: Request) -> JSONResponse:
    report = await request.app.state.ctx.health()
    return JSONResponse(report, status_code=200 if report.get("ok") else 503)


async def describe_runner(request: Request) -> JSONResponse:
    return JSONResponse(_describe(request.app.state))


def _describe(state: Any) -> dict[str, Any]:
    cached = getattr(state, "describe_cache", None)
    now = time.monotonic()
    if cached is None or now - cached[0] > DESCRIBE_TTL_S:
        cached = (now, state.ctx.describe())
        state.describe_cache = cached
    return dict(cached[1])


async def did_document(request: Request) -> Response:
    """did:web resolution for a runner whose DID is `did:web:<this host>`."""
    ctx: ApiContext = request.app.state.ctx
    host = (request.headers.get("host") or "").lower().replace(":", "%3A")
    if not host or ctx.runner_did != f"did:web:{host}":
        raise XrpcHttpError(404, "NotFound", "this runner's DID is not a did:web for this host")
    describe = _describe(request.app.state)
    doc: dict[str, Any] = {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": ctx.runner_did,
        "verificationMethod": [{
            "id": f"{ctx.runner_did}#atproto", "type": "Multikey", "controller": ctx.runner_did,
            "publicKeyMultibase": describe["signingKey"].removeprefix("did:key:"),
        }],
        "service": [{"id": "#atrun_runner", "type": "AtrunRunner", "serviceEndpoint": describe["endpoint"]}],
    }
    if ctx.config.handle:
        doc["alsoKnownAs"] = [f"at://{ctx.config.handle}"]
    return JSONResponse(doc)


async def xrpc_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, XrpcHttpError)
    return error.response()


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's 404/405 in XRPC form; an unknown XRPC method is 501 MethodNotImplemented."""
    assert isinstance(error, HTTPException)
    if error.status_code == 404 and request.url.path.startswith("/xrpc/"):
        return XrpcHttpError(501, "MethodNotImplemented", "method not implemented").response()
    return from_http_status(error.status_code, str(error.detail), dict(error.headers or {})).response()


async def server_error(_: Request, __: Exception) -> Response:
    """Unhandled exception: a clean XRPC 500 (the middleware logs the trace with the request id)."""
    return internal_error().response()


def create_app(ctx: ApiContext, extra_routes: Sequence[BaseRoute] = ()) -> RequestContext:
    """The runner's ASGI app; `extra_routes` (e.g. operator-only routes) share its errors and request ids."""
    app = Starlette(
        routes=[
            *extra_routes,
            Route("/xrpc/_health", health, methods=["GET"]),
            Route("/xrpc/dev.atrun.describeRunner", describe_runner, methods=["GET"]),
            Route("/xrpc/dev.atrun.invoke", invoke, methods=["POST"]),
            Route("/.well-known/did.json", did_document, methods=["GET"]),
            Route("/b/{authority}/{bundle}/{endpoint}", bundle_route, methods=ANY),
            Route("/b/{authority}/{bundle}/{endpoint}/{rest:path}", bundle_route, methods=ANY),
        ],
        exception_handlers={XrpcHttpError: xrpc_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.ctx = ctx
    return RequestContext(app, max_headers=ctx.config.http.max_headers)
