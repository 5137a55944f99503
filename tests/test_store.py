"""Store: migrations (fresh and on an old DB), WAL, and transactional state changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from reactor.store import Store, StoreError, cursors, invocations, migrations, outbox


async def test_fresh_store_is_migrated_and_wal(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        assert await store.schema_version() == len(migrations.MIGRATIONS)
        async with store.read() as conn:
            async with conn.execute("PRAGMA journal_mode") as cur:
                assert (await cur.fetchone())[0] == "wal"
    finally:
        await store.close()


async def test_old_db_is_migrated_forward_keeping_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    store = await Store.open(path)
    async with store.transaction() as conn:
        await cursors.put(conn, "wss://relay", 42)
    await store.close()

    extra = "CREATE TABLE later_feature (id INTEGER PRIMARY KEY); INSERT INTO later_feature (id) VALUES (7)"
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, extra])
    monkeypatch.setattr("reactor.store.db.MIGRATIONS", migrations.MIGRATIONS)
    store = await Store.open(path)
    try:
        assert await store.schema_version() == len(migrations.MIGRATIONS)
        async with store.read() as conn:
            assert await cursors.get(conn, "wss://relay") == 42
            async with conn.execute("SELECT id FROM later_feature") as cur:
                assert [r[0] for r in await cur.fetchall()] == [7]
    finally:
        await store.close()


async def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.db"
    await (await Store.open(path)).close()
    broken = "CREATE TABLE half (id INTEGER); INSERT INTO missing_table VALUES (1)"
    monkeypatch.setattr("reactor.store.db.MIGRATIONS", [*migrations.MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await Store.open(path)
    async with aiosqlite.connect(path) as conn:
        async with conn.execute("PRAGMA user_version") as cur:
            assert (await cur.fetchone())[0] == len(migrations.MIGRATIONS)
        async with conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'") as cur:
            assert await cur.fetchone() is None


async def test_newer_db_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(path)


async def test_invocation_queued_once_and_transitions_are_guarded(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    fields = dict(uri="at://did:plc:a/dev.atrun.invocation/3k", cid="bafyinv", author="did:plc:a",
                  runner="did:plc:r", bundle_uri="at://did:plc:a/dev.atrun.bundle/hello", bundle_cid="bafyb",
                  endpoint="hello", args={"x": 1})
    try:
        async with store.transaction() as conn:
            assert await invocations.insert(conn, **fields)
            await cursors.put(conn, "src", 1)
        async with store.transaction() as conn:
            assert not await invocations.insert(conn, **fields)
        async with store.transaction() as conn:
            assert await invocations.transition(conn, fields["uri"], from_states=["queued"], to="running")
            assert not await invocations.transition(conn, fields["uri"], from_states=["queued"], to="running")
        async with store.transaction() as conn:
            assert await invocations.requeue_running(conn) == 1
        async with store.read() as conn:
            inv = await invocations.get(conn, fields["uri"])
            assert inv is not None and inv.state == "queued" and inv.attempts == 1 and inv.args == {"x": 1}
            assert inv.rkey == "3k"
            assert (await invocations.count_by_state(conn))["queued"] == 1
    finally:
        await store.close()


async def test_transaction_rolls_back_cursor_with_work(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction() as conn:
                await cursors.put(conn, "src", 5)
                raise RuntimeError("crash mid-event")
        async with store.read() as conn:
            assert await cursors.get(conn, "src") is None
    finally:
        await store.close()


async def test_outbox_once_per_invocation(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        async with store.transaction() as conn:
            assert await outbox.add(conn, invocation_uri="at://i", repo="did:plc:a", collection="dev.atrun.result",
                                    rkey="3k", record={"status": "success"})
            assert not await outbox.add(conn, invocation_uri="at://i", repo="did:plc:a",
                                        collection="dev.atrun.result", rkey="3k", record={})
            await outbox.retry_later(conn, "at://i", "pds down", 0)
        async with store.read() as conn:
            [item] = await outbox.due(conn)
            assert item.attempts == 1 and item.last_error == "pds down"
        async with store.transaction() as conn:
            await outbox.mark_written(conn, "at://i", "at://did:plc:a/dev.atrun.result/3k")
        async with store.read() as conn:
            assert await outbox.due(conn) == []
            assert await outbox.pending_count(conn) == 0
    finally:
        await store.close()
