"""Result writers and the outbox drain against the real loopback PDS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from nacl.public import PrivateKey

from reactor import metrics
from reactor.config import Config
from reactor.declaration import build_declaration, publish
from reactor.identity import IdentityResolver
from reactor.keys import RunnerKeys, ensure_keys, x25519_did_key
from reactor.outbox_drain import OutboxDrain
from reactor.records import GRANT_NSID, RESULT_NSID, RUNNER_NSID, now_datetime
from reactor.results import Outcome, build_result
from reactor.sealed import seal_json
from reactor.store import Store, invocations, outbox
from reactor.writers import GrantWriter, NoGrant, RecordConflict, RunnerRepoWriter, result_tid
from reactor.xrpc import XrpcClient
from tests.atnet import Account, TestNetwork

pytestmark = pytest.mark.network


def _cid(data: bytes) -> str:
    raw = b"\x01\x71\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def _tid() -> str:
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    value = (time.time_ns() // 1000) << 10 | int.from_bytes(hashlib.sha256(str(time.perf_counter_ns()).encode())
                                                            .digest()[:2], "big") % 1024
    return "".join(alphabet[(value >> shift) & 31] for shift in range(60, -1, -5))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> RunnerKeys:
    path: Path = tmp_path_factory.mktemp("runner-keys")
    ensure_keys(path)
    return RunnerKeys.load(path)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def runner(atnet: TestNetwork) -> Account:
    return await atnet.create_account("runner")


@pytest_asyncio.fixture(loop_scope="session")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "store.sqlite3")
    yield opened
    await opened.close()


@pytest_asyncio.fixture(loop_scope="session")
async def xrpc() -> AsyncIterator[XrpcClient]:
    client = XrpcClient(timeout_s=5.0)
    yield client
    await client.aclose()


@pytest.fixture
def grant_writer(store: Store, xrpc: XrpcClient, keys: RunnerKeys, runner: Account, atnet: TestNetwork) -> GrantWriter:
    return GrantWriter(xrpc, IdentityResolver(store, atnet.plc_url), keys, runner.did)


@pytest.fixture
def runner_writer(xrpc: XrpcClient, keys: RunnerKeys, runner: Account, atnet: TestNetwork) -> RunnerRepoWriter:
    return RunnerRepoWriter(xrpc, atnet.pds_url, runner.handle, runner.password, keys, runner_did=runner.did)


async def grant(author: Account, runner_did: str, encryption_key: str, *, password: str | None = None,
                runner_field: str | None = None) -> None:
    password = password or await author.app_password()
    box = seal_json(encryption_key, {"identifier": author.did, "password": password})
    await author.put_record(GRANT_NSID, runner_did, {
        "runner": runner_field or runner_did, "box": {"$bytes": base64.b64encode(box).decode()},
        "createdAt": now_datetime(),
    })


def make_result(author: Account, runner_did: str, keys: RunnerKeys) -> tuple[str, str, dict[str, Any]]:
    rkey = _tid()
    uri = f"at://{author.did}/dev.atrun.invocation/{rkey}"
    record = build_result(
        invocation={"uri": uri, "cid": _cid(uri.encode())},
        bundle={"uri": f"at://{author.did}/dev.atrun.bundle/hello", "cid": _cid(b"bundle")},
        runner=runner_did, outcome=Outcome(status="success", output={"n": 1}, duration_ms=3), keys=keys,
        max_output_bytes=4096,
    )
    return uri, rkey, record


async def queue(store: Store, author: Account, runner_did: str, keys: RunnerKeys) -> tuple[str, str, dict[str, Any]]:
    uri, rkey, record = make_result(author, runner_did, keys)
    async with store.transaction() as conn:
        await invocations.insert(conn, uri=uri, cid=record["invocation"]["cid"], author=author.did,
                                 runner=runner_did, bundle_uri=record["bundle"]["uri"],
                                 bundle_cid=record["bundle"]["cid"], endpoint="main", args=None, state="done")
        await outbox.add(conn, invocation_uri=uri, repo=author.did, collection=RESULT_NSID, rkey=rkey, record=record)
    return uri, rkey, record


async def results_in(account: Account, invocation_uri: str | None = None) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=account.pds_url) as http:
        response = await http.get("/xrpc/com.atproto.repo.listRecords",
                                  params={"repo": account.did, "collection": RESULT_NSID, "limit": 100})
    response.raise_for_status()
    rows = response.json()["records"]
    return [r for r in rows if invocation_uri is None or r["value"]["invocation"]["uri"] == invocation_uri]


async def pending(store: Store) -> list[tuple[Any, ...]]:
    async with store.read() as conn:
        async with conn.execute(
            "SELECT invocation_uri, attempts, next_attempt_at, last_error, written_uri FROM outbox") as cur:
            return [tuple(row) for row in await cur.fetchall()]


# ---------------------------------------------------------------------------- GrantWriter


async def test_grant_writer_writes_at_invocation_rkey_once(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, grant_writer: GrantWriter, store: Store, xrpc: XrpcClient,
) -> None:
    alice = await atnet.create_account("alice")
    await grant(alice, runner.did, keys.encryption_did_key)
    invocation_uri, rkey, record = make_result(alice, runner.did, keys)

    first = await grant_writer.write(alice.did, RESULT_NSID, rkey, record)
    assert first == f"at://{alice.did}/{RESULT_NSID}/{rkey}"
    again = await grant_writer.write(alice.did, RESULT_NSID, rkey, record)  # retry after a lost reply
    assert again == first
    fresh = GrantWriter(xrpc, IdentityResolver(store, atnet.plc_url), keys, runner.did)  # after a restart
    assert await fresh.write(alice.did, RESULT_NSID, rkey, record) == first

    stored = await results_in(alice, invocation_uri)
    assert len(stored) == 1 and stored[0]["uri"] == first
    assert stored[0]["value"]["sig"] == record["sig"]

    # Someone else's record at the key is not mistaken for ours.
    squat_rkey = _tid()
    await alice.create_record(RESULT_NSID, {**record, "status": "error"}, rkey=squat_rkey)
    with pytest.raises(RecordConflict):
        await grant_writer.write(alice.did, RESULT_NSID, squat_rkey, record)


async def test_grant_writer_recovers_from_bad_tokens(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, grant_writer: GrantWriter,
) -> None:
    alice = await atnet.create_account("alice")
    await grant(alice, runner.did, keys.encryption_did_key)
    _, rkey, record = make_result(alice, runner.did, keys)
    await grant_writer.write(alice.did, RESULT_NSID, rkey, record)
    tokens = grant_writer._sessions[alice.did].session._tokens
    assert tokens is not None

    tokens.access = "not-a-token"  # rejected → refreshSession → retry
    _, rkey2, record2 = make_result(alice, runner.did, keys)
    await grant_writer.write(alice.did, RESULT_NSID, rkey2, record2)

    tokens = grant_writer._sessions[alice.did].session._tokens
    assert tokens is not None
    tokens.access_expires_at = time.time()  # about to expire → refreshed up front
    tokens.refresh = "not-a-token"  # … and the refresh fails → a new login from the grant
    _, rkey3, record3 = make_result(alice, runner.did, keys)
    await grant_writer.write(alice.did, RESULT_NSID, rkey3, record3)
    assert len(await results_in(alice)) == 3


async def test_missing_or_unusable_grants_raise_no_grant(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, grant_writer: GrantWriter,
) -> None:
    stranger_key = x25519_did_key(bytes(PrivateKey.generate().public_key))
    cases = {
        "no dev.atrun.grant": None,
        "names runner": dict(runner_field="did:plc:someoneelseentirely2345"),
        "does not open": dict(encryption_key=stranger_key),
        "rejected the granted credentials": dict(password="wrong-password-123"),
    }
    for reason, how in cases.items():
        author = await atnet.create_account("nogrant")
        if how is not None:
            options = dict(how)
            await grant(author, runner.did, options.pop("encryption_key", keys.encryption_did_key), **options)
        _, rkey, record = make_result(author, runner.did, keys)
        with pytest.raises(NoGrant, match=reason) as caught:
            await grant_writer.write(author.did, RESULT_NSID, rkey, record)
        assert "wrong-password-123" not in str(caught.value)
        assert await results_in(author) == []


# ---------------------------------------------------------------------------- OutboxDrain


async def test_drain_falls_back_to_runner_repo(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, store: Store, grant_writer: GrantWriter,
    runner_writer: RunnerRepoWriter,
) -> None:
    bob = await atnet.create_account("bob")  # no grant
    invocation_uri, _, record = await queue(store, bob, runner.did, keys)
    before = metrics.value(metrics.results_written, target="runner")

    drain = OutboxDrain(store, grant_writer, runner_writer)
    assert await drain.drain_once() == 1
    assert await drain.drain_once() == 0

    expected = f"at://{runner.did}/{RESULT_NSID}/{result_tid(record)}"
    async with store.read() as conn:
        assert (await invocations.get(conn, invocation_uri)).result_uri == expected  # type: ignore[union-attr]
        assert await outbox.pending_count(conn) == 0
    assert metrics.value(metrics.results_written, target="runner") == before + 1
    # Idempotent in the runner repo too: same deterministic key, one record.
    assert await runner_writer.write(bob.did, RESULT_NSID, None, record) == expected
    stored = await results_in(runner, invocation_uri)
    assert [r["uri"] for r in stored] == [expected]
    assert await results_in(bob) == []


async def test_drain_without_runner_repo_keeps_the_result(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, store: Store, grant_writer: GrantWriter,
) -> None:
    carol = await atnet.create_account("carol")
    await queue(store, carol, runner.did, keys)
    drain = OutboxDrain(store, grant_writer, None)
    assert await drain.drain_once() == 0
    [(_, attempts, next_at, error, written)] = await pending(store)
    assert attempts == 1 and written is None
    assert next_at > time.time() + 60  # slow retry
    assert "no runner repo configured" in error


async def test_drain_retries_while_pds_is_down(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, store: Store, grant_writer: GrantWriter,
    runner_writer: RunnerRepoWriter,
) -> None:
    alice = await atnet.create_account("alice")
    await grant(alice, runner.did, keys.encryption_did_key)
    invocation_uri, rkey, _ = await queue(store, alice, runner.did, keys)
    drain = OutboxDrain(store, grant_writer, runner_writer)
    failures = metrics.value(metrics.outbox_failures)
    written = metrics.value(metrics.results_written, target="author")

    await atnet.stop_pds()
    try:
        assert await drain.drain_once() == 0
    finally:
        await atnet.start_pds()
    [(_, attempts, next_at, error, _)] = await pending(store)
    assert attempts == 1 and error
    assert metrics.value(metrics.outbox_failures) == failures + 1
    assert next_at <= time.time() + 1.5  # first backoff is short

    await asyncio.sleep(max(0.0, next_at - time.time()) + 0.05)
    assert await drain.drain_once() == 1
    stored = await results_in(alice, invocation_uri)
    assert [r["uri"] for r in stored] == [f"at://{alice.did}/{RESULT_NSID}/{rkey}"]
    assert metrics.value(metrics.results_written, target="author") == written + 1
    assert await results_in(runner, invocation_uri) == []


async def test_run_loop_wakes_on_kick(
    atnet: TestNetwork, runner: Account, keys: RunnerKeys, store: Store, grant_writer: GrantWriter,
) -> None:
    dave = await atnet.create_account("dave")
    await grant(dave, runner.did, keys.encryption_did_key)
    drain = OutboxDrain(store, grant_writer, None, poll_s=30.0)
    task = asyncio.create_task(drain.run())
    try:
        await asyncio.sleep(0.1)
        invocation_uri, _, _ = await queue(store, dave, runner.did, keys)
        drain.kick()
        for _ in range(100):
            if await results_in(dave, invocation_uri):
                break
            await asyncio.sleep(0.05)
        assert len(await results_in(dave, invocation_uri)) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------------- declaration


async def test_declaration_published_once(
    tmp_path: Path, runner: Account, keys: RunnerKeys, runner_writer: RunnerRepoWriter,
) -> None:
    config = Config.model_validate({"did": runner.did, "home": str(tmp_path), "public_url": "https://run.example.com/"})
    record = build_declaration(config, keys, ["text/x-python", "application/javascript"], ["default"])
    assert record["endpoint"] == "https://run.example.com"
    assert record["encryptionKey"] == keys.encryption_did_key and record["signingKey"] == keys.signing_did_key
    assert record["access"] == "open" and "isolation" not in record  # "auto" is not advertised

    assert await publish(runner_writer, record) is True
    first = await runner_writer.get_record(RUNNER_NSID, "self")
    await asyncio.sleep(0.01)
    same = build_declaration(config, keys, ["application/javascript", "text/x-python"], ["default"])
    assert await publish(runner_writer, same) is False
    assert (await runner_writer.get_record(RUNNER_NSID, "self")).cid == first.cid  # type: ignore[union-attr]

    changed = build_declaration(config, keys, ["application/wasm"], [], isolation="bwrap")
    assert await publish(runner_writer, changed) is True
    now = await runner_writer.get_record(RUNNER_NSID, "self")
    assert now is not None and now.value["runtimes"] == ["application/wasm"] and now.value["isolation"] == "bwrap"
