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
from reactor.sync.filter import CommitFilter, peek_single_path
from reactor.sync.frames import (
    COMMIT_HEADER, AccountEvent, CommitEvent, ErrorFrame, IdentityEvent, InfoEvent, SyncEvent, frame_seq,
)
from reactor.sync.keys import KeyCache, PublicKey
from reactor.sync.verify import VerifiedRecord, check_rev, verify_commit, verify_sync_event

log = structlog.get_logger(__name__)

CURSOR_FLUSH_S = 1.0

Resync = Callable[[str, str], Awaitable[None]]  # (did, why)
Gap = Callable[[str], Awaitable[None]]  # (source): events may have been missed
SideHandler = Callable[[str, str, list[VerifiedRecord]], Awaitable[None]]  # (did, rev, verified records)
MainScope = Callable[[str, str], bool]  # (source, did): do this repo's dev.atrun records matter from there?


def _repo_needle(did: str) -> bytes:
    """The canonical DAG-CBOR bytes of a #commit body's `repo: did` entry (key, then text value)."""
    raw = did.encode()
    n = len(raw)
    head = bytes([0x60 + n]) if n < 24 else b"\x78" + bytes([n]) if n < 256 else b"\x79" + n.to_bytes(2, "big")
    return b"\x64repo" + head + raw


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
        self.keys = KeyCache()
        self.resync = resync
        self.on_gap: Gap | None = None
        self._backfilling: dict[str, list[tuple[CommitEvent, bool]]] = {}
        self._skipped: dict[str, bytes] = {}
        self._flushed_at: dict[str, float] = {}
        # Side collections: extra collections verified for one repo only (e.g. the follow
        # records of the account whose follows are the access list), handed to a handler.
        self._side: dict[str, tuple[frozenset[str], SideHandler]] = {}
        self._side_filter: CommitFilter | None = None
        self._side_cols_b: frozenset[bytes] = frozenset()
        self._side_needles: tuple[bytes, ...] = ()
        self.main_scope: MainScope | None = None

    # -- side collections ---------------------------------------------------------------------

    def consider(self, did: str, collections: frozenset[str], handler: SideHandler) -> None:
        """Also verify `did`'s commits touching `collections`, and pass those records to `handler`.

        Only `did`'s commits: the same collections from any other repo are still skipped by a
        byte compare, never decoded or signature-checked.
        """
        self._side[did] = (frozenset(collections), handler)
        self._side_changed()

    def unconsider(self, did: str) -> None:
        self._side.pop(did, None)
        self._side_changed()

    def _side_changed(self) -> None:
        cols = frozenset().union(*(cols for cols, _ in self._side.values()))
        self._side_filter = CommitFilter(cols) if cols else None
        self._side_cols_b = frozenset(c.encode() for c in cols)
        self._side_needles = tuple(_repo_needle(did) for did in self._side)

    def _select_side(self, frame: bytes) -> CommitEvent | None:
        """A commit the main filter skipped that a considered repo made to its side collections."""
        if self._side_filter is None or not frame.startswith(COMMIT_HEADER):
            return None
        path = peek_single_path(frame)
        if path is not None and path.partition(b"/")[0] not in self._side_cols_b:
            return None  # the common case: one op in a collection nobody considers
        if not any(needle in frame for needle in self._side_needles):
            return None  # not from a considered repo (checked exactly after decoding)
        event = self._side_filter.select(frame)
        if type(event) is not CommitEvent or event.repo not in self._side:
            return None
        cols = self._side[event.repo][0]
        return event if any(op.path.partition("/")[0] in cols for op in event.ops) else None

    # -- frames ------------------------------------------------------------------------------

    async def handle_frame(self, source: str, frame: bytes, *, watch: Callable[[str], bool] | None = None) -> None:
        """Process one frame; never raises for bad input (SourceError aside)."""
        metrics.frames_total.labels(source=source).inc()
        try:
            event = self._filter.select(frame)
            if event is None and self._side:
                event = self._select_side(frame if type(frame) is bytes else bytes(frame))
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
                main = self.main_scope is None or self.main_scope(source, event.repo)
                await self.handle_commit(event, Cursor(source, event.seq), main=main)
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
            if error.reason == "too_big" and did is not None and self.resync is not None:
                # The commit's records are not in the frame: read them from the repo instead.
                await self.resync(did, "tooBig commit")
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

    async def handle_commit(self, event: CommitEvent, cursor: Cursor | None, *, main: bool = True) -> None:
        buffer = self._backfilling.get(event.repo)
        if buffer is not None:
            buffer.append((event, main))
            if cursor is not None:
                await self._cursor(cursor.source, cursor.seq)
            return
        await self._apply_commit(event, cursor, main=main)

    async def _apply_commit(self, event: CommitEvent, cursor: Cursor | None, *, main: bool) -> None:
        if await self._identity.status(event.repo) != "active":
            self._reject("inactive_account", did=event.repo)
            if cursor is not None:
                await self._cursor(cursor.source, cursor.seq)
            return
        async with self._store.read() as conn:
            last_rev = await repos.get_rev(conn, event.repo)
        check_rev(event.rev, last_rev)
        side_cols, side_handler = self._side.get(event.repo, (frozenset(), None))
        verified = await self._verify(event, self._filter.collections | side_cols)
        records = [rec for rec in verified.records if main and rec.collection in self._filter.collections]
        side = [rec for rec in verified.records if rec.collection in side_cols]
        if side and side_handler is not None:
            await side_handler(event.repo, event.rev, side)
        await self._applier.apply(event.repo, event.rev, records, cursor=cursor)

    async def _verify(self, event: CommitEvent, collections: frozenset[str]):  # type: ignore[no-untyped-def]
        """Verify against the cached key; on a bad signature refresh the identity once and retry."""
        key = await self._key(event.repo, force=False)
        try:
            return verify_commit(event, key, collections)
        except SyncError as error:
            if error.reason != "bad_signature":
                raise
            try:
                key = await self._key(event.repo, force=True)
            except IdentityError:
                raise error from None
        return verify_commit(event, key, collections)

    async def _key(self, did: str, *, force: bool) -> PublicKey:
        identity = await self._identity.resolve(did, force=force)
        return self.keys.get(identity.signing_key or "")

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
        """Apply live events that arrived during the backfill, in order; stale revs are skipped.

        The buffer stays registered while it drains, so events arriving meanwhile queue behind it.
        """
        buffer = self._backfilling.get(did, [])
        while buffer:
            event, main = buffer.pop(0)
            try:
                await self._apply_commit(event, None, main=main)
            except SyncError as error:
                self._reject(error.reason, did=did, error=str(error))
            except IdentityError as error:
                self._reject("unresolvable_identity", did=did, error=str(error))
        self._backfilling.pop(did, None)
