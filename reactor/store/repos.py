"""Per-repo sync state: the last processed rev and when the repo was last backfilled."""

from __future__ import annotations

import time

import aiosqlite


async def get_rev(conn: aiosqlite.Connection, did: str) -> str | None:
    async with conn.execute("SELECT rev FROM repos WHERE did = ?", (did,)) as cur:
        row = await cur.fetchone()
    return row[0] if row else None


async def set_rev(conn: aiosqlite.Connection, did: str, rev: str) -> None:
    await conn.execute(
        "INSERT INTO repos (did, rev, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(did) DO UPDATE SET rev = excluded.rev, updated_at = excluded.updated_at",
        (did, rev, time.time()),
    )


async def mark_backfilled(conn: aiosqlite.Connection, did: str, rev: str | None) -> None:
    now = time.time()
    await conn.execute(
        "INSERT INTO repos (did, rev, backfilled_at, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(did) DO UPDATE SET rev = COALESCE(excluded.rev, repos.rev), "
        "backfilled_at = excluded.backfilled_at, updated_at = excluded.updated_at",
        (did, rev, now, now),
    )


async def backfilled_at(conn: aiosqlite.Connection, did: str) -> float | None:
    async with conn.execute("SELECT backfilled_at FROM repos WHERE did = ?", (did,)) as cur:
        row = await cur.fetchone()
    return row[0] if row else None
