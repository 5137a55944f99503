"""POST /xrpc/dev.atrun.invoke: synchronous invocation by an authenticated ATProto caller."""

from __future__ import annotations

import json
from typing import Any

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from reactor.api.authority import resolve_authority
from reactor.api.body import read_capped
from reactor.api.context import ApiContext
from reactor.api.errors import (
    XrpcHttpError,
    bundle_not_found,
    forbidden,
    invalid_request,
)
from reactor.dispatch.execute import Call, CallResult, ExecutorCrashed
from reactor.records import BUNDLE_NSID, InvokeInput
from reactor.results import shape_output

log = structlog.get_logger(__name__)

NSID = "dev.atrun.invoke"
_NOT_FOUND = {"not_found", "not_a_bundle", "cid_mismatch"}


def result_body(result: CallResult, max_output_bytes: int) -> dict[str, Any]:
    outcome = result.outcome
    body: dict[str, Any] = {"status": outcome.status}
    output = shape_output(outcome.output, max_output_bytes)
    if output is not None:
        body["output"] = output
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


async def run_call(ctx: ApiContext, quota_did: str, call: Call) -> CallResult:
    """Run under `quota_did`'s quota; a crashed sandbox is a 502 (logged, not shown in full)."""
    async with ctx.quotas.slot(quota_did):
        try:
            return await ctx.calls.run(call)
        except ExecutorCrashed as error:
            log.warning("http.executor_crashed", bundle=call.bundle_uri, endpoint=call.endpoint, error=str(error))
            raise XrpcHttpError(502, "ExecutionFailed", "the sandbox failed while running the bundle") from None


def parse_input(raw: bytes) -> InvokeInput:
    try:
        body = InvokeInput.model_validate(json.loads(raw or b"null"))
    except (ValueError, ValidationError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise invalid_request(f"body must be {{bundle, endpoint, args}}: {first}") from None
    if not body.endpoint:
        raise invalid_request("endpoint must not be empty")
    return body


async def invoke(request: Request) -> JSONResponse:
    ctx: ApiContext = request.app.state.ctx
    caller = await ctx.auth.verify(request.headers.get("authorization"), NSID)
    decision = ctx.calls.check_access(caller.did)
    if not decision.allowed:
        raise forbidden(decision.reason)
    body = parse_input(await read_capped(request, ctx.config.http.max_body_bytes))
    authority, _, path = body.bundle.removeprefix("at://").partition("/")
    collection, _, rkey = path.partition("/")
    if collection != BUNDLE_NSID or not rkey or "/" in rkey:
        raise invalid_request(f"bundle must be at://<did-or-handle>/{BUNDLE_NSID}/<name>")
    author = await resolve_authority(ctx, authority)
    decision = ctx.calls.check_access(author)
    if not decision.allowed:
        raise forbidden(f"bundle author not allowed: {decision.reason}")
    call = Call(caller=caller.did, bundle_uri=f"at://{author}/{BUNDLE_NSID}/{rkey}", bundle_cid=body.cid,
                endpoint=body.endpoint, args=body.args if body.args is not None else {})
    result = await run_call(ctx, caller.did, call)
    raise_for_outcome(result)
    return JSONResponse(result_body(result, ctx.config.limits.max_output_bytes))
