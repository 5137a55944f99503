"""Apply verified record writes to the store: bundles to the cache, invocations to the queue.

Shared by live events and backfill. Network work (blob fetches) happens before
the transaction; the writes, the repo's rev and the source cursor then commit
together, so a crash either keeps all of an event's effects or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import structlog

from reactor import metrics
from reactor.bundles import BundleCache, BundleError, FetchedBundle
from reactor.intake import Intake
from reactor.records import ipld_to_json
from reactor.store import Store, bundles, cursors, repos
from reactor.sync.verify import VerifiedRecord

log = structlog.get_logger(__name__)

BUNDLE = "dev.atrun.bundle"
INVOCATION = "dev.atrun.invocation"


@dataclass(frozen=True)
class Cursor:
    source: str
    seq: int


class Applier:
    def __init__(self, store: Store, bundles: BundleCache, intake: Intake) -> None:
        self._store = store
        self._bundles = bundles
        self._intake = intake
        self.on_queued: Callable[[], None] | None = None

    async def apply(self, did: str, rev: str | None, verified: list[VerifiedRecord] | tuple[VerifiedRecord, ...],
                    *, cursor: Cursor | None = None) -> None:
        records = [_json_form(rec) for rec in verified]
        fetched: dict[str, FetchedBundle] = {}
        queued = False
        for rec in records:
            if rec.collection == BUNDLE and rec.action != "delete" and rec.record is not None and rec.cid:
                uri = _uri(did, rec)
                try:
                    fetched[uri] = await self._bundles.fetch(uri=uri, cid=rec.cid, author=did, record=rec.record)
                except BundleError as error:
                    metrics.bundle_errors.labels(reason=error.reason).inc()
                    log.warning("bundle.rejected", uri=uri, reason=error.reason, error=str(error))
        async with self._store.transaction() as conn:
            for rec in records:
                uri = _uri(did, rec)
                if rec.collection == BUNDLE:
                    if rec.action == "delete":
                        await self._bundles.delete(conn, uri)
                    elif uri in fetched:
                        await self._bundles.save(conn, fetched[uri])
                elif rec.collection == INVOCATION and rec.action == "create" and rec.cid:
                    outcome = await self._intake.accept(conn, author=did, uri=uri, cid=rec.cid, record=rec.record)
                    metrics.invocations_intake.labels(outcome=outcome.kind).inc()
                    queued = queued or outcome.kind == "queued"
                metrics.events_processed.labels(collection=rec.collection, action=rec.action).inc()
            if rev is not None:
                await repos.set_rev(conn, did, rev)
            if cursor is not None:
                await cursors.put(conn, cursor.source, cursor.seq)
        if queued and self.on_queued is not None:
            self.on_queued()
        for bundle in fetched.values():
            log.info("bundle.cached", uri=bundle.uri, cid=bundle.cid, code=bundle.code_cid)
            await self._bundles.saved(bundle)


    async def mark_gone(self, did: str, present: set[str]) -> None:
        """Bundles we hold for `did` that its repo no longer has were deleted while we weren't looking."""
        async with self._store.transaction() as conn:
            for cached in await bundles.list_live(conn, author=did):
                if cached.uri not in present:
                    await self._bundles.delete(conn, cached.uri)
                    log.info("bundle.gone", uri=cached.uri)


def _json_form(rec: VerifiedRecord) -> VerifiedRecord:
    """Records come out of CARs in IPLD form (links and bytes as `bytes`); we store atproto JSON."""
    if rec.record is None:
        return rec
    return VerifiedRecord(rec.collection, rec.rkey, rec.action, rec.cid, ipld_to_json(rec.record))


def _uri(did: str, rec: VerifiedRecord) -> str:
    return f"at://{did}/{rec.collection}/{rec.rkey}"
