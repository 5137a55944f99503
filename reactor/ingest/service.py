"""Ingestion as one service: which sources to follow, and the tasks that follow them.

Sources are the configured relay/PDS firehose plus, for each followed DID, its
PDS (one connection per distinct PDS host, shared by every followed DID on it).
Followed repos are backfilled on start so nothing written while we were down
is missed. Tracked repos (`track`) are different: only some extra collections of
theirs matter (the follow records of the account whose follows are the access
list), handed to a handler; their PDS is subscribed to the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import structlog

from reactor.identity import IdentityError, IdentityResolver
from reactor.ingest.apply import BUNDLE, INVOCATION, Applier
from reactor.ingest.backfill import Backfiller
from reactor.ingest.processor import EventProcessor, SideHandler
from reactor.ingest.subscriber import Subscription
from reactor.store import Store
from reactor.xrpc import XrpcClient

log = structlog.get_logger(__name__)

COLLECTIONS = frozenset({BUNDLE, INVOCATION})

Resync = Callable[[str, str], Awaitable[None]]  # (did, why)


def normalise_source(url: str) -> str:
    return url.rstrip("/")


class Ingestion:
    def __init__(self, store: Store, identity: IdentityResolver, xrpc: XrpcClient, applier: Applier, *,
                 firehose: str | None, follow: list[str]) -> None:
        self._store = store
        self._identity = identity
        self.processor = EventProcessor(store, identity, applier, collections=COLLECTIONS)
        self.backfiller = Backfiller(store, identity, xrpc, self.processor, applier, collections=COLLECTIONS)
        self.processor.resync = self._resync
        self.processor.on_gap = self._gap
        self.processor.main_scope = self._main_scope
        self._firehose = normalise_source(firehose) if firehose else None
        self.followed: set[str] = set(follow)
        self.tracked: dict[str, Resync] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._pds_of: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.running = False

    async def start(self) -> None:
        self.running = True
        if self._firehose:
            self._subscribe(self._firehose, watch=None)
        for did in sorted(self.tracked):
            await self._source_for(did)
        for did in sorted(self.followed):
            await self.watch(did, backfill=True)
        if not self.subscriptions:
            log.warning("ingest.no_sources", hint="set [atproto] firehose or follow")

    async def stop(self) -> None:
        self.running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.subscriptions.clear()
        self._pds_of.clear()

    async def watch(self, did: str, *, backfill: bool = True) -> None:
        """Start following `did`'s PDS (if not already) and backfill its records.

        Before `start` this only adds `did` to the followed set (start subscribes and backfills).
        """
        self.followed.add(did)
        if not self.running:
            return
        if not await self._source_for(did):
            return
        log.info("ingest.watched", did=did, pds=self._pds_of.get(did), backfill=backfill)
        if backfill:
            self.backfiller.schedule(did, "follow")

    async def unwatch(self, did: str) -> None:
        """Stop following `did`: its commits are skipped from now on (work already queued stays)."""
        self.followed.discard(did)
        if did not in self.tracked:
            await self._drop_source(did)
        log.info("ingest.unwatched", did=did)

    async def track(self, did: str, collections: frozenset[str], handler: SideHandler, *,
                    resync: Resync) -> bool:
        """Hand `did`'s verified commits to `collections` to `handler` (it need not be followed).

        `resync(did, why)` is called when its events may have been missed (a gap on its source,
        a #sync, reactivation). Returns False when its PDS could not be found (yet).
        """
        self.processor.consider(did, collections, handler)
        self.tracked[did] = resync
        if not self.running:
            return True
        return await self._source_for(did)

    async def untrack(self, did: str) -> None:
        self.processor.unconsider(did)
        self.tracked.pop(did, None)
        if did not in self.followed:
            await self._drop_source(did)

    def has_source(self, did: str) -> bool:
        """Whether `did`'s PDS is known and its events reach us (the firehose or our subscription)."""
        return self.running and did in self._pds_of

    async def _source_for(self, did: str) -> bool:
        """Make sure a source carries `did`'s events: the firehose, or a subscription to its PDS."""
        try:
            pds = normalise_source((await self._identity.resolve(did)).pds or "")
        except IdentityError as error:
            log.warning("ingest.follow_unresolvable", did=did, error=str(error))
            return False
        self._pds_of[did] = pds
        if pds != self._firehose and pds not in self.subscriptions:
            self._subscribe(pds, watch=self._watched_on(pds))
        return True

    async def _drop_source(self, did: str) -> None:
        pds = self._pds_of.pop(did, None)
        if pds and pds != self._firehose and pds not in self._pds_of.values():
            task = self._tasks.pop(pds, None)
            self.subscriptions.pop(pds, None)
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _watched_on(self, pds: str) -> Any:
        def watch(did: str) -> bool:
            return (did in self.followed or did in self.tracked) and self._pds_of.get(did) == pds
        return watch

    def _main_scope(self, source: str, did: str) -> bool:
        """dev.atrun records count from the firehose (everyone) and from followed repos;
        a repo that is only tracked contributes its side collections and nothing else."""
        return source == self._firehose or did in self.followed or did not in self.tracked

    async def _resync(self, did: str, why: str) -> None:
        await self.backfiller.resync(did, why)
        resync = self.tracked.get(did)
        if resync is not None:
            await resync(did, why)

    def _subscribe(self, source: str, *, watch: Any) -> None:
        sub = Subscription(source, self._store, self.processor, watch=watch)
        self.subscriptions[source] = sub
        self._tasks[source] = asyncio.create_task(sub.run(), name=f"subscribe:{source}")

    async def _gap(self, source: str) -> None:
        """Events from `source` may have been missed: backfill the followed repos it carries."""
        for did in sorted(self.followed):
            if source == self._firehose or self._pds_of.get(did) == source:
                self.backfiller.schedule(did, f"gap on {source}")
        for did, resync in sorted(self.tracked.items()):
            if source == self._firehose or self._pds_of.get(did) == source:
                await resync(did, f"gap on {source}")

    def health(self) -> dict[str, Any]:
        return {
            "sources": {src: sub.state for src, sub in self.subscriptions.items()},
            "followed": len(self.followed),
            "tracked": len(self.tracked),
        }
