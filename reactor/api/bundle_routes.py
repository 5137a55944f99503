"""ANY /b/{did-or-handle}/{bundle}/{endpoint}[/{rest}]: the outside world reaches a bundle over HTTP.

Public: nobody signs these requests, so the bundle's author must pass access
control and carries the quota. Hop-by-hop and origin-wide headers are dropped
both ways, because every bundle shares this runner's origin.
"""

from __future__ import annotations

import base64
import json

from sandboxes import HttpRequest
from starlette.requests import Request
from starlette.responses import Response

from reactor.api.body import read_capped
from reactor.api.context import ApiContext
from reactor.api.errors import XrpcHttpError, forbidden
from reactor.api.invoke import raise_for_outcome, resolve_authority
from reactor.dispatch.execute import Call, ExecutorCrashed

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "proxy-connection"}
REQUEST_DROP = HOP_BY_HOP | {"cookie", "host", "content-length"}
RESPONSE_DROP = HOP_BY_HOP | {"set-cookie", "set-cookie2", "strict-transport-security", "alt-svc", "server", "date",
                              "content-length", "x-request-id", "clear-site-data", "public-key-pins"}
# A bundle's page must not script the runner's origin (or other bundles): give it an opaque origin.
SANDBOX_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads"


def _to_sandbox_request(request: Request, rest: str, body: bytes) -> HttpRequest:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_DROP}
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    return HttpRequest(method=request.method, path="/" + rest, query=request.url.query, headers=headers,
                       body=text if body else None, is_base64=is_base64)


async def bundle_route(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    params = request.path_params
    author = await resolve_authority(ctx, params["authority"])
    decision = ctx.calls.check_access(author)
    if not decision.allowed:
        raise forbidden(f"bundle author not allowed: {decision.reason}")
    body = await read_capped(request, ctx.config.http.max_body_bytes)
    call = Call(caller=author, bundle_uri=f"at://{author}/dev.atrun.bundle/{params['bundle']}", bundle_cid=None,
                endpoint=params["endpoint"], args={}, request=_to_sandbox_request(request, params.get("rest", ""), body))
    async with ctx.quotas.slot(author):
        try:
            result = await ctx.calls.run(call)
        except ExecutorCrashed as error:
            raise XrpcHttpError(502, "ExecutionFailed", f"the sandbox failed: {error}") from None
    raise_for_outcome(result)
    reply = result.response.response if result.response is not None else None
    if reply is None:  # the endpoint returned JSON rather than a Response
        data = result.outcome.output
        return Response(json.dumps(data), media_type="application/json",
                        headers={"content-security-policy": SANDBOX_CSP})
    content = base64.b64decode(reply.body) if reply.is_base64 else reply.body.encode()
    headers = {k: v for k, v in reply.headers.items() if k.lower() not in RESPONSE_DROP}
    headers["content-security-policy"] = SANDBOX_CSP
    headers.setdefault("x-content-type-options", "nosniff")
    status = reply.status if 200 <= reply.status <= 599 else 502
    return Response(content, status_code=status, headers=headers)
