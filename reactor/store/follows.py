"""The cached follow set: a source account's `app.bsky.graph.follow` records, rkey → subject.

A delete op on the firehose carries only the rkey, so the subject each rkey
named is kept here. One account may follow the same DID twice (two records);
the follow set is the distinct subjects, so dropping one of them keeps the DID.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True)
class SourceState:
    source: str
    rev: str | None
    loaded_at: float | None  # last full load from the source repo (None: only live ops so far)
    updated_at: float


async def records(conn: aiosqlite.Connection, source: str) -> dict[str, str]:
    """rkey → subject for every cached follow record of `source`."""
    async with conn.execute("SELECT rkey, subject FROM follows WHERE source = ?", (source,)) as cur:
        return {row[0]: row[1] async for row in cur}


async def subjects(conn: aiosqlite.Connection, source: str) -> frozenset[str]:
    async with conn.execute("SELECT DISTINCT subject FROM follows WHERE source = ?", (source,)) as cur:
        return frozenset([row[0] async for row in cur])


async def put(conn: aiosqlite.Connection, source: str, rkey: str, subject: str) -> None:
    await conn.execute(
        "INSERT INTO follows (source, rkey, subject, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(source, rkey) DO UPDATE SET subject = excluded.subject, updated_at = excluded.updated_at",
        (source, rkey, subject, time.time()),
    )


async def delete(conn: aiosqlite.Connection, source: str, rkey: str) -> str | None:
    """Drop one follow record; returns the subject it named (None if it was unknown)."""
    async with conn.execute("SELECT subject FROM follows WHERE source = ? AND rkey = ?", (source, rkey)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    await conn.execute("DELETE FROM follows WHERE source = ? AND rkey = ?", (source, rkey))
    return str(row[0])


async def replace(conn: aiosqlite.Connection, source: str, rows: dict[str, str], rev: str) -> None:
    """A full load: the cached records of `source` become exactly `rows`, as of `rev`."""
    await conn.execute("DELETE FROM follows WHERE source = ?", (source,))
    now = time.time()
    await conn.executemany(
        "INSERT INTO follows (source, rkey, subject, updated_at) VALUES (?, ?, ?, ?)",
        [(source, rkey, subject, now) for rkey, subject in rows.items()],
    )
    await conn.execute(
        "INSERT INTO follow_sources (source, rev, loaded_at, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(source) DO UPDATE SET rev = excluded.rev, loaded_at = excluded.loaded_at, "
        "updated_at = excluded.updated_at",
        (source, rev, now, now),
    )


async def set_rev(conn: aiosqlite.Connection, source: str, rev: str) -> None:
    """A live commit was applied on top of the last load."""
    now = time.time()
    await conn.execute(
        "INSERT INTO follow_sources (source, rev, loaded_at, updated_at) VALUES (?, ?, NULL, ?) "
        "ON CONFLICT(source) DO UPDATE SET rev = excluded.rev, updated_at = excluded.updated_at",
        (source, rev, now),
    )


async def state(conn: aiosqlite.Connection, source: str) -> SourceState | None:
    async with conn.execute(
        "SELECT source, rev, loaded_at, updated_at FROM follow_sources WHERE source = ?", (source,)
    ) as cur:
        row = await cur.fetchone()
    return SourceState(*row) if row else None
