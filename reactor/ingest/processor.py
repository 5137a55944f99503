"""Turn firehose frames into verified work, following the Sync 1.1 consumer checklist.

Everything arriving here is hostile. A frame that fails any check is logged and
counted by reason, and the subscriber goes on with the next one: one bad repo
never stalls the stream.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import structlog

from reactor import metrics
from reactor.identity import IdentityError, IdentityResolver
from reactor.ingest.apply import Applier, Cursor
from reactor.store import Store, cursors, repos
from reactor.sync.errors import SyncError
from reactor.sync.filter import CommitFilter
from reactor.sync.frames import (
    AccountEvent, CommitEvent, ErrorFrame, IdentityEvent, InfoEvent, SyncEvent, frame_seq,
)
from reactor.sync.keys import KeyCache, PublicKey
from reactor.sync.verify import check_rev, verify_commit, verify_sync_event

log = structlog.get_logger(__name__)

CURSOR_FLUSH_S = 1.0

Resync = Callable[[str, str], Awaitable[None]]  # (did, why)
Gap = Callable[[str], Awaitable[None]]  # (source): events may have been missed


class SourceError(Exception):
    """The source itself says stop: e.g. FutureCursor. The subscriber decides what to do."""

    def __init__(self, error: str, message: str | None) -> None:
        super().__init__(f"{error}: {message or ''}")
        self.error = error


class EventProcessor:
    def __init__(self, store: Store, identity: IdentityResolver, applier: Applier, *,
                 collections: frozenset[str], resync: Resync | None = None) -> None:
        self._store = store
        self._identity = identity
        self._applier = applier
        self._filter = CommitFilter(collections)
        self._keys = KeyCache()
        self.resync = resync
        self.on_gap: Gap | None = None
        self._backfilling: dict[str, list[CommitEvent]] = {}
        self._skipped: dict[str, bytes] = {}
        self._flushed_at: dict[str, float] = {}

    # -- frames ------------------------------------------------------------------------------

    async def handle_frame(self, source: str, frame: bytes, *, watch: Callable[[str], bool] | None = None) -> None:
        """Process one frame; never raises for bad input (SourceError aside)."""
        metrics.frames_total.labels(source=source).inc()
        try:
            event = self._filter.select(frame)
        except SyncError as error:
            self._reject(error.reason, source=source, error=str(error))
            return
        if event is None:
            self._skipped[source] = frame
            await self._maybe_flush(source)
            return
        if isinstance(event, ErrorFrame):
            raise SourceError(event.error, event.message)
        if isinstance(event, InfoEvent):
            log.warning("firehose.info", source=source, name=event.name, message=event.message)
            if event.name == "OutdatedCursor":
                metrics.events_rejected.labels(reason="outdated_cursor").inc()
                if self.on_gap is not None:
                    await self.on_gap(source)
            return
        did = getattr(event, "repo", None) or getattr(event, "did", None)
        if watch is not None and did is not None and not watch(did):
            self._skipped[source] = frame
            await self._maybe_flush(source)
            return
        try:
            if isinstance(event, CommitEvent):
                await self.handle_commit(event, Cursor(source, event.seq))
            elif isinstance(event, IdentityEvent):
                await self._identity.forget(event.did)
                log.info("identity.changed", did=event.did, handle=event.handle)
                await self._cursor(source, event.seq)
            elif isinstance(event, AccountEvent):
                await self._account(event)
                await self._cursor(source, event.seq)
            elif isinstance(event, SyncEvent):
                await self._sync(event)
                await self._cursor(source, event.seq)
        except SyncError as error:
            self._reject(error.reason, source=source, did=did, error=str(error))
            await self._cursor(source, getattr(event, "seq", None))
        except IdentityError as error:
            self._reject("unresolvable_identity", source=source, did=did, error=str(error))
            await self._cursor(source, getattr(event, "seq", None))

    def _reject(self, reason: str, **fields: object) -> None:
        metrics.events_rejected.labels(reason=reason).inc()
        log.warning("event.rejected", reason=reason, **fields)

    # -- cursor --------------------------------------------------------------------------------

    async def _cursor(self, source: str, seq: int | None) -> None:
        self._skipped.pop(source, None)
        if seq is None:
            return
        async with self._store.transaction() as conn:
            await cursors.put(conn, source, seq)
        self._flushed_at[source] = time.monotonic()

    async def _maybe_flush(self, source: str) -> None:
        if time.monotonic() - self._flushed_at.get(source, 0.0) >= CURSOR_FLUSH_S:
            await self.flush(source)

    async def flush(self, source: str) -> None:
        """Persist the cursor of the last skipped frame (skipped frames carry no work)."""
        frame = self._skipped.pop(source, None)
        self._flushed_at[source] = time.monotonic()
        if frame is None:
            return
        try:
            seq = frame_seq(frame)
        except SyncError:
            return
        if seq is not None:
            async with self._store.transaction() as conn:
                current = await cursors.get(conn, source)
                if current is None or seq > current:
                    await cursors.put(conn, source, seq)

    # -- commits -------------------------------------------------------------------------------

    async def handle_commit(self, event: CommitEvent, cursor: Cursor | None) -> None:
        buffer = self._backfilling.get(event.repo)
        if buffer is not None:
            buffer.append(event)
            if cursor is not None:
                await self._cursor(cursor.source, cursor.seq)
            return
        if await self._identity.status(event.repo) != "active":
            self._reject("inactive_account", did=event.repo)
            if cursor is not None:
                await self._cursor(cursor.source, cursor.seq)
            return
        async with self._store.read() as conn:
            last_rev = await repos.get_rev(conn, event.repo)
        check_rev(event.rev, last_rev)
        verified = await self._verify(event)
        await self._applier.apply(event.repo, event.rev, verified.records, cursor=cursor)

    async def _verify(self, event: CommitEvent):  # type: ignore[no-untyped-def]
        """Verify against the cached key; on a bad signature refresh the identity once and retry."""
        key = await self._key(event.repo, force=False)
        try:
            return verify_commit(event, key, self._filter.collections)
        except SyncError as error:
            if error.reason != "bad_signature":
                raise
            try:
                key = await self._key(event.repo, force=True)
            except IdentityError:
                raise error from None
        return verify_commit(event, key, self._filter.collections)

    async def _key(self, did: str, *, force: bool) -> PublicKey:
        identity = await self._identity.resolve(did, force=force)
        return self._keys.get(identity.signing_key or "")

    async def key_for(self, did: str, *, force: bool = False) -> PublicKey:
        return await self._key(did, force=force)

    # -- account and sync ------------------------------------------------------------------------

    async def _account(self, event: AccountEvent) -> None:
        status = "active" if event.active else (event.status or "inactive")
        previous = await self._identity.status(event.did)
        await self._identity.set_status(event.did, status)
        log.info("account.status", did=event.did, status=status)
        if status == "active" and previous != "active" and self.resync is not None:
            await self.resync(event.did, "reactivated")

    async def _sync(self, event: SyncEvent) -> None:
        key = await self._key(event.did, force=False)
        try:
            verify_sync_event(event, key)
        except SyncError as error:
            if error.reason != "bad_signature":
                raise
            verify_sync_event(event, await self._key(event.did, force=True))
        log.info("repo.sync_event", did=event.did, rev=event.rev)
        if self.resync is not None:
            await self.resync(event.did, "sync event")

    # -- backfill buffering ----------------------------------------------------------------------

    def begin_backfill(self, did: str) -> None:
        self._backfilling.setdefault(did, [])

    async def end_backfill(self, did: str) -> None:
        """Apply live events that arrived during the backfill, in order; stale revs are skipped."""
        while True:
            buffered = self._backfilling.get(did, [])
            if not buffered:
                self._backfilling.pop(did, None)
                return
            event = buffered.pop(0)
            self._backfilling.pop(did, None) if not buffered else None
            try:
                await self._replay(event)
            except SyncError as error:
                self._reject(error.reason, did=did, error=str(error))
            finally:
                if buffered:
                    self._backfilling[did] = buffered

    async def _replay(self, event: CommitEvent) -> None:
        saved = self._backfilling.pop(event.repo, None)
        try:
            await self.handle_commit(event, None)
        finally:
            if saved:
                self._backfilling[event.repo] = saved
