"""Firehose cursor per source (a relay or PDS URL)."""

from __future__ import annotations

import time

import aiosqlite


async def get(conn: aiosqlite.Connection, source: str) -> int | None:
    async with conn.execute("SELECT seq FROM cursors WHERE source = ?", (source,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else None


async def put(conn: aiosqlite.Connection, source: str, seq: int) -> None:
    await conn.execute(
        "INSERT INTO cursors (source, seq, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(source) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        (source, seq, time.time()),
    )


async def delete(conn: aiosqlite.Connection, source: str) -> None:
    await conn.execute("DELETE FROM cursors WHERE source = ?", (source,))
