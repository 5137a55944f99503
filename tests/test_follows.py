"""Social trust: the operator's follows are the watch list and the allowlist."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from reactor import metrics
from reactor.config import ConfigError, parse_config
from reactor.follows import FOLLOW, apply_ops, subject_of, subjects
from reactor.ingest.processor import EventProcessor
from reactor.keys import ensure_keys
from reactor.records import now_datetime
from reactor.store import Store, identities, invocations
from reactor.store import follows as follow_store
from reactor.store.identities import Identity
from reactor.sync.keys import SigningKey
from reactor.sync.testing import RepoBuilder, Write
from reactor.sync.tid import make_tid
from reactor.sync.verify import VerifiedRecord
from tests.atnet import Account, TestNetwork
from tests.helpers import run_cli
from tests.runner_kit import (
    UNREACHABLE_PLC, eventually, offline_processor, post_invocation, trust, publish_bundle, runner_config, start_runner,
)

A, B, C = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24, "did:plc:" + "c" * 24


def op(action: str, rkey: str, subject: str | None = None) -> VerifiedRecord:
    record = None if subject is None else {"$type": FOLLOW, "subject": subject, "createdAt": now_datetime()}
    return VerifiedRecord(FOLLOW, rkey, action, None if record is None else "bafy", record)


# -- bookkeeping ---------------------------------------------------------------------------------


def test_follow_set_bookkeeping() -> None:
    rows = apply_ops({}, [op("create", "r1", A), op("create", "r2", B), op("create", "r3", A)])
    assert rows == {"r1": A, "r2": B, "r3": A} and subjects(rows) == {A, B}
    # A delete carries only the rkey; A is still followed through its second record.
    rows = apply_ops(rows, [op("delete", "r1")])
    assert subjects(rows) == {A, B}
    rows = apply_ops(rows, [op("delete", "r3"), op("delete", "unknown")])
    assert subjects(rows) == {B}
    # An update may point a record at someone else; a record without a DID subject counts for nothing.
    rows = apply_ops(rows, [op("update", "r2", C), op("create", "r4", "not-a-did")])
    assert rows == {"r2": C}
    rows = apply_ops(rows, [op("update", "r2", "did:example:nope")])
    assert rows == {}
    assert subject_of({"subject": "did:web:friends.example"}) == "did:web:friends.example"
    assert subject_of({"subject": 7}) is None and subject_of(None) is None


async def test_store_keeps_rkeys_and_the_load_state(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        async with store.transaction() as conn:
            await follow_store.replace(conn, A, {"r1": B, "r2": C}, "3rev1")
            await follow_store.put(conn, A, "r3", B)
            await follow_store.replace(conn, B, {"x": A}, "3revb")
        async with store.transaction() as conn:
            assert await follow_store.delete(conn, A, "r2") == C
            assert await follow_store.delete(conn, A, "r2") is None
            await follow_store.set_rev(conn, A, "3rev2")
        async with store.read() as conn:
            assert await follow_store.records(conn, A) == {"r1": B, "r3": B}
            assert await follow_store.subjects(conn, A) == {B}
            assert await follow_store.subjects(conn, B) == {A}
            state = await follow_store.state(conn, A)
            assert state is not None and state.rev == "3rev2" and state.loaded_at is not None
            assert await follow_store.state(conn, C) is None
    finally:
        await store.close()


def test_config_follows_needs_a_source() -> None:
    with pytest.raises(ConfigError, match="access.mode"):
        parse_config({"access": {"mode": "follows"}}, "t", env={})
    with pytest.raises(ConfigError, match="atproto.follow"):
        parse_config({"atproto": {"follow": "everyone"}}, "t", env={})
    config = parse_config({"access": {"mode": "follows", "follows_of": A}}, "t",
                          env={"AT_RUND_ATPROTO__FOLLOW": "follows"})
    assert config.atproto.follow == "follows" and config.access.follows_of == A


# -- the processor considers follow records of the source repo only --------------------------------


@pytest.fixture
async def processor(tmp_path: Path) -> AsyncIterator[tuple[Store, EventProcessor]]:
    async with offline_processor(tmp_path, A) as rig:
        yield rig


def follow_write(subject: str, n: int = 0) -> Write:
    rkey = make_tid(int(time.time() * 1e6) + n, 0)
    return Write("create", f"{FOLLOW}/{rkey}", {"$type": FOLLOW, "subject": subject, "createdAt": now_datetime()})


async def test_only_the_source_repos_follow_commits_are_verified(processor: tuple[Store, EventProcessor]) -> None:
    store, proc = processor
    source, stranger = RepoBuilder(), RepoBuilder()
    await trust(store, source.did, source.did_key())  # only the source's key is known; the PLC is unreachable
    seen: list[tuple[str, list[VerifiedRecord]]] = []

    async def handler(did: str, rev: str, records: list[VerifiedRecord]) -> None:
        seen.append((did, records))

    proc.consider(source.did, frozenset({FOLLOW}), handler)
    unresolvable = metrics.value(metrics.events_rejected, reason="unresolvable_identity")
    # Someone else's follows (single op and multi-op) are skipped without any lookup or check.
    await proc.handle_frame("src", stranger.commit([follow_write(B)]).frame)
    await proc.handle_frame("src", stranger.commit([follow_write(B, 1), follow_write(C, 2)]).frame)
    assert metrics.value(metrics.events_rejected, reason="unresolvable_identity") == unresolvable
    assert seen == []
    # The source's own follow is verified and handed over; its deletes carry the rkey.
    create = follow_write(B)
    await proc.handle_frame("src", source.commit([create]).frame)
    await proc.handle_frame("src", source.commit([Write("delete", create.path)]).frame)
    assert [(did, [(r.action, r.rkey, r.record and r.record["subject"]) for r in recs]) for did, recs in seen] == [
        (source.did, [("create", create.path.split("/")[1], B)]),
        (source.did, [("delete", create.path.split("/")[1], None)]),
    ]
    # A forged follow commit from the source is rejected like any other bad commit.
    bad = metrics.value(metrics.events_rejected, reason="bad_signature")
    await proc.handle_frame("src", source.commit([follow_write(C, 3)], signer=SigningKey.generate()).frame)
    assert metrics.value(metrics.events_rejected, reason="bad_signature") == bad + 1 and len(seen) == 2
    proc.unconsider(source.did)
    await proc.handle_frame("src", source.commit([follow_write(C, 4)]).frame)
    assert len(seen) == 2


# -- restart with the source unreachable, and `access list` ------------------------------------------


def write_config(home: Path, data: str) -> Path:
    ensure_keys(home / "keys")
    path = home / "config.toml"
    path.write_text(data)
    return path


async def seed_follows(home: Path, source: str, rows: dict[str, str]) -> None:
    ensure_keys(home / "keys")
    store = await Store.open(home / "at-rund.sqlite3")
    try:
        async with store.transaction() as conn:
            await follow_store.replace(conn, source, rows, "3kaaaaaaaaaaa")
            await identities.put(conn, Identity(A, "alice.test", None, None, "active", time.time()))
    finally:
        await store.close()


async def test_restart_without_the_source_uses_the_cached_follows(tmp_path: Path) -> None:
    await seed_follows(tmp_path, C, {"r1": A, "r2": B})
    config = parse_config({"did": C, "home": str(tmp_path), "atproto": {"plc_url": UNREACHABLE_PLC,
                                                                         "follow": "follows"},
                           "access": {"mode": "follows", "blocklist": [B]}}, "test", env={})
    services = await start_runner(config, wait_connected=False)
    try:
        assert services.policy.follows == {A, B}
        assert services.policy.allows(A) and not services.policy.allows(B)
        assert services.ingestion.followed == {A}  # blocklisted follows are not watched
        assert services.follows is not None and not services.follows.health()["loaded"]
        assert (await services.health())["access"]["size"] == 1
    finally:
        await services.close()


async def test_access_list_shows_each_entry_and_its_origin(tmp_path: Path) -> None:
    write_config(tmp_path, f'did = "{C}"\n[access]\nmode = "follows"\nallowlist = ["{B}"]\n'
                           f'blocklist = ["did:plc:{"m" * 24}"]\n')
    before = run_cli(tmp_path, "access", "list")
    assert before.returncode == 0, before.stderr
    assert "not loaded yet" in before.stdout and "alice" not in before.stdout
    assert not (tmp_path / "at-rund.sqlite3").exists()  # a read-only command creates no store

    await seed_follows(tmp_path, C, {"r1": A, "r2": "did:plc:" + "m" * 24})
    out = run_cli(tmp_path, "access", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mode follows") and "2 allowed" in lines[0]
    assert lines[1].startswith(f"follows of {C} (loaded ")
    assert lines[2].split() == [A, "follows", "alice.test"]
    assert lines[3].split() == [B, "allowlist"]
    assert lines[4].split() == ["did:plc:" + "m" * 24, "blocklist"]
    data = json.loads(run_cli(tmp_path, "access", "list", "--json").stdout)
    assert data["size"] == 2 and data["follows"]["source"] == C
    assert [(e["did"], e["source"]) for e in data["entries"]] == [
        (A, "follows"), (B, "allowlist"), ("did:plc:" + "m" * 24, "blocklist")]


# -- on the real local PDS ------------------------------------------------------------------------


async def follow(operator: Account, subject: str) -> str:
    ref = await operator.create_record(FOLLOW, {"subject": subject, "createdAt": now_datetime()})
    return ref.rkey


async def invocation_row(services: Any, uri: str, *states: str) -> Any:
    async def probe() -> Any:
        async with services.store.read() as conn:
            inv = await invocations.get(conn, uri)
        return inv if inv is not None and inv.state in states else None
    return await eventually(probe, timeout=30, what=f"{uri} in {states}")


async def has_outbox_row(services: Any, uri: str) -> bool:
    async with services.store.read() as conn:
        async with conn.execute("SELECT 1 FROM outbox WHERE invocation_uri = ?", (uri,)) as cur:
            return await cur.fetchone() is not None


async def test_follows_allow_and_unfollow_denies(atnet: TestNetwork, tmp_path: Path) -> None:
    operator = await atnet.create_account("operator")
    alice = await atnet.create_account("alice")
    mallory = await atnet.create_account("mallory")
    alice_rkey = await follow(operator, alice.did)
    await follow(operator, mallory.did)
    config = runner_config(tmp_path, atnet, operator.did, atproto={"follow": "follows"},
                           access={"mode": "follows", "blocklist": [mallory.did]})
    services = await start_runner(config)
    try:
        # Loaded on start from the operator's verified repo.
        assert services.policy.follows == {alice.did, mallory.did}
        assert services.ingestion.followed == {alice.did}
        assert (await services.health())["access"]["size"] == 1

        bundle = await publish_bundle(alice)
        ran_uri, _ = await post_invocation(alice, operator.did, bundle, args={"name": "alice"})
        ran = await invocation_row(services, ran_uri, "done", "failed")
        assert (ran.state, ran.status) == ("done", "success"), ran.error
        assert await has_outbox_row(services, ran_uri)

        # Followed but blocklisted: blocked all the same.
        blocked_uri, _ = await post_invocation(mallory, operator.did, await publish_bundle(mallory))
        blocked = await invocation_row(services, blocked_uri, "done")
        assert blocked.status == "denied" and "blocklist" in (blocked.error or "")

        # Unfollow: within seconds she is neither allowed nor watched.
        await operator.delete_record(FOLLOW, alice_rkey)

        async def unfollowed() -> bool:
            return not services.policy.allows(alice.did) and alice.did not in services.ingestion.followed

        await eventually(unfollowed, what="unfollow applied")
        assert (await services.health())["access"]["size"] == 0
        denied_uri, _ = await post_invocation(alice, operator.did, bundle)
        denied = await invocation_row(services, denied_uri, "done")
        assert denied.status == "denied" and "follows" in (denied.error or "")
    finally:
        await services.close()


async def test_follow_while_running_backfills_and_runs(atnet: TestNetwork, tmp_path: Path) -> None:
    operator = await atnet.create_account("operator")
    bob = await atnet.create_account("bob")
    # Only the follows are watched: no firehose, just the operator's PDS for its follow records.
    config = runner_config(tmp_path, atnet, operator.did, atproto={"firehose": None, "follow": "follows"},
                           access={"mode": "follows"})
    services = await start_runner(config)
    try:
        assert services.policy.follows == frozenset() and services.ingestion.followed == set()
        bundle = await publish_bundle(bob)
        earlier_uri, _ = await post_invocation(bob, operator.did, bundle, args={"name": "bob"})
        await follow(operator, bob.did)
        earlier = await invocation_row(services, earlier_uri, "done", "failed")
        assert (earlier.state, earlier.status) == ("done", "success"), earlier.error
        assert bob.did in services.ingestion.followed
        later_uri, _ = await post_invocation(bob, operator.did, bundle)  # and live from now on
        later = await invocation_row(services, later_uri, "done", "failed")
        assert later.status == "success"
    finally:
        await services.close()
    # The follow set stays in the store for the next start and for `at-rund access list`.
    listed = run_cli(tmp_path, "access", "list", "--config", str(_config_file(tmp_path, operator.did)))
    assert listed.returncode == 0, listed.stderr
    assert f"{bob.did} follows" in " ".join(listed.stdout.split()), listed.stdout


def _config_file(home: Path, did: str) -> Path:
    path = home / "config.toml"
    path.write_text(f'did = "{did}"\n[access]\nmode = "follows"\n')
    return path
