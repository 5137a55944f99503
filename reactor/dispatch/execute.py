"""Run one call of one bundle endpoint: the checks, the sandbox request, the outcome.

Shared by the firehose dispatcher and synchronous HTTP invocation, so both
paths apply the same access rules, limits, secrets handling and status mapping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog
from sandboxes import ExecRequest, ExecResponse, Executor, HttpRequest, Limits, Permissions

from reactor import metrics
from reactor.access import AccessPolicy
from reactor.bundles import BundleCache, BundleError, ReadyBundle
from reactor.config import LimitsConfig
from reactor.keys import RunnerKeys
from reactor.results import Outcome
from reactor.sealed import Scrubber, SecretsError, open_secrets

log = structlog.get_logger(__name__)

_KIND_TO_STATUS = {"timeout": "timeout", "limitExceeded": "limitExceeded", "denied": "denied",
                   "invalid": "invalid", "error": "error"}


class ExecutorCrashed(Exception):
    """The sandbox itself failed (not the bundle): worth a retry."""


@dataclass(frozen=True)
class Call:
    """Who asks to run what."""

    caller: str
    bundle_uri: str
    bundle_cid: str | None
    endpoint: str
    args: Any = None
    request: HttpRequest | None = None


@dataclass(frozen=True)
class CallResult:
    outcome: Outcome
    response: ExecResponse | None = None
    bundle: ReadyBundle | None = None
    bundle_error: str | None = None  # BundleError.reason when the bundle could not be had


def bundle_author(uri: str) -> str:
    return uri.removeprefix("at://").split("/", 1)[0]


def effective_limits(bundle: ReadyBundle, caps: LimitsConfig) -> tuple[float, Limits]:
    """Bundle asks, operator caps win; unset values take the operator's defaults."""
    asked = bundle.manifest.limits
    memory = min((asked.memory_mb if asked and asked.memory_mb else caps.memory_mb), caps.max_memory_mb)
    timeout_ms = min((asked.timeout_ms if asked and asked.timeout_ms else caps.timeout_ms), caps.max_timeout_ms)
    limits = Limits(memory_mb=max(memory, 16), pids=min(caps.pids, caps.max_pids),
                    output_bytes=min(caps.output_bytes, caps.max_output_bytes))
    return timeout_ms / 1000, limits


class CallRunner:
    def __init__(self, bundles: BundleCache, executor: Executor, keys: RunnerKeys, runner_did: str,
                 policy: Callable[[], AccessPolicy], limits: LimitsConfig) -> None:
        self._bundles = bundles
        self._executor = executor
        self._keys = keys
        self._runner_did = runner_did
        self._policy = policy
        self._limits = limits

    def check_access(self, did: str):  # type: ignore[no-untyped-def]
        return self._policy().check(did)

    async def run(self, call: Call) -> CallResult:
        """Check, execute and map to an Outcome. Raises ExecutorCrashed for sandbox failures."""
        policy = self._policy()
        for did in dict.fromkeys((call.caller, bundle_author(call.bundle_uri))):
            decision = policy.check(did)
            if not decision.allowed:
                return CallResult(Outcome("denied", error=decision.reason))
        try:
            bundle = await self._bundles.ready_or_fetch(call.bundle_uri, call.bundle_cid)
        except BundleError as error:
            return CallResult(Outcome("invalid", error=str(error)), bundle_error=error.reason)
        if not bundle.manifest.allows_endpoint(call.endpoint) or not _valid_endpoint(call.endpoint):
            return CallResult(Outcome("invalid", error=f"endpoint {call.endpoint!r} is not declared by the bundle"),
                              bundle=bundle)
        try:
            secrets = open_secrets(bundle.manifest, self._runner_did, self._keys)
        except SecretsError as error:
            return CallResult(Outcome("invalid", error=str(error)), bundle=bundle)
        request = self._request(bundle, call, secrets)
        started = time.monotonic()
        try:
            response = await self._executor.execute(request)
        except Exception as error:  # noqa: BLE001 - any executor failure is a crash of the sandbox
            raise ExecutorCrashed(Scrubber(secrets).scrub(f"{type(error).__name__}: {error}")) from None
        metrics.execution_seconds.observe(time.monotonic() - started)
        if response.crashed:
            raise ExecutorCrashed(Scrubber(secrets).scrub(response.error or "the sandbox instance died"))
        outcome = _outcome(response, Scrubber(secrets))
        metrics.executions.labels(status=outcome.status).inc()
        return CallResult(outcome, response=_scrubbed(response, Scrubber(secrets)), bundle=bundle)

    def _request(self, bundle: ReadyBundle, call: Call, secrets: dict[str, str]) -> ExecRequest:
        timeout_s, limits = effective_limits(bundle, self._limits)
        asked = bundle.manifest.permissions
        permissions = Permissions(net=list(asked.net), read=list(asked.read), write=list(asked.write),
                                  env=sorted(set(asked.env) | set(secrets)))
        return ExecRequest(bundle_key=bundle.key, mime_type=bundle.mime_type, code_path=str(bundle.code_path),
                           endpoint=call.endpoint, args=call.args if call.args is not None else {},
                           permissions=permissions, env=secrets, timeout=timeout_s, limits=limits,
                           request=call.request)

    async def warm(self, bundle: ReadyBundle, count: int = 1) -> None:
        """Pre-warm with the same sandbox shape a real call would get, so the warm instance is reused."""
        try:
            secrets = open_secrets(bundle.manifest, self._runner_did, self._keys)
        except SecretsError:
            return
        endpoint = (bundle.manifest.endpoints or [""])[0]
        request = self._request(bundle, Call(self._runner_did, bundle.cached.uri, bundle.cached.cid, endpoint),
                                secrets)
        await self._executor.warm(request, count)


def _valid_endpoint(name: str) -> bool:
    return bool(name) and len(name) <= 128 and name.replace("_", "a").isalnum() and not name[0].isdigit()


def _outcome(response: ExecResponse, scrubber: Scrubber) -> Outcome:
    duration = int(round(response.metrics.execution_time_ms))
    cold = response.metrics.cold_start
    if response.success:
        data = response.data
        if data is None and response.response is not None:
            data = response.response.to_wire()
        return Outcome("success", output=data, duration_ms=duration, cold_start=cold)
    status = _KIND_TO_STATUS.get(response.error_kind or "error", "error")
    return Outcome(status, error=scrubber.scrub(response.error or status), duration_ms=duration, cold_start=cold)


def _scrubbed(response: ExecResponse, scrubber: Scrubber) -> ExecResponse:
    if response.error:
        return response.model_copy(update={"error": scrubber.scrub(response.error)})
    return response
