"""Author commands (`seal`, `grant`, `verify`) against the real loopback PLC + PDS."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from reactor.author_cli import PASSWORD_ENV, add_author_commands
from reactor.config import Config
from reactor.declaration import build_declaration
from reactor.identity import IdentityResolver
from reactor.keys import RunnerKeys, ensure_keys
from reactor.records import GRANT_NSID, RESULT_NSID, RUNNER_NSID, Grant, SealedSecret, now_datetime
from reactor.results import Outcome, build_result
from reactor.store import Store
from reactor.writers import GrantWriter
from reactor.xrpc import XrpcClient
from tests.atnet import Account, TestNetwork

pytestmark = pytest.mark.network


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="at-rund")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    sub = parser.add_subparsers(dest="command")
    add_author_commands(sub, common)
    return parser


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run one handler the way cli.py will (asyncio.run inside), in a thread off this loop."""
    args = _parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    saved = structlog.get_config() if structlog.is_configured() else None

    def call() -> int:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            return int(args.handler(args))

    try:
        code = await asyncio.to_thread(call)
    finally:
        structlog.configure(**saved) if saved else structlog.reset_defaults()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> RunnerKeys:
    path: Path = tmp_path_factory.mktemp("runner-keys")
    ensure_keys(path)
    return RunnerKeys.load(path)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def runner(atnet: TestNetwork, keys: RunnerKeys, tmp_path_factory: pytest.TempPathFactory) -> Account:
    """A runner account whose dev.atrun.runner/self names `keys`."""
    account = await atnet.create_account("runner")
    config = Config.model_validate({"did": account.did, "home": str(tmp_path_factory.mktemp("home"))})
    await account.put_record(RUNNER_NSID, "self", build_declaration(config, keys, ["application/javascript"], []))
    return account


# ---------------------------------------------------------------------------- seal


async def test_seal_with_explicit_key_needs_no_network(keys: RunnerKeys) -> None:
    code, out, err = await cli("seal", "--runner", "did:plc:abcdefghijklmnopqrstuvwx",
                               "--encryption-key", keys.encryption_did_key, "API_KEY=s3cret-value", "FROM_ENV",
                               env={"FROM_ENV": "env-secret-value"})
    assert code == 0, err
    entry = SealedSecret.model_validate(json.loads(out))
    assert entry.runner == "did:plc:abcdefghijklmnopqrstuvwx"
    assert json.loads(keys.open_sealed(entry.box)) == {"API_KEY": "s3cret-value", "FROM_ENV": "env-secret-value"}
    assert "s3cret-value" not in out and "env-secret-value" not in out


async def test_seal_resolves_the_runner_declaration(atnet: TestNetwork, runner: Account, keys: RunnerKeys) -> None:
    code, out, err = await cli("seal", "--runner", runner.did, "--plc-url", atnet.plc_url, "TOKEN=abc123xyz")
    assert code == 0, err
    entry = json.loads(out)
    assert entry["runner"] == runner.did and set(entry["box"]) == {"$bytes"}
    assert json.loads(keys.open_sealed(base64.b64decode(entry["box"]["$bytes"] + "=="))) == {"TOKEN": "abc123xyz"}

    code, _, err = await cli("seal", "--runner", "did:plc:nosuchrunnerxxxxxxxxxxxx", "--plc-url", atnet.plc_url,
                             "TOKEN=abc123xyz")
    assert code == 1 and "abc123xyz" not in err and err.count("\n") == 1


async def test_seal_rejects_bad_names_without_echoing(keys: RunnerKeys) -> None:
    code, _, err = await cli("seal", "--runner", "did:plc:abcdefghijklmnopqrstuvwx",
                             "--encryption-key", keys.encryption_did_key, "bad-name=hunter2hunter2")
    assert code == 2 and "hunter2hunter2" not in err


# ---------------------------------------------------------------------------- grant


