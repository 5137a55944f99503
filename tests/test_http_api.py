"""The HTTP API against a running server: uvicorn on loopback in this event loop, a real runner
(Services) behind it, the real local PDS minting service-auth tokens (getServiceAuth)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from reactor.api.app import create_app
from tests.atnet import Account, TestNetwork
from tests.http_kit import Api, bearer, running_api, serve_app, service_token
from tests.runner_kit import publish_bundle, runner_config

pytestmark = pytest.mark.network

WEB_JS = b"""
export async function hello(args, ctx) {
  return { greeting: `hello ${args.name ?? "world"}` };
}
export async function bin(args, ctx) {
  return new Response(new Uint8Array([0, 1, 2, 255]),
                      { status: 201, headers: { "x-bundle": "yes", "set-cookie": "a=b" } });
}
export async function echo(args, ctx) {
  const r = ctx.request;
  const body = Array.from(new Uint8Array(await r.arrayBuffer()));
  return Response.json({ method: r.method, url: r.url, headers: Object.fromEntries(r.headers), body },
                       { headers: { "strict-transport-security": "max-age=1", "x-request-id": "bundle-chose-this",
                                    "content-security-policy": "default-src *", "connection": "close" } });
}
export async function boom(args, ctx) {
  throw new Error("kaboom");
}
export async function slow(args, ctx) {
  await new Promise((resolve) => setTimeout(resolve, Number(args.ms ?? ctx.request?.headers.get("x-ms") ?? 300)));
  return { slept: true };
}
"""

INVOKE_URL = "/xrpc/dev.atrun.invoke"


@dataclass
class Env:
    api: Api
    runner: Account
    alice: Account  # allowed caller and author of "web"
    bob: Account  # allowed caller
    eve: Account  # on the allowlist AND the blocklist: blocked
    mallory: Account  # not on the allowlist; author of "web" too
    busy: Account  # allowed author with concurrent = 1
    chatty: Account  # allowed author with per_minute = 2
    carol: Account  # allowed caller with per_minute = 2
    web_uri: str
    web_cid: str

    @property
    def url(self) -> str:
        return self.api.url

    async def token(self, who: Account | None = None, **kwargs: Any) -> str:
        return await service_token(who or self.alice, kwargs.pop("aud", self.runner.did), **kwargs)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(atnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    runner, alice, bob, eve, mallory, busy, chatty, carol = [
        await atnet.create_account(name) for name in ("runner", "alice", "bob", "eve", "mallory", "busy", "chatty",
                                                      "carol")]
    allowed = [alice.did, bob.did, eve.did, busy.did, chatty.did, carol.did]
    config = runner_config(
        tmp_path_factory.mktemp("http-runner"), atnet, runner.did, isolation="none",
        access={"mode": "allowlist", "allowlist": allowed, "blocklist": [eve.did]},
        quotas={"per_did": {busy.did: {"concurrent": 1, "per_minute": 100},
                            chatty.did: {"concurrent": 4, "per_minute": 2},
                            carol.did: {"concurrent": 4, "per_minute": 2}}},
        http={"max_body_bytes": 4096, "max_headers": 24},
    )
    web_uri, web_cid = await publish_bundle(alice, "web", WEB_JS)
    await publish_bundle(alice, "sleepy", WEB_JS, limits={"timeoutMs": 300})
    for author in (mallory, busy, chatty):
        await publish_bundle(author, "web", WEB_JS)
    async with running_api(config) as api:
        yield Env(api, runner, alice, bob, eve, mallory, busy, chatty, carol, web_uri, web_cid)


def assert_xrpc_error(response: httpx.Response, status: int, error: str, *, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert message in body["message"], body
    assert "Traceback" not in response.text and "    at " not in response.text
    assert response.headers["x-request-id"]


def hello_body(env: Env, name: str = "http") -> dict[str, Any]:
    return {"bundle": env.web_uri, "endpoint": "hello", "args": {"name": name}}


# ---- service-auth on dev.atrun.invoke -------------------------------------------------------------


async def test_valid_token_invokes_warm_bundle(env: Env) -> None:
    async with env.client() as http:
        first = await http.post(INVOKE_URL, headers=bearer(await env.token()), json=hello_body(env, "cold"))
        assert first.status_code == 200, first.text
        second = await http.post(INVOKE_URL, headers=bearer(await env.token()), json=hello_body(env, "warm"))
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["status"] == "success"
    assert body["output"] == {"greeting": "hello warm"}
    assert body["metrics"]["coldStart"] is False
    assert isinstance(body["metrics"]["durationMs"], int)
    assert second.headers["x-request-id"]


async def test_bundle_named_by_handle_or_strong_ref(env: Env) -> None:
    by_handle = f"at://{env.alice.handle}/dev.atrun.bundle/web"
    async with env.client() as http:
        one = await http.post(INVOKE_URL, headers=bearer(await env.token(env.bob)),
                              json={"bundle": by_handle, "endpoint": "hello"})
        two = await http.post(INVOKE_URL, headers=bearer(await env.token(env.bob)),
                              json={"bundle": {"uri": env.web_uri, "cid": env.web_cid}, "endpoint": "hello",
                                    "args": {"name": "ref"}})
        stale = await http.post(INVOKE_URL, headers=bearer(await env.token(env.bob)),
                                json={"bundle": env.web_uri, "endpoint": "hello",
                                      "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"})
    assert one.status_code == 200 and one.json()["output"] == {"greeting": "hello world"}, one.text
    assert two.status_code == 200 and two.json()["output"] == {"greeting": "hello ref"}, two.text
    assert_xrpc_error(stale, 404, "BundleNotFound")


async def test_wrong_audience_is_rejected(env: Env) -> None:
    token = await env.token(aud=env.bob.did)
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(token), json=hello_body(env))
    assert_xrpc_error(response, 401, "InvalidToken", message="audience")


async def test_wrong_or_missing_lxm_is_rejected(env: Env) -> None:
    async with env.client() as http:
        wrong = await http.post(INVOKE_URL, headers=bearer(await env.token(lxm="dev.atrun.describeRunner")),
                                json=hello_body(env))
        missing = await http.post(INVOKE_URL, headers=bearer(await env.token(lxm=None)), json=hello_body(env))
    assert_xrpc_error(wrong, 401, "InvalidToken", message="lxm")
    assert_xrpc_error(missing, 401, "InvalidToken", message="lxm")


async def test_expired_token_is_rejected(env: Env) -> None:
    exp = int(time.time()) + 2  # the PDS refuses to mint an already expired token: let this one lapse
    token = await env.token(exp=exp)
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(token), json=hello_body(env))
    assert_xrpc_error(response, 401, "InvalidToken", message="expired")


async def test_long_lived_token_is_rejected(env: Env) -> None:
    token = await env.token(exp=int(time.time()) + 3000)
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(token), json=hello_body(env))
    assert_xrpc_error(response, 401, "InvalidToken", message="300 s")


def _tamper_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    return f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def _swap_payload(token: str, **claims: Any) -> str:
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


async def test_tampered_token_is_rejected_without_hammering_plc(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = env.api.services.identity
    fetches: list[str] = []
    real_fetch = identity._fetch

    async def counting_fetch(did: str):  # type: ignore[no-untyped-def]
        fetches.append(did)
        return await real_fetch(did)

    monkeypatch.setattr(identity, "_fetch", counting_fetch)
    async with env.client() as http:
        flipped = await http.post(INVOKE_URL, headers=bearer(_tamper_signature(await env.token(env.bob))),
                                  json=hello_body(env))
        # alice's valid signature on a payload that now claims to come from bob
        forged = await http.post(INVOKE_URL, headers=bearer(_swap_payload(await env.token(), iss=env.bob.did)),
                                 json=hello_body(env))
        for _ in range(3):
            await http.post(INVOKE_URL, headers=bearer(_tamper_signature(await env.token(env.bob))),
                            json=hello_body(env))
        garbage = await http.post(INVOKE_URL, headers=bearer("not.a.jwt"), json=hello_body(env))
    assert_xrpc_error(flipped, 401, "InvalidToken", message="signature")
    assert_xrpc_error(forged, 401, "InvalidToken", message="signature")
    assert_xrpc_error(garbage, 401, "InvalidToken")
    # a failed check may refresh bob's key once (rotation), not once per forged token
    assert fetches.count(env.bob.did) <= 1, fetches


async def test_replayed_jti_is_rejected(env: Env) -> None:
    token = await env.token()
    async with env.client() as http:
        first = await http.post(INVOKE_URL, headers=bearer(token), json=hello_body(env))
        again = await http.post(INVOKE_URL, headers=bearer(token), json=hello_body(env))
    assert first.status_code == 200, first.text
    assert_xrpc_error(again, 401, "InvalidToken", message="already used")


async def test_missing_token_is_rejected(env: Env) -> None:
    async with env.client() as http:
        none = await http.post(INVOKE_URL, json=hello_body(env))
        basic = await http.post(INVOKE_URL, headers={"Authorization": "Basic YWxpY2U6cHc="}, json=hello_body(env))
    assert_xrpc_error(none, 401, "AuthMissing")
    assert_xrpc_error(basic, 401, "AuthMissing")


async def test_session_token_is_not_a_service_token(env: Env) -> None:
    session = await env.alice._create_session()  # the PDS access JWT: typ at+jwt, HS256
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(session), json=hello_body(env))
    assert_xrpc_error(response, 401, "InvalidToken")


async def test_blocklisted_caller_is_forbidden(env: Env) -> None:
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(await env.token(env.eve)), json=hello_body(env))
    assert_xrpc_error(response, 403, "Forbidden", message="blocklist")


async def test_caller_not_on_allowlist_is_forbidden(env: Env) -> None:
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(await env.token(env.mallory)), json=hello_body(env))
    assert_xrpc_error(response, 403, "Forbidden", message="allowlist")


async def test_invoking_a_bundle_of_a_non_allowed_author_is_forbidden(env: Env) -> None:
    async with env.client() as http:
        response = await http.post(INVOKE_URL, headers=bearer(await env.token()),
                                   json={"bundle": f"at://{env.mallory.did}/dev.atrun.bundle/web", "endpoint": "hello"})
    assert_xrpc_error(response, 403, "Forbidden", message="author")


async def test_invoke_request_errors(env: Env) -> None:
    async with env.client() as http:
        async def call(**kwargs: Any) -> httpx.Response:
            return await http.post(INVOKE_URL, headers=bearer(await env.token()), **kwargs)

        assert_xrpc_error(await call(content=b"{not json"), 400, "InvalidRequest")
        assert_xrpc_error(await call(json={"endpoint": "hello"}), 400, "InvalidRequest")
        assert_xrpc_error(await call(json={"bundle": f"at://{env.alice.did}/app.bsky.feed.post/x", "endpoint": "hello"}),
                          400, "InvalidRequest", message="dev.atrun.bundle")
        assert_xrpc_error(await call(json={"bundle": f"at://{env.alice.did}/dev.atrun.bundle/nope", "endpoint": "x"}),
                          404, "BundleNotFound")
        assert_xrpc_error(await call(json={"bundle": "at://nobody-here.test/dev.atrun.bundle/web", "endpoint": "x"}),
                          404, "BundleNotFound")
        assert_xrpc_error(await call(json={**hello_body(env), "endpoint": "not-an-endpoint!"}), 400, "InvalidRequest")
        failed = await call(json={**hello_body(env), "endpoint": "boom"})
        assert_xrpc_error(failed, 502, "ExecutionFailed", message="kaboom")
        big = await call(json={**hello_body(env), "args": {"pad": "x" * 5000}})
        assert_xrpc_error(big, 413, "PayloadTooLarge")


async def test_timeouts_are_504(env: Env) -> None:
    sleepy = f"at://{env.alice.did}/dev.atrun.bundle/sleepy"
    async with env.client() as http:
        invoked = await http.post(INVOKE_URL, headers=bearer(await env.token()),
                                  json={"bundle": sleepy, "endpoint": "slow", "args": {"ms": 3000}})
        routed = await http.get(f"/b/{env.alice.did}/sleepy/slow", headers={"x-ms": "3000"})
        quick = await http.post(INVOKE_URL, headers=bearer(await env.token()),
                                json={"bundle": sleepy, "endpoint": "slow", "args": {"ms": 1}})
    assert_xrpc_error(invoked, 504, "Timeout")
    assert_xrpc_error(routed, 504, "Timeout")
    assert quick.status_code == 200 and quick.json()["output"] == {"slept": True}


async def test_invoke_quota_per_caller(env: Env) -> None:
    async with env.client() as http:
        statuses = []
        for _ in range(3):
            response = await http.post(INVOKE_URL, headers=bearer(await env.token(env.carol)), json=hello_body(env))
            statuses.append(response.status_code)
    assert statuses == [200, 200, 429]
    assert_xrpc_error(response, 429, "RateLimitExceeded", message="per minute")
    assert 1 <= int(response.headers["retry-after"]) <= 60


# ---- /b/{did-or-handle}/{bundle}/{endpoint}[/{rest}] -------------------------------------------------


async def test_http_route_returns_status_headers_and_binary_body(env: Env) -> None:
    async with env.client() as http:
        response = await http.post(f"/b/{env.alice.did}/web/bin")
    assert response.status_code == 201
    assert response.content == bytes([0, 1, 2, 255])
    assert response.headers["x-bundle"] == "yes"
    assert "set-cookie" not in response.headers
    assert response.headers["content-security-policy"].startswith("sandbox")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"]


async def test_http_route_hands_the_request_to_the_bundle(env: Env) -> None:
    payload = bytes([0xFF, 0x00, 0x80]) + "é".encode()
    async with env.client() as http:
        response = await http.put(f"/b/{env.alice.handle}/web/echo/a%2Fb/c?x=1&y=%20",
                                  content=payload, headers={"cookie": "session=secret", "x-custom": "kept",
                                                            "x-request-id": "client-chosen-id-1"})
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["url"].endswith("/a%2Fb/c?x=1&y=%20")
    assert bytes(seen["body"]) == payload
    assert seen["headers"]["x-custom"] == "kept"
    assert "cookie" not in seen["headers"] and "host" not in seen["headers"]
    # unsafe and hop-by-hop response headers from the bundle are dropped or overridden
    assert "strict-transport-security" not in response.headers
    assert response.headers["content-security-policy"].startswith("sandbox")
    assert response.headers["x-request-id"] == "client-chosen-id-1"
    assert response.headers.get("connection") != "close"


async def test_http_route_json_endpoint_and_errors(env: Env) -> None:
    async with env.client() as http:
        hello = await http.get(f"/b/{env.alice.did}/web/hello")
        missing = await http.get(f"/b/{env.alice.did}/nope/hello")
        failed = await http.get(f"/b/{env.alice.did}/web/boom")
        unknown_handle = await http.get("/b/nobody-here.test/web/hello")
        # not handles: never looked up on the network
        not_handles = [await http.get(f"/b/{name}/web/hello") for name in
                       ("169.254.169.254", "localhost", "printer.local", "did:key:z6Mk", "a_b.test")]
    assert hello.status_code == 200 and hello.json() == {"greeting": "hello world"}
    for response in not_handles:
        assert_xrpc_error(response, 400, "InvalidRequest")
    assert hello.headers["content-type"] == "application/json"
    assert_xrpc_error(missing, 404, "BundleNotFound")
    assert_xrpc_error(failed, 502, "ExecutionFailed", message="kaboom")
    assert_xrpc_error(unknown_handle, 404, "BundleNotFound")


async def test_http_route_of_non_allowed_author_is_forbidden(env: Env) -> None:
    async with env.client() as http:
        by_did = await http.get(f"/b/{env.mallory.did}/web/hello")
        by_handle = await http.get(f"/b/{env.mallory.handle}/web/hello")
        blocked = await http.get(f"/b/{env.eve.did}/web/hello")
    assert_xrpc_error(by_did, 403, "Forbidden", message="allowlist")
    assert_xrpc_error(by_handle, 403, "Forbidden")
    assert_xrpc_error(blocked, 403, "Forbidden", message="blocklist")


async def test_concurrency_quota_returns_429_with_retry_after(env: Env) -> None:
    async with env.client() as http:
        await http.get(f"/b/{env.busy.did}/web/hello")  # warm, so the slow call is the only one running
        slow = asyncio.create_task(http.get(f"/b/{env.busy.did}/web/slow", headers={"x-ms": "800"}))
        await asyncio.sleep(0.3)
        rejected = await http.get(f"/b/{env.busy.did}/web/hello")
        done = await slow
        after = await http.get(f"/b/{env.busy.did}/web/hello")
    assert done.status_code == 200 and done.json() == {"slept": True}
    assert_xrpc_error(rejected, 429, "RateLimitExceeded", message="running")
    assert rejected.headers["retry-after"] == "1"
    assert after.status_code == 200


async def test_per_minute_quota_returns_429_with_retry_after(env: Env) -> None:
    async with env.client() as http:
        responses = [await http.get(f"/b/{env.chatty.did}/web/hello") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert_xrpc_error(responses[2], 429, "RateLimitExceeded", message="per minute")
    assert 50 <= int(responses[2].headers["retry-after"]) <= 60


async def test_oversize_bodies_get_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 1000

    async with env.client() as http:
        declared = await http.post(f"/b/{env.alice.did}/web/echo", content=b"x" * 5000)
        streamed = await http.post(f"/b/{env.alice.did}/web/echo", content=chunks())
        fits = await http.post(f"/b/{env.alice.did}/web/echo", content=b"z" * 4000)
    assert_xrpc_error(declared, 413, "PayloadTooLarge")
    assert_xrpc_error(streamed, 413, "PayloadTooLarge")
    assert fits.status_code == 200 and len(fits.json()["body"]) == 4000


async def test_too_many_headers_are_refused(env: Env) -> None:
    async with env.client() as http:
        response = await http.get(f"/b/{env.alice.did}/web/hello", headers={f"x-h{i}": "v" for i in range(30)})
    assert_xrpc_error(response, 431, "InvalidRequest", message="headers")


# ---- the rest of the surface -------------------------------------------------------------------------


async def test_health_reports_version_store_firehose_and_pool(env: Env) -> None:
    async with env.client() as http:
        response = await http.get("/xrpc/_health")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["version"] and body["store"] == "ok"
    assert set(body["ingest"]["sources"].values()) == {"connected"}
    assert body["pool"]["state"] == "ok" and body["pool"]["backend"] == "none"


async def test_health_is_503_while_stopping(env: Env) -> None:
    env.api.daemon._stopping.set()
    try:
        async with env.client() as http:
            response = await http.get("/xrpc/_health")
    finally:
        env.api.daemon._stopping.clear()
    assert response.status_code == 503 and response.json()["ok"] is False


async def test_describe_runner(env: Env) -> None:
    async with env.client() as http:
        response = await http.get("/xrpc/dev.atrun.describeRunner")
    assert response.status_code == 200
    body = response.json()
    assert body["did"] == env.runner.did and body["access"] == "allowlist"
    assert body["signingKey"] == env.api.services.keys.signing_did_key
    assert "application/javascript" in body["runtimes"]


async def test_did_document_only_for_a_did_web_of_this_host(env: Env) -> None:
    from tests.helpers import free_port

    port = free_port()
    ctx = env.api.app.app.state.ctx
    did_web = f"did:web:127.0.0.1%3A{port}"
    web_app = create_app(dataclasses.replace(ctx, runner_did=did_web))
    async with serve_app(web_app, port) as url, httpx.AsyncClient(base_url=url) as http:
        doc = await http.get("/.well-known/did.json")
        other_host = await http.get("/.well-known/did.json", headers={"host": "example.com"})
    assert doc.status_code == 200, doc.text
    body = doc.json()
    assert body["id"] == did_web
    assert body["verificationMethod"][0]["id"] == f"{did_web}#atproto"
    assert "did:key:" + body["verificationMethod"][0]["publicKeyMultibase"] == ctx.describe()["signingKey"]
    assert_xrpc_error(other_host, 404, "NotFound")
    async with env.client() as http:
        assert_xrpc_error(await http.get("/.well-known/did.json"), 404, "NotFound")  # a did:plc runner


async def test_unknown_routes_are_xrpc_errors_with_request_ids(env: Env) -> None:
    async with env.client() as http:
        unknown = await http.get("/nope")
        method = await http.get("/xrpc/com.example.nothing")
        wrong_verb = await http.get(INVOKE_URL)
        bad_id = await http.get("/nope", headers={"x-request-id": "no\tgood"})
    assert_xrpc_error(unknown, 404, "NotFound")
    assert_xrpc_error(method, 501, "MethodNotImplemented")
    assert_xrpc_error(wrong_verb, 405, "MethodNotAllowed")
    assert bad_id.headers["x-request-id"] != "no\tgood" and len(bad_id.headers["x-request-id"]) == 16
    assert len({unknown.headers["x-request-id"], method.headers["x-request-id"]}) == 2


async def test_internal_errors_are_clean_500s(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = env.api.app.app.state.ctx

    async def broken_health() -> dict[str, Any]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(ctx, "health", broken_health)
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with env.client() as http:
            response = await http.get("/xrpc/_health")
    assert_xrpc_error(response, 500, "InternalServerError")
    assert "secret" not in response.text
    # the trace goes to the log, bound to the request id the client saw
    unhandled = [e for e in logs if e["event"] == "http.unhandled"]
    assert unhandled and unhandled[0]["request_id"] == response.headers["x-request-id"]
    assert unhandled[0]["exc_info"]
