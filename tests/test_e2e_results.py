"""The whole story, with a real `at-rund serve` process and the real local PDS.

alice deploys a bundle with a sealed secret, grants the runner, posts an
invocation aimed at it, and gets a signed dev.atrun.result at the same rkey in
her own repo — across a SIGKILL of the runner and an outage of her PDS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from reactor.records import now_datetime
from reactor.sealed import seal_secrets
from tests.atnet import Account, TestNetwork, XrpcError
from tests.helpers import cli_env, free_port, run_cli
from tests.runner_kit import eventually, post_invocation

SECRET = "s3cr3t-value-9f8e7d6c"
SECRET_SHA256 = hashlib.sha256(SECRET.encode()).hexdigest()  # invocation args are public: never the secret

BUNDLE_JS = b"""
export async function hello(args, ctx) {
  if (args.wait) { await (await fetch(args.wait)).text(); }
  const token = ctx.env.API_TOKEN ?? "";
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return { tokenMatches: token.length > 0 && hex === args.expectSha256, tokenLength: token.length };
}
"""


class Runner:
    """`at-rund serve` as a subprocess; its logs are kept for the no-secrets check."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self) -> None:
        log = self.home / f"runner-{len(self.logs)}.log"
        self.logs.append(log)
        handle = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "reactor.cli", "serve"], env=self.env,
                                     stdout=handle, stderr=subprocess.STDOUT)
        handle.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)

    def invocation_state(self, uri: str) -> tuple[str, str | None] | None:
        db = sqlite3.connect(f"file:{self.home / 'at-rund.sqlite3'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT state, status FROM invocations WHERE uri = ?", (uri,)).fetchone()
            return (row[0], row[1]) if row else None
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()


class Gate:
    """A loopback HTTP server whose one endpoint blocks until released: a bundle's "slow work"."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.entered.set()
        await self.release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        self.release.set()
        if self.server:
            self.server.close()


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    g = Gate()
    await g.start()
    yield g
    await g.stop()


async def result_at(author: Account, rkey: str) -> dict[str, Any] | None:
    try:
        return await author.get_record("dev.atrun.result", rkey)
    except XrpcError:
        return None


async def list_results(service_account: Account) -> list[dict[str, Any]]:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.get(f"{service_account.pds_url}/xrpc/com.atproto.repo.listRecords",
                                  params={"repo": service_account.did, "collection": "dev.atrun.result",
                                          "limit": 100})
        return response.json().get("records", [])


async def test_signed_results_exactly_once_through_kill_and_outage(atnet: TestNetwork, tmp_path: Path,
                                                                   gate: Gate) -> None:
    runner_acct = await atnet.create_account("runner")
    alice = await atnet.create_account("alice")
    bob = await atnet.create_account("bob")
    home = tmp_path / "home"
    assert run_cli(home, "init").returncode == 0
    port = free_port()
    (home / "config.toml").write_text(f"""
