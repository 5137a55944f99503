"""Results computed but not yet written to a PDS, drained with retries and backoff."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite


@dataclass(frozen=True)
class OutboxItem:
    invocation_uri: str
    repo: str
    collection: str
    rkey: str | None
    record: dict[str, Any]
    attempts: int
    next_attempt_at: float
    last_error: str | None


_COLUMNS = "invocation_uri, repo, collection, rkey, record, attempts, next_attempt_at, last_error"


def _item(r: aiosqlite.Row) -> OutboxItem:
    return OutboxItem(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7])


async def add(
    conn: aiosqlite.Connection, *, invocation_uri: str, repo: str, collection: str,
    rkey: str | None, record: dict[str, Any],
) -> bool:
    """Queue a result once per invocation; a second add for the same invocation is ignored."""
    now = time.time()
    cursor = await conn.execute(
        f"INSERT OR IGNORE INTO outbox ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, 0, ?, NULL, ?)",
        (invocation_uri, repo, collection, rkey, json.dumps(record, sort_keys=True), now, now),
    )
    return cursor.rowcount == 1


async def due(conn: aiosqlite.Connection, now: float | None = None, limit: int = 50) -> list[OutboxItem]:
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE written_at IS NULL AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at LIMIT ?",
        (now or time.time(), limit),
    ) as cur:
        rows = await cur.fetchall()
    return [_item(r) for r in rows]


async def mark_written(conn: aiosqlite.Connection, invocation_uri: str, written_uri: str) -> None:
    await conn.execute(
        "UPDATE outbox SET written_at = ?, written_uri = ?, last_error = NULL WHERE invocation_uri = ?",
        (time.time(), written_uri, invocation_uri),
    )


async def retry_later(conn: aiosqlite.Connection, invocation_uri: str, error: str, delay_s: float) -> None:
    await conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE invocation_uri = ?",
        (error[:500], time.time() + delay_s, invocation_uri),
    )


async def pending_count(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT COUNT(*) FROM outbox WHERE written_at IS NULL") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def get(conn: aiosqlite.Connection, invocation_uri: str) -> OutboxItem | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE invocation_uri = ?", (invocation_uri,)) as cur:
        r = await cur.fetchone()
    return _item(r) if r else None
