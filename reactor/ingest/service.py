"""Ingestion as one service: which sources to follow, and the tasks that follow them.

Sources are the configured relay/PDS firehose plus, for each followed DID, its
PDS (one connection per distinct PDS host, shared by every followed DID on it).
Followed repos are backfilled on start so nothing written while we were down
is missed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from reactor.identity import IdentityError, IdentityResolver
from reactor.ingest.apply import BUNDLE, INVOCATION, Applier
from reactor.ingest.backfill import Backfiller
from reactor.ingest.processor import EventProcessor
from reactor.ingest.subscriber import Subscription
from reactor.store import Store
from reactor.xrpc import XrpcClient

log = structlog.get_logger(__name__)

COLLECTIONS = frozenset({BUNDLE, INVOCATION})


def normalise_source(url: str) -> str:
    return url.rstrip("/")


class Ingestion:
    def __init__(self, store: Store, identity: IdentityResolver, xrpc: XrpcClient, applier: Applier, *,
                 firehose: str | None, follow: list[str]) -> None:
        self._store = store
        self._identity = identity
        self.processor = EventProcessor(store, identity, applier, collections=COLLECTIONS)
        self.backfiller = Backfiller(store, identity, xrpc, self.processor, applier, collections=COLLECTIONS)
        self.processor.resync = self.backfiller.resync
        self.processor.on_gap = self._gap
        self._firehose = normalise_source(firehose) if firehose else None
        self.followed: set[str] = set(follow)
        self.subscriptions: dict[str, Subscription] = {}
        self._pds_of: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        if self._firehose:
            self._subscribe(self._firehose, watch=None)
        for did in sorted(self.followed):
            await self.watch(did, backfill=True)
        if not self.subscriptions:
            log.warning("ingest.no_sources", hint="set [atproto] firehose or follow")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def watch(self, did: str, *, backfill: bool = True) -> None:
        """Start following `did`'s PDS (if not already) and backfill its records."""
        self.followed.add(did)
        try:
            pds = normalise_source((await self._identity.resolve(did)).pds or "")
        except IdentityError as error:
            log.warning("ingest.follow_unresolvable", did=did, error=str(error))
            return
        self._pds_of[did] = pds
        if pds != self._firehose and pds not in self.subscriptions:
            self._subscribe(pds, watch=self._watched_on(pds))
        if backfill:
            self.backfiller.schedule(did, "follow")

    async def unwatch(self, did: str) -> None:
        self.followed.discard(did)
        pds = self._pds_of.pop(did, None)
        if pds and pds != self._firehose and pds not in self._pds_of.values():
            task = self._tasks.pop(pds, None)
            self.subscriptions.pop(pds, None)
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        log.info("ingest.unwatched", did=did)

    def _watched_on(self, pds: str) -> Any:
        def watch(did: str) -> bool:
            return did in self.followed and self._pds_of.get(did) == pds
        return watch

    def _subscribe(self, source: str, *, watch: Any) -> None:
        sub = Subscription(source, self._store, self.processor, watch=watch)
        self.subscriptions[source] = sub
        self._tasks[source] = asyncio.create_task(sub.run(), name=f"subscribe:{source}")

    async def _gap(self, source: str) -> None:
        """Events from `source` may have been missed: backfill the followed repos it carries."""
        for did in sorted(self.followed):
            if source == self._firehose or self._pds_of.get(did) == source:
                self.backfiller.schedule(did, f"gap on {source}")

    def health(self) -> dict[str, Any]:
        return {
            "sources": {src: sub.state for src, sub in self.subscriptions.items()},
            "followed": len(self.followed),
        }
