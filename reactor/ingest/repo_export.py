"""Fetch a whole repo (`com.atproto.sync.getRepo`) and keep only what its signature proves."""

from __future__ import annotations

import asyncio
from typing import Iterable

from reactor.identity import IdentityResolver
from reactor.sync.errors import SyncError
from reactor.sync.keys import KeyCache
from reactor.sync.verify import VerifiedRecord, verify_repo_car
from reactor.xrpc import XrpcClient

MAX_REPO_BYTES = 256 * 1024 * 1024


async def fetch_verified_repo(identity: IdentityResolver, xrpc: XrpcClient, keys: KeyCache, did: str,
                              collections: Iterable[str]) -> tuple[str, list[VerifiedRecord]]:
    """(rev, records in `collections`); a bad signature re-resolves the DID's key once (it may have rotated)."""
    collections = frozenset(collections)
    car = await xrpc.get_repo((await identity.resolve(did)).pds or "", did, limit=MAX_REPO_BYTES)
    for force in (False, True):
        key = keys.get((await identity.resolve(did, force=force)).signing_key or "")
        try:
            # Walking a large MST is CPU work: keep it off the event loop.
            return await asyncio.to_thread(verify_repo_car, car, did, key, collections)
        except SyncError as error:
            if force or error.reason != "bad_signature":
                raise
    raise AssertionError("unreachable")