async def test_grant_lets_the_runner_write_results(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, tmp_path: Path,
) -> None:
    alice = await atnet.create_account("alice")
    app_password = await alice.app_password()
    code, out, err = await cli("grant", "--runner", runner.did, "--plc-url", atnet.plc_url,
                               "--pds", atnet.pds_url, "--identifier", alice.handle,
                               env={PASSWORD_ENV: app_password})
    assert code == 0, err
    assert app_password not in out + err
    stored = await alice.get_record(GRANT_NSID, runner.did)
    grant = Grant.model_validate(stored["value"])
    assert grant.runner == runner.did
    assert json.loads(keys.open_sealed(grant.box)) == {"identifier": alice.did, "password": app_password}

    store = await Store.open(tmp_path / "s.sqlite3")
    xrpc = XrpcClient()
    try:
        writer = GrantWriter(xrpc, IdentityResolver(store, atnet.plc_url), keys, runner.did)
        record = build_result(invocation={"uri": f"at://{alice.did}/dev.atrun.invocation/3kaaaaaaaaaa2",
                                          "cid": stored["cid"]},
                              bundle={"uri": f"at://{alice.did}/dev.atrun.bundle/b", "cid": stored["cid"]},
                              runner=runner.did, outcome=Outcome(status="success"), keys=keys, max_output_bytes=1024)
        uri = await writer.write(alice.did, RESULT_NSID, "3kaaaaaaaaaa2", record)
        assert uri == f"at://{alice.did}/{RESULT_NSID}/3kaaaaaaaaaa2"
    finally:
        await xrpc.aclose()
        await store.close()


async def test_grant_refuses_the_account_password(atnet: TestNetwork, runner: Account, keys: RunnerKeys) -> None:
    bob = await atnet.create_account("bob")
    code, out, err = await cli("grant", "--runner", runner.did, "--encryption-key", keys.encryption_did_key,
                               "--pds", atnet.pds_url, "--identifier", bob.did, "--password", bob.password)
    assert code == 1 and "app password" in err
    assert bob.password not in out + err
    code, _, err = await cli("grant", "--runner", runner.did, "--encryption-key", keys.encryption_did_key,
                             "--pds", atnet.pds_url, "--identifier", bob.did, "--password", "wrong-wrong-wrong")
    assert code == 1 and "login failed" in err and "wrong-wrong-wrong" not in err


# ---------------------------------------------------------------------------- verify


async def _invocation(alice: Account, runner: Account) -> tuple[dict[str, str], dict[str, str]]:
    blob = await alice.upload_blob(b"export function main() { return 1 }\n", "application/javascript")
    bundle = await alice.put_record("dev.atrun.bundle", "hello", {
        "name": "hello", "code": blob, "createdAt": now_datetime()})
    invocation = await alice.create_record("dev.atrun.invocation", {
        "runner": runner.did, "bundle": {"uri": bundle.uri, "cid": bundle.cid}, "endpoint": "main",
        "createdAt": now_datetime()})
    return {"uri": invocation.uri, "cid": invocation.cid}, {"uri": bundle.uri, "cid": bundle.cid}


async def test_verify_accepts_a_good_result_and_rejects_tampering(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys,
) -> None:
    alice = await atnet.create_account("alice")
    invocation, bundle = await _invocation(alice, runner)
    result = build_result(invocation=invocation, bundle=bundle, runner=runner.did,
                          outcome=Outcome(status="success", output={"answer": 42}, duration_ms=7),
                          keys=keys, max_output_bytes=4096)
    rkey = invocation["uri"].rsplit("/", 1)[1]
    good = await alice.create_record(RESULT_NSID, result, rkey=rkey)
    code, out, err = await cli("verify", good.uri, "--plc-url", atnet.plc_url)
    assert (code, out.strip()) == (0, "ok"), err

    forged: dict[str, Any] = {**result, "output": {"answer": 43}}
    bad = await alice.create_record(RESULT_NSID, forged)
    code, out, err = await cli("verify", bad.uri, "--plc-url", atnet.plc_url)
    assert code == 1 and out == ""
    assert "signature does not verify" in err and err.count("\n") == 1

    stale = build_result(invocation={**invocation, "cid": bundle["cid"]}, bundle=bundle, runner=runner.did,
                         outcome=Outcome(status="success"), keys=keys, max_output_bytes=4096)
    wrong_cid = await alice.create_record(RESULT_NSID, stale)
    code, _, err = await cli("verify", wrong_cid.uri, "--plc-url", atnet.plc_url)
    assert code == 1 and "invocation" in err and invocation["cid"] in err

    code, _, err = await cli("verify", f"at://{alice.did}/{RESULT_NSID}/nope", "--plc-url", atnet.plc_url)
    assert code == 1 and "not found" in err
    code, _, err = await cli("verify", "https://example.com", "--plc-url", atnet.plc_url)
    assert code == 2
