"""POST /xrpc/dev.atrun.invoke: synchronous invocation by an authenticated ATProto caller."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from reactor.api.body import read_capped
from reactor.api.context import ApiContext
from reactor.api.errors import XrpcHttpError, bundle_not_found, forbidden, invalid_request
from reactor.dispatch.execute import Call, CallResult, ExecutorCrashed
from reactor.identity import IdentityError
from reactor.records import InvokeInput

NSID = "dev.atrun.invoke"
_NOT_FOUND = {"not_found", "not_a_bundle", "bad_uri", "cid_mismatch"}


async def resolve_authority(ctx: ApiContext, authority: str) -> str:
    if authority.startswith("did:"):
        return authority
    try:
        return await ctx.identity.resolve_handle(authority)
    except IdentityError as error:
        raise bundle_not_found(str(error)) from None


def result_body(result: CallResult) -> dict[str, Any]:
    outcome = result.outcome
    body: dict[str, Any] = {"status": outcome.status}
    if outcome.output is not None:
        body["output"] = outcome.output
    if outcome.error:
        body["error"] = outcome.error
    metrics = {k: v for k, v in (("durationMs", outcome.duration_ms), ("coldStart", outcome.cold_start)) if v is not None}
    if metrics:
        body["metrics"] = metrics
    return body


def raise_for_outcome(result: CallResult) -> None:
    """Map a non-success outcome to the XRPC error a client expects (details kept in the message)."""
    outcome = result.outcome
    message = outcome.error or outcome.status
    if outcome.status == "success":
        return
    if outcome.status == "denied":
        raise forbidden(message)
    if outcome.status == "invalid":
        if result.bundle_error in _NOT_FOUND:
            raise bundle_not_found(message)
        raise invalid_request(message)
    if outcome.status == "timeout":
        raise XrpcHttpError(504, "Timeout", message)
    raise XrpcHttpError(502, "ExecutionFailed", f"{outcome.status}: {message}")


async def invoke(request: Request) -> JSONResponse:
    ctx: ApiContext = request.app.state.ctx
    caller = await ctx.auth.verify(request.headers.get("authorization"), NSID)
    raw = await read_capped(request, ctx.config.http.max_body_bytes)
    try:
        body = InvokeInput.model_validate(json.loads(raw or b"null"))
    except (ValueError, ValidationError) as error:
        raise invalid_request(f"body must be {{bundle, endpoint, args}}: {str(error).splitlines()[0]}") from None
    authority, _, rest = body.bundle.removeprefix("at://").partition("/")
    bundle_uri = f"at://{await resolve_authority(ctx, authority)}/{rest}"
    decision = ctx.calls.check_access(caller.did)
    if not decision.allowed:
        raise forbidden(decision.reason)
    async with ctx.quotas.slot(caller.did):
        try:
            result = await ctx.calls.run(Call(caller=caller.did, bundle_uri=bundle_uri, bundle_cid=body.cid,
                                              endpoint=body.endpoint, args=body.args if body.args is not None else {}))
        except ExecutorCrashed as error:
            raise XrpcHttpError(502, "ExecutionFailed", f"the sandbox failed: {error}") from None
    raise_for_outcome(result)
    return JSONResponse(result_body(result))
