"""Invocations and their state machine: seen → queued → running → done | failed.

Every transition is a conditional UPDATE on the expected current state, so two
workers (or a replayed event) can never move the same invocation twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

import aiosqlite

STATES = ("seen", "queued", "running", "done", "failed")
TERMINAL = ("done", "failed")


@dataclass(frozen=True)
class Invocation:
    uri: str
    cid: str
    author: str
    runner: str
    bundle_uri: str | None
    bundle_cid: str | None
    endpoint: str | None
    args: Any
    state: str
    status: str | None = None
    error: str | None = None
    attempts: int = 0
    result_uri: str | None = None
    created_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def rkey(self) -> str:
        return self.uri.rsplit("/", 1)[-1]


_COLUMNS = (
    "uri, cid, author, runner, bundle_uri, bundle_cid, endpoint, args, state, status, error, "
    "attempts, result_uri, created_at, queued_at, started_at, finished_at"
)


def _row(row: aiosqlite.Row) -> Invocation:
    values = list(row)
    values[7] = json.loads(values[7]) if values[7] is not None else None
    return Invocation(*values)


async def insert(
    conn: aiosqlite.Connection, *, uri: str, cid: str, author: str, runner: str,
    bundle_uri: str | None, bundle_cid: str | None, endpoint: str | None, args: Any,
    state: str = "queued", status: str | None = None, error: str | None = None,
) -> bool:
    """Record an invocation once, keyed by its at-uri. Returns False for a duplicate."""
    if state not in STATES:
        raise ValueError(f"unknown invocation state {state!r}")
    now = time.time()
    cursor = await conn.execute(
        "INSERT OR IGNORE INTO invocations (uri, cid, author, runner, bundle_uri, bundle_cid, endpoint, args, "
        "state, status, error, created_at, queued_at, finished_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            uri, cid, author, runner, bundle_uri, bundle_cid, endpoint,
            json.dumps(args) if args is not None else None, state, status, error, now,
            now if state == "queued" else None, now if state in TERMINAL else None, now,
        ),
    )
    return cursor.rowcount == 1


async def get(conn: aiosqlite.Connection, uri: str) -> Invocation | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM invocations WHERE uri = ?", (uri,)) as cur:
        row = await cur.fetchone()
    return _row(row) if row else None


async def transition(
    conn: aiosqlite.Connection, uri: str, *, from_states: Iterable[str], to: str, **fields: Any
) -> bool:
    """Move `uri` to state `to` if it is currently in one of `from_states`."""
    allowed = {"status", "error", "result_uri", "attempts"}
    unknown = set(fields) - allowed
    if unknown or to not in STATES:
        raise ValueError(f"bad transition fields {sorted(unknown)} or state {to!r}")
    now = time.time()
    sets = ["state = ?", "updated_at = ?"]
    params: list[Any] = [to, now]
    stamp = {"queued": "queued_at", "running": "started_at", "done": "finished_at", "failed": "finished_at"}[to] \
        if to != "seen" else None
    if stamp:
        sets.append(f"{stamp} = ?")
        params.append(now)
    if to == "running":
        sets.append("attempts = attempts + 1")
    for key, value in fields.items():
        sets.append(f"{key} = ?")
        params.append(value)
    froms = list(from_states)
    placeholders = ", ".join("?" for _ in froms)
    cursor = await conn.execute(
        f"UPDATE invocations SET {', '.join(sets)} WHERE uri = ? AND state IN ({placeholders})",
        (*params, uri, *froms),
    )
    return cursor.rowcount == 1


async def requeue_running(conn: aiosqlite.Connection) -> int:
    """After a crash, work that was running runs again (execution is at-least-once)."""
    cursor = await conn.execute(
        "UPDATE invocations SET state = 'queued', updated_at = ? WHERE state = 'running'", (time.time(),)
    )
    return cursor.rowcount


async def list_by_state(conn: aiosqlite.Connection, state: str, limit: int = 100) -> list[Invocation]:
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM invocations WHERE state = ? ORDER BY queued_at, created_at LIMIT ?",
        (state, limit),
    ) as cur:
        return [_row(row) for row in await cur.fetchall()]


async def count_by_state(conn: aiosqlite.Connection) -> dict[str, int]:
    async with conn.execute("SELECT state, COUNT(*) FROM invocations GROUP BY state") as cur:
        counts = {state: 0 for state in STATES}
        counts.update({row[0]: row[1] for row in await cur.fetchall()})
    return counts


async def set_result_uri(conn: aiosqlite.Connection, uri: str, result_uri: str) -> bool:
    """Remember where the invocation's result record was written."""
    cursor = await conn.execute(
        "UPDATE invocations SET result_uri = ?, updated_at = ? WHERE uri = ?", (result_uri, time.time(), uri)
    )
    return cursor.rowcount == 1
