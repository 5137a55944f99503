"""Identity resolution against the real local PLC: caching, refresh and the negative cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reactor.identity import IdentityError, IdentityResolver
from reactor.store import Store, identities
from reactor.xrpc import XrpcClient
from tests.atnet import TestNetwork


async def test_resolves_caches_and_confirms_handles(atnet: TestNetwork, tmp_path: Path) -> None:
    alice = await atnet.create_account("alice")
    store = await Store.open(tmp_path / "s.db")
    try:
        xrpc = XrpcClient()
        resolver = IdentityResolver(store, atnet.plc_url, handle_services=[atnet.pds_url], xrpc=xrpc)
        identity = await resolver.resolve(alice.did)
        assert identity.handle == alice.handle and identity.pds == atnet.pds_url.rstrip("/")
        assert identity.signing_key and identity.signing_key.startswith("did:key:")
        async with store.read() as conn:
            assert await identities.get(conn, alice.did) == identity  # persisted for restarts
        assert await resolver.resolve_handle(alice.handle) == alice.did
        await xrpc.aclose()
    finally:
        await store.close()


async def test_unresolvable_dids_are_remembered_briefly(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        resolver = IdentityResolver(store, "http://127.0.0.1:9", timeout_s=1)
        with pytest.raises(IdentityError):
            await resolver.resolve("did:plc:doesnotexistanywhere")
        started = time.monotonic()
        with pytest.raises(IdentityError):
            await resolver.resolve("did:plc:doesnotexistanywhere", force=True)
        assert time.monotonic() - started < 0.05  # answered from the negative cache, no network
        with pytest.raises(IdentityError, match="unsupported DID method"):
            await resolver.resolve("did:example:123")
    finally:
        await store.close()
