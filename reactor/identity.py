"""DID → handle, PDS and #atproto signing key, cached in the store with a TTL.

Signature checks need the key of every repo we act on, so lookups are cached
in memory too; `#identity` events and failed signature checks force a refresh.
"""

from __future__ import annotations

import asyncio
import time

import httpx

import structlog
from atproto_identity.resolver import AsyncIdResolver

from reactor.store import Store, identities
from reactor.store.identities import Identity
from reactor.xrpc import XrpcClient, XrpcError

log = structlog.get_logger(__name__)


class IdentityError(Exception):
    """The DID could not be resolved to a usable ATProto identity."""


class IdentityResolver:
    def __init__(self, store: Store, plc_url: str, *, ttl_s: float = 3600.0, timeout_s: float = 10.0,
                 handle_services: list[str] | None = None, xrpc: XrpcClient | None = None) -> None:
        self._store = store
        self._handle_services = [s.rstrip("/") for s in handle_services or [] if s.startswith("http")]
        self._xrpc = xrpc
        self._handles: dict[str, tuple[str, float]] = {}
        self._resolver = AsyncIdResolver(plc_url=plc_url.rstrip("/"), timeout=timeout_s)
        self._ttl_s = ttl_s
        self._memory: dict[str, Identity] = {}
        # DIDs that just failed to resolve: hostile input (forged tokens, random /b/ authors) must not
        # turn every request into a PLC lookup.
        self._failed: dict[str, tuple[float, str]] = {}
        self.negative_ttl_s = 30.0
        self._inflight: dict[str, asyncio.Future[Identity]] = {}

    async def resolve(self, did: str, *, force: bool = False) -> Identity:
        """A fresh-enough identity; concurrent lookups of one DID share one network call."""
        if not force:
            cached = self._memory.get(did)
            if cached is None:
                async with self._store.read() as conn:
                    cached = await identities.get(conn, did)
            if cached is not None and cached.signing_key and identities.is_fresh(cached, self._ttl_s):
                self._memory[did] = cached
                return cached
        failed = self._failed.get(did)
        if failed is not None and time.monotonic() - failed[0] < self.negative_ttl_s:
            raise IdentityError(failed[1])
        pending = self._inflight.get(did)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._inflight[did] = future
        try:
            identity = await self._fetch(did)
            future.set_result(identity)
            return identity
        except IdentityError as error:
            if len(self._failed) > 10_000:
                self._failed.clear()
            self._failed[did] = (time.monotonic(), str(error))
            future.set_exception(error)
            future.exception()
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[did]

    async def _fetch(self, did: str) -> Identity:
        if not did.startswith(("did:plc:", "did:web:")):
            raise IdentityError(f"{did!r}: unsupported DID method")
        try:
            data = await self._resolver.did.resolve_atproto_data(did, force_refresh=True)
        except Exception as error:  # noqa: BLE001 - the SDK raises many kinds; all mean "unresolvable"
            raise IdentityError(f"{did}: cannot resolve DID document: {error}") from None
        if not data.signing_key or not data.pds:
            raise IdentityError(f"{did}: DID document has no #atproto signing key or PDS endpoint")
        async with self._store.transaction() as conn:
            previous = await identities.get(conn, did)
            identity = Identity(
                did=did, handle=data.handle, pds=data.pds.rstrip("/"), signing_key=data.signing_key,
                status=previous.status if previous else "active", fetched_at=time.time(),
            )
            await identities.put(conn, identity)
        self._memory[did] = identity
        log.debug("identity.resolved", did=did, handle=identity.handle, pds=identity.pds)
        return identity

    async def resolve_handle(self, handle: str) -> str:
        """Handle → DID, confirmed both ways (the DID document must claim the handle back)."""
        handle = handle.lower().removeprefix("@")
        cached = self._handles.get(handle)
        if cached and time.time() - cached[1] < self._ttl_s:
            return cached[0]
        did = await self._handle_to_did(handle)
        if did is None:
            raise IdentityError(f"handle {handle!r} does not resolve")
        identity = await self.resolve(did)
        if (identity.handle or "").lower() != handle:
            identity = await self.resolve(did, force=True)
            if (identity.handle or "").lower() != handle:
                raise IdentityError(f"{did} does not claim the handle {handle!r}")
        self._handles[handle] = (did, time.time())
        return did

    async def _handle_to_did(self, handle: str) -> str | None:
        try:
            did = await self._resolver.handle.resolve(handle)
        except Exception:  # noqa: BLE001 - DNS/HTTPS failures just mean "try the next way"
            did = None
        if did:
            return did
        # Handles on a private PDS (and every handle in tests) resolve through that PDS.
        for service in self._handle_services if self._xrpc is not None else []:
            try:
                answer = await self._xrpc.query(service, "com.atproto.identity.resolveHandle", {"handle": handle})
            except (XrpcError, httpx.HTTPError):
                continue
            value = answer.get("did") if isinstance(answer, dict) else None
            if isinstance(value, str) and value.startswith("did:"):
                return value
        return None

    async def forget(self, did: str) -> None:
        """An #identity event: the next lookup goes to the network."""
        self._memory.pop(did, None)
        async with self._store.transaction() as conn:
            await identities.expire(conn, did)

    async def set_status(self, did: str, status: str) -> None:
        self._memory.pop(did, None)
        async with self._store.transaction() as conn:
            await identities.set_status(conn, did, status)

    async def status(self, did: str) -> str:
        cached = self._memory.get(did)
        if cached is not None:
            return cached.status
        async with self._store.read() as conn:
            stored = await identities.get(conn, did)
        return stored.status if stored else "active"
