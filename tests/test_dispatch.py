"""Dispatcher behaviour on the real PDS and a real sandbox: retries of crashed instances only."""

from __future__ import annotations

from pathlib import Path

from reactor.store import invocations, outbox
from tests.atnet import TestNetwork
from tests.runner_kit import eventually, post_invocation, publish_bundle, runner_config, start_runner

BUNDLE = b"""
export async function boom(args, ctx) { Deno.exit(3); }
export async function oops(args, ctx) { throw new Error("bundle says no"); }
"""


async def test_crashed_instances_are_retried_then_fail_but_bundle_errors_are_not(atnet: TestNetwork,
                                                                                 tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    alice = await atnet.create_account("alice")
    config = runner_config(tmp_path, atnet, runner.did, isolation="none", dispatch={"max_attempts": 2})
    services = await start_runner(config)
    try:
        bundle = await publish_bundle(alice, name="flaky", code=BUNDLE)
        crash_uri, _ = await post_invocation(alice, runner.did, bundle, endpoint="boom")
        error_uri, _ = await post_invocation(alice, runner.did, bundle, endpoint="oops")

        async def finished(uri: str):  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                inv = await invocations.get(conn, uri)
            return inv if inv and inv.state in ("done", "failed") else None

        crashed = await eventually(lambda: finished(crash_uri), timeout=30, what="crashed invocation settled")
        assert crashed.state == "failed" and crashed.status == "error" and crashed.attempts == 2
        errored = await eventually(lambda: finished(error_uri), timeout=30, what="bundle error settled")
        assert errored.state == "done" and errored.status == "error" and errored.attempts == 1
        assert "bundle says no" in (errored.error or "")
        async with services.store.read() as conn:
            crash_result = await outbox.get(conn, crash_uri)
            error_result = await outbox.get(conn, error_uri)
        assert crash_result and crash_result.record["status"] == "error"
        assert "failed 2 times" in crash_result.record["error"]
        assert error_result and error_result.record["status"] == "error"
    finally:
        await services.close()
