"""Resolved identities: DID → handle, PDS, #atproto signing key, account status."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True)
class Identity:
    did: str
    handle: str | None
    pds: str | None
    signing_key: str | None
    status: str
    fetched_at: float

    @property
    def active(self) -> bool:
        return self.status == "active"


async def get(conn: aiosqlite.Connection, did: str) -> Identity | None:
    async with conn.execute(
        "SELECT did, handle, pds, signing_key, status, fetched_at FROM identities WHERE did = ?", (did,)
    ) as cur:
        row = await cur.fetchone()
    return Identity(*row) if row else None


async def put(conn: aiosqlite.Connection, identity: Identity) -> None:
    await conn.execute(
        "INSERT INTO identities (did, handle, pds, signing_key, status, fetched_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(did) DO UPDATE SET handle = excluded.handle, pds = excluded.pds, "
        "signing_key = excluded.signing_key, status = excluded.status, fetched_at = excluded.fetched_at",
        (identity.did, identity.handle, identity.pds, identity.signing_key, identity.status, identity.fetched_at),
    )


async def set_status(conn: aiosqlite.Connection, did: str, status: str) -> None:
    await conn.execute(
        "INSERT INTO identities (did, status, fetched_at) VALUES (?, ?, 0) "
        "ON CONFLICT(did) DO UPDATE SET status = excluded.status",
        (did, status),
    )


async def expire(conn: aiosqlite.Connection, did: str) -> None:
    """Force the next lookup to re-resolve (an #identity event said something changed)."""
    await conn.execute("UPDATE identities SET fetched_at = 0 WHERE did = ?", (did,))


def is_fresh(identity: Identity, ttl_s: float, now: float | None = None) -> bool:
    return (now or time.time()) - identity.fetched_at < ttl_s
