"""Cached bundles by (uri, cid), and their code blobs keyed by blob CID."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite


@dataclass(frozen=True)
class CachedBundle:
    uri: str
    cid: str
    author: str
    name: str
    record: dict[str, Any]
    code_cid: str
    warm_state: str
    deleted: bool
    fetched_at: float


_COLUMNS = "uri, cid, author, name, record, code_cid, warm_state, deleted, fetched_at"


def _row(row: aiosqlite.Row) -> CachedBundle:
    return CachedBundle(
        uri=row[0], cid=row[1], author=row[2], name=row[3], record=json.loads(row[4]),
        code_cid=row[5], warm_state=row[6], deleted=bool(row[7]), fetched_at=row[8],
    )


async def put_blob(conn: aiosqlite.Connection, cid: str, mime_type: str, data: bytes) -> None:
    await conn.execute(
        "INSERT OR IGNORE INTO blobs (cid, mime_type, size, data, fetched_at) VALUES (?, ?, ?, ?, ?)",
        (cid, mime_type, len(data), data, time.time()),
    )


async def get_blob(conn: aiosqlite.Connection, cid: str) -> tuple[str, bytes] | None:
    async with conn.execute("SELECT mime_type, data FROM blobs WHERE cid = ?", (cid,)) as cur:
        row = await cur.fetchone()
    return (row[0], bytes(row[1])) if row else None


async def has_blob(conn: aiosqlite.Connection, cid: str) -> bool:
    async with conn.execute("SELECT 1 FROM blobs WHERE cid = ?", (cid,)) as cur:
        return await cur.fetchone() is not None


async def put(
    conn: aiosqlite.Connection, *, uri: str, cid: str, author: str, name: str,
    record: dict[str, Any], code_cid: str,
) -> None:
    await conn.execute(
        f"INSERT INTO bundles ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'cold', 0, ?) "
        "ON CONFLICT(uri, cid) DO UPDATE SET deleted = 0, fetched_at = excluded.fetched_at",
        (uri, cid, author, name, json.dumps(record, sort_keys=True), code_cid, time.time()),
    )


async def get(conn: aiosqlite.Connection, uri: str, cid: str) -> CachedBundle | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM bundles WHERE uri = ? AND cid = ?", (uri, cid)) as cur:
        row = await cur.fetchone()
    return _row(row) if row else None


async def latest(conn: aiosqlite.Connection, uri: str) -> CachedBundle | None:
    """The most recently fetched live version at `uri`."""
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM bundles WHERE uri = ? AND deleted = 0 ORDER BY fetched_at DESC LIMIT 1", (uri,)
    ) as cur:
        row = await cur.fetchone()
    return _row(row) if row else None


async def mark_deleted(conn: aiosqlite.Connection, uri: str) -> None:
    await conn.execute("UPDATE bundles SET deleted = 1 WHERE uri = ?", (uri,))


async def set_warm_state(conn: aiosqlite.Connection, uri: str, cid: str, state: str) -> None:
    await conn.execute("UPDATE bundles SET warm_state = ? WHERE uri = ? AND cid = ?", (state, uri, cid))


async def list_live(conn: aiosqlite.Connection, author: str | None = None) -> list[CachedBundle]:
    query = f"SELECT {_COLUMNS} FROM bundles WHERE deleted = 0"
    params: tuple[Any, ...] = ()
    if author:
        query += " AND author = ?"
        params = (author,)
    async with conn.execute(query + " ORDER BY fetched_at", params) as cur:
        return [_row(row) for row in await cur.fetchall()]
