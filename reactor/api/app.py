"""Route table. Handlers live in small modules; this file only wires them."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reactor.api.bundle_routes import bundle_route
from reactor.api.context import ApiContext
from reactor.api.errors import XrpcHttpError
from reactor.api.invoke import invoke
from reactor.api.middleware import RequestContext

ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def health(request: Request) -> JSONResponse:
    report = await request.app.state.ctx.health()
    return JSONResponse(report, status_code=200 if report.get("ok") else 503)


async def describe_runner(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.ctx.describe())


async def did_document(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    host = request.url.netloc.replace(":", "%3A")
    if ctx.runner_did != f"did:web:{host}":
        raise XrpcHttpError(404, "NotFound", "this runner's DID is not a did:web for this host")
    describe = ctx.describe()
    doc = {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": ctx.runner_did,
        "verificationMethod": [{
            "id": f"{ctx.runner_did}#atproto", "type": "Multikey", "controller": ctx.runner_did,
            "publicKeyMultibase": describe["signingKey"].removeprefix("did:key:"),
        }],
        "service": [{"id": "#atrun_runner", "type": "AtrunRunner", "serviceEndpoint": describe["endpoint"]}],
    }
    return JSONResponse(doc)


async def xrpc_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, XrpcHttpError)
    return error.response()


def create_app(ctx: ApiContext) -> RequestContext:
    app = Starlette(
        routes=[
            Route("/xrpc/_health", health, methods=["GET"]),
            Route("/xrpc/dev.atrun.describeRunner", describe_runner, methods=["GET"]),
            Route("/xrpc/dev.atrun.invoke", invoke, methods=["POST"]),
            Route("/.well-known/did.json", did_document, methods=["GET"]),
            Route("/b/{authority}/{bundle}/{endpoint}", bundle_route, methods=ANY),
            Route("/b/{authority}/{bundle}/{endpoint}/{rest:path}", bundle_route, methods=ANY),
        ],
        exception_handlers={XrpcHttpError: xrpc_error},
    )
    app.state.ctx = ctx
    return RequestContext(app, max_headers=ctx.config.http.max_headers)
