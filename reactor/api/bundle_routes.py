"""ANY /b/{did-or-handle}/{bundle}/{endpoint}[/{rest}]: the outside world reaches a bundle over HTTP.

Public: nobody signs these requests, so the bundle's author must pass access
control and carries the quota. Hop-by-hop and origin-wide headers are dropped
both ways, because every bundle shares this runner's origin; the bundle's page
gets a sandboxing CSP (an opaque origin) so it cannot script the runner or other bundles.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import structlog
from starlette.requests import Request
from starlette.responses import Response

from reactor.api.authority import resolve_authority
from reactor.api.body import read_capped
from reactor.api.context import ApiContext
from reactor.api.errors import XrpcHttpError, forbidden
from reactor.api.invoke import raise_for_outcome, run_call
from reactor.dispatch.execute import Call
from reactor.records import BUNDLE_NSID
from sandboxes import HttpRequest

log = structlog.get_logger(__name__)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "proxy-connection"}
REQUEST_DROP = HOP_BY_HOP | {"cookie", "host", "content-length"}
RESPONSE_DROP = HOP_BY_HOP | {"set-cookie", "set-cookie2", "strict-transport-security", "alt-svc", "server", "date",
                              "content-length", "x-request-id", "clear-site-data", "public-key-pins",
                              "public-key-pins-report-only", "service-worker-allowed", "origin-agent-cluster",
                              "content-security-policy", "content-security-policy-report-only"}
# A bundle's page must not script the runner's origin (or other bundles): give it an opaque origin.
SANDBOX_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _rest_of_path(request: Request) -> str:
    """What follows /b/{authority}/{bundle}/{endpoint}, still percent-encoded as the client sent it."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        parts = raw.split(b"/", 5)
        rest = parts[5].decode("latin-1") if len(parts) == 6 else ""
    else:
        rest = request.path_params.get("rest", "")
    # "//host/x" would read as a network-path reference in the bundle's URL parser.
    return "/" + rest.lstrip("/")


def _to_sandbox_request(request: Request, body: bytes) -> HttpRequest:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():  # repeated headers are joined, as fetch's Headers does
        if key not in REQUEST_DROP:
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    return HttpRequest(method=request.method, path=_rest_of_path(request), query=request.url.query,
                       headers=headers, body=text if body else None, is_base64=is_base64)


def _response_headers(headers: dict[str, str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in RESPONSE_DROP or not isinstance(value, str):
            continue
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value) or not value.isascii() and not _latin1(value):
            log.info("http.bundle_header_dropped", header=name[:64])
            continue
        kept[name] = value
    kept["content-security-policy"] = SANDBOX_CSP
    kept.setdefault("x-content-type-options", "nosniff")
    return kept


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


async def bundle_route(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    params = request.path_params
    author = await resolve_authority(ctx, params["authority"])
    decision = ctx.calls.check_access(author)
    if not decision.allowed:
        raise forbidden(f"bundle author not allowed: {decision.reason}")
    body = await read_capped(request, ctx.config.http.max_body_bytes)
    call = Call(caller=author, bundle_uri=f"at://{author}/{BUNDLE_NSID}/{params['bundle']}", bundle_cid=None,
                endpoint=params["endpoint"], args={}, request=_to_sandbox_request(request, body))
    result = await run_call(ctx, author, call)
    raise_for_outcome(result)
    reply = result.response.response if result.response is not None else None
    if reply is None:  # the endpoint returned JSON rather than a Response
        return Response(json.dumps(result.outcome.output), media_type="application/json",
                        headers={"content-security-policy": SANDBOX_CSP, "x-content-type-options": "nosniff"})
    try:
        content = base64.b64decode(reply.body, validate=True) if reply.is_base64 else reply.body.encode()
    except (binascii.Error, ValueError):
        raise XrpcHttpError(502, "ExecutionFailed", "the bundle's response body is not valid base64") from None
    status = reply.status if 200 <= reply.status <= 599 else 502
    return Response(content, status_code=status, headers=_response_headers(reply.headers))
