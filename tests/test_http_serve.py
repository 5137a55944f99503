"""A real `at-rund serve --dev` subprocess: service-auth invoke, /b/ routes, SIGHUP reloading the
access lists from the edited config file, request ids in the logs, clean SIGTERM."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.atnet import TestNetwork
from tests.http_kit import ServeProcess, bearer, service_token
from tests.runner_kit import HELLO_JS, eventually, publish_bundle

pytestmark = pytest.mark.network


async def test_sighup_reloads_the_allowlist(atnet: TestNetwork, tmp_path: Path) -> None:
    runner, alice, bob = [await atnet.create_account(n) for n in ("runner", "alice", "bob")]
    hello_uri, _ = await publish_bundle(alice, "hello", HELLO_JS)
    await publish_bundle(bob, "hello", HELLO_JS)
    serve = ServeProcess(tmp_path / "home", {
        "did": runner.did, "isolation": "none",
        "access": {"mode": "allowlist", "allowlist": [alice.did], "blocklist": []},
        "atproto": {"plc_url": atnet.plc_url, "firehose": atnet.pds_url},
        "observability": {"log_level": "debug"},
    })
    await serve.start()
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as http:
            async def invoke_as(who):  # type: ignore[no-untyped-def]
                token = await service_token(who, runner.did)
                return await http.post("/xrpc/dev.atrun.invoke", headers=bearer(token),
                                       json={"bundle": hello_uri, "endpoint": "hello", "args": {"name": who.handle}})

            ok = await invoke_as(alice)
            assert ok.status_code == 200 and ok.json()["output"] == {"greeting": f"hello {alice.handle}"}, ok.text
            denied = await invoke_as(bob)
            assert denied.status_code == 403 and denied.json()["error"] == "Forbidden", denied.text
            assert (await http.get(f"/b/{bob.did}/hello/hello")).status_code == 403
            assert (await http.get("/xrpc/dev.atrun.describeRunner")).json()["access"] == "allowlist"

            # the operator adds bob and sends SIGHUP: bob is let in, as caller and as bundle author
            serve.write_config(access={"allowlist": [alice.did, bob.did]})
            serve.signal(signal.SIGHUP)

            async def bob_allowed() -> bool:
                return (await http.get(f"/b/{bob.did}/hello/hello")).status_code == 200

            await eventually(bob_allowed, timeout=10, what="SIGHUP let bob in")
            now_ok = await invoke_as(bob)
            assert now_ok.status_code == 200, now_ok.text
            assert now_ok.json()["output"] == {"greeting": f"hello {bob.handle}"}

            # a broken file changes nothing (and the daemon keeps running)
            serve.config_path.write_text(serve.config_path.read_text() + "\n[access\n")
            serve.signal(signal.SIGHUP)
            await eventually(lambda: _logged(serve, "config.reload_failed"), timeout=10, what="reload failure logged")
            assert (await http.get(f"/b/{bob.did}/hello/hello")).status_code == 200

            # blocklisting wins over the allowlist
            serve.write_config(access={"blocklist": [bob.did]})
            serve.signal(signal.SIGHUP)

            async def bob_blocked() -> bool:
                return (await http.get(f"/b/{bob.did}/hello/hello")).status_code == 403

            await eventually(bob_blocked, timeout=10, what="SIGHUP blocked bob")
            blocked = await invoke_as(bob)
            assert blocked.status_code == 403 and "blocklist" in blocked.json()["message"], blocked.text
            assert (await invoke_as(alice)).status_code == 200

            # every response carries a request id, and the runner's log lines for it carry the same id
            marked = await http.get(f"/b/{bob.did}/hello/hello", headers={"x-request-id": "sighup-test-0001"})
            assert marked.headers["x-request-id"] == "sighup-test-0001"
            await eventually(lambda: _logged(serve, "request_id=sighup-test-0001"), timeout=10,
                             what="request id in the log")
    finally:
        code = await serve.stop()
    logs = serve.logs()
    assert code == 0, logs
    assert len(re.findall(r"config\.reloaded", logs)) == 2, logs
    assert "Traceback" not in logs, logs


async def _logged(serve: ServeProcess, text: str) -> bool:
    return text in serve.logs()