did = "{runner_acct.did}"
port = {port}
isolation = "none"
[atproto]
plc_url = "{atnet.plc_url}"
firehose = "{atnet.pds_url}"
pds_url = "{atnet.pds_url}"
identifier = "{runner_acct.handle}"
[observability]
log_level = "debug"
""")
    env = cli_env(home, AT_RUND_ATPROTO__PASSWORD=await runner_acct.app_password("runner"))
    keys = json.loads(run_cli(home, "keys", "--json").stdout)

    # alice: a bundle with a secret sealed to the runner, and a grant.
    box = seal_secrets(keys["encryptionKey"], {"API_TOKEN": SECRET})
    blob = await alice.upload_blob(BUNDLE_JS, "application/javascript")
    bundle = await alice.put_record("dev.atrun.bundle", "hello", {
        "$type": "dev.atrun.bundle", "name": "hello", "code": blob, "endpoints": ["hello"],
        "permissions": {"net": [f"127.0.0.1:{gate.port}"]},
        "secrets": [{"runner": runner_acct.did, "box": {"$bytes": base64.b64encode(box).decode().rstrip("=")}}],
        "createdAt": now_datetime(),
    })
    bundle_ref = (bundle.uri, bundle.cid)
    grant = subprocess.run(
        [sys.executable, "-m", "reactor.cli", "grant", "--runner", runner_acct.did, "--encryption-key",
         keys["encryptionKey"], "--pds", alice.pds_url, "--identifier", alice.handle],
        env={**env, "AT_RUND_AUTHOR_PASSWORD": await alice.app_password("grant")},
        capture_output=True, text=True, timeout=60,
    )
    assert grant.returncode == 0, grant.stderr

    runner = Runner(home, env)
    runner.start()
    try:
        await eventually(lambda: _healthy(port), timeout=30, what="runner up")
        await eventually(lambda: _declared(runner_acct), timeout=30, what="runner declaration")

        # 1. The plain story: result at the same rkey, signed, secret used but never shown.
        inv_uri, _ = await post_invocation(alice, runner_acct.did, bundle_ref, args={"expectSha256": SECRET_SHA256})
        rkey = inv_uri.rsplit("/", 1)[1]
        result = await eventually(lambda: result_at(alice, rkey), timeout=30, what="alice's result")
        value = result["value"]
        assert value["status"] == "success", value
        assert value["output"] == {"tokenMatches": True, "tokenLength": len(SECRET)}
        assert value["invocation"]["uri"] == inv_uri and value["bundle"]["cid"] == bundle.cid
        verify = run_cli(home, "verify", result["uri"], AT_RUND_ATPROTO__PLC_URL=atnet.plc_url)
        assert verify.returncode == 0, verify.stderr

        # 2. SIGKILL after execution, before the result write (the PDS is down), then a restart.
        slow_uri, _ = await post_invocation(alice, runner_acct.did, bundle_ref,
                                            args={"expectSha256": SECRET_SHA256, "wait": f"http://127.0.0.1:{gate.port}/"})
        await asyncio.wait_for(gate.entered.wait(), 30)  # the bundle is running
        await atnet.stop_pds()
        gate.release.set()
        await eventually(lambda: _done(runner, slow_uri), timeout=30, what="execution finished")
        await asyncio.sleep(1.5)  # the write is attempted and fails while the PDS is down
        runner.kill()
        await atnet.start_pds()
        runner.start()
        slow_rkey = slow_uri.rsplit("/", 1)[1]
        slow = await eventually(lambda: result_at(alice, slow_rkey), timeout=60, what="result after restart")
        assert slow["value"]["status"] == "success"
        await asyncio.sleep(2)  # give a duplicate every chance to appear
        mine = [r for r in await list_results(alice) if r["value"]["invocation"]["uri"] == slow_uri]
        assert len(mine) == 1 and mine[0]["uri"].endswith("/" + slow_rkey)
        theirs = [r for r in await list_results(runner_acct) if r["value"]["invocation"]["uri"] == slow_uri]
        assert theirs == []

        # 3. No grant: bob's result lands in the runner's own repo.
        bob_blob = await bob.upload_blob(BUNDLE_JS, "application/javascript")
        bob_bundle = await bob.put_record("dev.atrun.bundle", "hello", {
            "$type": "dev.atrun.bundle", "name": "hello", "code": bob_blob, "createdAt": now_datetime()})
        bob_uri, _ = await post_invocation(bob, runner_acct.did, (bob_bundle.uri, bob_bundle.cid))

        async def in_runner_repo() -> dict[str, Any] | None:
            found = [r for r in await list_results(runner_acct) if r["value"]["invocation"]["uri"] == bob_uri]
            return found[0] if found else None

        bob_result = await eventually(in_runner_repo, timeout=30, what="bob's result in the runner repo")
        assert bob_result["value"]["status"] == "success"
        assert await result_at(bob, bob_uri.rsplit("/", 1)[1]) is None

        # 4. A wrong bundle CID is `invalid`.
        wrong_uri, _ = await post_invocation(alice, runner_acct.did, (bundle.uri, bob_bundle.cid))
        wrong = await eventually(lambda: result_at(alice, wrong_uri.rsplit("/", 1)[1]), timeout=30,
                                 what="invalid result")
        assert wrong["value"]["status"] == "invalid" and "cid mismatch" in wrong["value"]["error"].lower()
    finally:
        runner.stop()

    # The secret was usable, and appears nowhere we keep or show.
    assert SECRET not in runner.log_text()
    for path in home.glob("at-rund.sqlite3*"):
        assert SECRET.encode() not in path.read_bytes(), path
    for record in await list_results(alice) + await list_results(runner_acct):
        assert SECRET not in json.dumps(record)


async def _healthy(port: int) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def _declared(runner: Account) -> bool:
    try:
        record = await runner.get_record("dev.atrun.runner", "self")
    except XrpcError:
        return False
    return bool(record["value"].get("signingKey"))


async def _done(runner: Runner, uri: str) -> bool:
    state = await asyncio.to_thread(runner.invocation_state, uri)
    return state is not None and state[0] == "done"


