"""Backfill and resync: read a repo's dev.atrun records from a verified `getRepo` export.

Used on start for followed repos, when a cursor gap means events were missed,
on `#sync` and on account reactivation. Live events for a repo being backfilled
are buffered by the processor and applied afterwards, in order.
"""

from __future__ import annotations

import asyncio

import structlog

from reactor import metrics
from reactor.identity import IdentityError, IdentityResolver
from reactor.ingest.apply import BUNDLE, Applier
from reactor.ingest.processor import EventProcessor
from reactor.ingest.repo_export import fetch_verified_repo
from reactor.store import Store, bundles, invocations, repos
from reactor.sync.errors import SyncError
from reactor.sync.verify import VerifiedRecord
from reactor.xrpc import XrpcClient, XrpcError

log = structlog.get_logger(__name__)

class Backfiller:
    def __init__(self, store: Store, identity: IdentityResolver, xrpc: XrpcClient, processor: EventProcessor,
                 applier: Applier, *, collections: frozenset[str]) -> None:
        self._store = store
        self._identity = identity
        self._xrpc = xrpc
        self._processor = processor
        self._applier = applier
        self._collections = collections
        self._running: dict[str, asyncio.Task[None]] = {}

    def schedule(self, did: str, why: str) -> asyncio.Task[None]:
        """Start a backfill unless one is already running for `did`; returns its task."""
        task = self._running.get(did)
        if task is None or task.done():
            self._processor.begin_backfill(did)  # buffer live events from now on
            task = asyncio.create_task(self._run(did, why), name=f"backfill:{did}")
            self._running[did] = task
        return task

    async def resync(self, did: str, why: str) -> None:
        """Processor hook: backfill in the background so the firehose keeps flowing."""
        self.schedule(did, why)

    async def _run(self, did: str, why: str) -> None:
        try:
            await self.backfill(did, why)
        finally:
            await self._processor.end_backfill(did)
            self._running.pop(did, None)

    async def backfill(self, did: str, why: str) -> None:
        log.info("backfill.start", did=did, why=why)
        try:
            rev, records = await fetch_verified_repo(self._identity, self._xrpc, self._processor.keys, did,
                                                     self._collections)
        except (XrpcError, IdentityError, SyncError) as error:
            reason = getattr(error, "reason", type(error).__name__)
            metrics.backfills.labels(outcome="failed").inc()
            log.warning("backfill.failed", did=did, why=why, reason=reason, error=str(error))
            return
        fresh = await self._new_records(did, records)
        async with self._store.read() as conn:
            last_rev = await repos.get_rev(conn, did)
        newer_rev = rev if last_rev is None or rev > last_rev else None
        await self._applier.apply(did, newer_rev, fresh)
        await self._mark_gone(did, records)
        async with self._store.transaction() as conn:
            await repos.mark_backfilled(conn, did, None)
        metrics.backfills.labels(outcome="done").inc()
        log.info("backfill.done", did=did, rev=rev, records=len(records), new=len(fresh))

    async def _new_records(self, did: str, records: list[VerifiedRecord]) -> list[VerifiedRecord]:
        """Only what we have not seen: unknown bundle versions and unknown invocations."""
        fresh = []
        async with self._store.read() as conn:
            for rec in records:
                uri = f"at://{did}/{rec.collection}/{rec.rkey}"
                if rec.collection == BUNDLE:
                    cached = await bundles.get(conn, uri, rec.cid or "")
                    if cached is None or cached.deleted:
                        fresh.append(rec)
                elif await invocations.get(conn, uri) is None:
                    fresh.append(rec)
        return fresh

    async def _mark_gone(self, did: str, records: list[VerifiedRecord]) -> None:
        present = {f"at://{did}/{r.collection}/{r.rkey}" for r in records if r.collection == BUNDLE}
        await self._applier.mark_gone(did, present)
