"""Social trust: the accounts the operator follows are the watch list and the allowlist.

The follow set is the subjects of one source account's `app.bsky.graph.follow`
records: the runner's own DID, or `[access] follows_of` (a community account).
It is loaded from the source repo (`getRepo`, signature and MST checked like any
repo data), cached in the store so a restart without the PDS still knows it, and
kept live from the source's own verified commits: the processor considers
follow records of that one repo only (`EventProcessor.consider`).

A change swaps the access policy at once (`on_change`) and, with
`[atproto] follow = "follows"`, reconciles the watched repos in the background:
a new follow is watched and backfilled, an unfollow stops being watched.
Blocklisted accounts are never watched, followed or not.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import httpx
import structlog

from reactor.access import AccessPolicy, Source
from reactor.config import Config
from reactor.identity import IdentityError, IdentityResolver
from reactor.ingest.repo_export import fetch_verified_repo
from reactor.ingest.service import Ingestion
from reactor.store import Store, identities
from reactor.store import follows as follow_store
from reactor.sync.errors import SyncError
from reactor.sync.keys import KeyCache
from reactor.sync.verify import VerifiedRecord
from reactor.xrpc import XrpcClient, XrpcError

log = structlog.get_logger(__name__)

FOLLOW = "app.bsky.graph.follow"
COLLECTIONS = frozenset({FOLLOW})
RETRY_MAX_S = 60.0

_SUBJECT_RE = re.compile(r"did:(plc:[a-z2-7]{24}|web:[a-zA-Z0-9._:%-]{1,253})")


def follows_needed(config: Config) -> bool:
    return config.atproto.follow == "follows" or config.access.mode == "follows"


def follow_source(config: Config) -> str | None:
    """Whose follows count: `[access] follows_of`, else the runner's own DID."""
    return config.access.follows_of or config.did


def subject_of(record: Any) -> str | None:
    """The followed DID of a follow record, if it names one we could ever resolve."""
    subject = record.get("subject") if isinstance(record, dict) else None
    return subject if isinstance(subject, str) and _SUBJECT_RE.fullmatch(subject) else None


def apply_ops(current: dict[str, str], records: list[VerifiedRecord]) -> dict[str, str]:
    """The rkey → subject map after one commit's follow ops (a pure function: unit-tested)."""
    result = dict(current)
    for rec in records:
        if rec.collection != FOLLOW:
            continue
        subject = None if rec.action == "delete" else subject_of(rec.record)
        if subject is None:
            if rec.action != "delete":
                log.warning("follows.bad_record", rkey=rec.rkey, reason="no DID subject")
            result.pop(rec.rkey, None)
        else:
            result[rec.rkey] = subject
    return result


def subjects(records: dict[str, str]) -> frozenset[str]:
    return frozenset(records.values())


class Follows:
    """The live follow set of `source`, feeding the access policy and (optionally) the watch list."""

    def __init__(self, store: Store, identity: IdentityResolver, xrpc: XrpcClient, ingestion: Ingestion,
                 source: str, *, watch: bool, on_change: Callable[[frozenset[str]], None],
                 blocked: Callable[[], frozenset[str]], load_timeout_s: float = 10.0) -> None:
        self._store = store
        self._identity = identity
        self._xrpc = xrpc
        self._ingestion = ingestion
        self.source = source
        self.watching = watch
        self._on_change = on_change
        self._blocked = blocked
        self._load_timeout_s = load_timeout_s
        self._keys = KeyCache()
        self._records: dict[str, str] = {}
        self._loading: list[tuple[str, list[VerifiedRecord]]] | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loaded_rev: str | None = None  # set by a load in this process
        self.loaded_at: float | None = None  # the last load, possibly by an earlier process

    @property
    def subjects(self) -> frozenset[str]:
        return subjects(self._records)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Before ingestion starts: the cached set, live tracking, and a first (bounded) load."""
        async with self._store.read() as conn:
            self._records = await follow_store.records(conn, self.source)
            state = await follow_store.state(conn, self.source)
        if state is not None:
            self.loaded_at = state.loaded_at
        log.info("follows.cached", source=self.source, size=len(self.subjects))
        if self._records:
            self._changed(frozenset(), "cache", quiet=True)
        await self._ingestion.track(self.source, COLLECTIONS, self._on_records, resync=self._on_resync)
        first = self._spawn(self.refresh("start"))
        try:
            await asyncio.wait_for(asyncio.shield(first), self._load_timeout_s)
        except TimeoutError:
            log.warning("follows.load_slow", source=self.source, timeout_s=self._load_timeout_s,
                        hint="going on with the cached follow set; the load continues in the background")
        await self._settle()

    async def run(self) -> None:
        """After ingestion started: retry what failed (the load, finding the source) with backoff."""
        delay = 1.0
        while True:
            if self.loaded_rev is None and not self._lock.locked():
                await self.refresh("retry")
            if not self._ingestion.has_source(self.source):
                await self._ingestion.track(self.source, COLLECTIONS, self._on_records, resync=self._on_resync)
            if self.loaded_rev is not None and self._ingestion.has_source(self.source):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def stop(self) -> None:
        tasks = [t for t in (*self._tasks, self._reconciler) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def kick(self) -> None:
        """Something outside changed (e.g. the blocklist on SIGHUP): reconcile the watch list."""
        if not self.watching:
            return
        self._dirty.set()
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.create_task(self._reconcile(), name="follows:reconcile")

    def health(self) -> dict[str, Any]:
        return {"source": self.source, "size": len(self.subjects), "loaded": self.loaded_rev is not None,
                "watching": self.watching}

    # -- loading ---------------------------------------------------------------------------------

    async def refresh(self, why: str) -> bool:
        """Load the follow set from the source repo, verified; live ops meanwhile are replayed on top."""
        async with self._lock:
            self._loading = []
            snapshot_rev: str | None = None
            try:
                rev, rows = await self._fetch()
                async with self._store.transaction() as conn:
                    await follow_store.replace(conn, self.source, rows, rev)
                old, self._records = self.subjects, rows
                snapshot_rev, self.loaded_rev, self.loaded_at = rev, rev, time.time()
                log.info("follows.loaded", source=self.source, why=why, rev=rev, records=len(rows),
                         size=len(self.subjects))
                self._changed(old, why)
                return True
            except (XrpcError, IdentityError, SyncError, httpx.HTTPError, OSError) as error:
                log.warning("follows.load_failed", source=self.source, why=why,
                            reason=getattr(error, "reason", type(error).__name__), error=str(error))
                return False
            finally:
                buffered, self._loading = self._loading or [], None
                for rev, records in buffered:
                    if snapshot_rev is None or rev > snapshot_rev:
                        await self._apply(rev, records)

    async def _fetch(self) -> tuple[str, dict[str, str]]:
        rev, records = await fetch_verified_repo(self._identity, self._xrpc, self._keys, self.source, COLLECTIONS)
        rows: dict[str, str] = {}
        for rec in records:
            subject = subject_of(rec.record)
            if subject is not None:
                rows[rec.rkey] = subject
        return rev, rows

    # -- live ------------------------------------------------------------------------------------

    async def _on_records(self, did: str, rev: str, records: list[VerifiedRecord]) -> None:
        """Processor hook: verified follow ops of one commit of the source repo."""
        if did != self.source:
            return
        if self.loaded_rev is not None and rev <= self.loaded_rev:
            return  # the loaded snapshot already reflects it (a replay)
        if self._loading is not None:
            self._loading.append((rev, records))  # a load is running: apply after its snapshot
            return
        await self._apply(rev, records)

    async def _apply(self, rev: str, records: list[VerifiedRecord]) -> None:
        updated = apply_ops(self._records, records)
        async with self._store.transaction() as conn:
            for rec in records:
                if rec.rkey in updated:
                    await follow_store.put(conn, self.source, rec.rkey, updated[rec.rkey])
                else:
                    await follow_store.delete(conn, self.source, rec.rkey)
            await follow_store.set_rev(conn, self.source, rev)
        old, self._records = self.subjects, updated
        self._changed(old, "commit")

    async def _on_resync(self, did: str, why: str) -> None:
        """Events of the source may have been missed: reload in the background."""
        if not self._lock.locked():
            self._spawn(self.refresh(why))

    # -- effects ---------------------------------------------------------------------------------

    def _changed(self, old: frozenset[str], why: str, *, quiet: bool = False) -> None:
        new = self.subjects
        if new == old:
            return
        self._on_change(new)  # the policy first: a backfill of a new follow must be allowed
        for did in sorted(new - old) if not quiet else ():
            log.info("follows.followed", source=self.source, did=did, why=why)
        for did in sorted(old - new):
            log.info("follows.unfollowed", source=self.source, did=did, why=why)
        self.kick()

    async def _settle(self) -> None:
        if self._reconciler is not None:
            await asyncio.gather(self._reconciler, return_exceptions=True)

    async def _reconcile(self) -> None:
        """Make the watched repos the follow set minus the blocklist (idempotent, serial)."""
        while self._dirty.is_set():
            self._dirty.clear()
            desired = self.subjects - self._blocked()
            current = set(self._ingestion.followed)
            for did in sorted(current - desired):
                await self._ingestion.unwatch(did)
            for did in sorted(desired - current):
                await self._ingestion.watch(did, backfill=True)

    def _spawn(self, job: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


# -- `at-rund access list` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessEntry:
    did: str
    source: Source
    handle: str | None


@dataclass(frozen=True)
class AccessReport:
    mode: str
    size: int
    follows_of: str | None
    follows_loaded_at: float | None
    follows_rev: str | None
    entries: list[AccessEntry]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "size": self.size,
                "follows": None if self.follows_of is None else {
                    "source": self.follows_of, "loadedAt": self.follows_loaded_at, "rev": self.follows_rev},
                "entries": [{"did": e.did, "source": e.source, "handle": e.handle} for e in self.entries]}

    def lines(self) -> list[str]:
        what = {"open": "everyone not on the blocklist", "blocklist": "everyone not on the blocklist",
                "allowlist": "the allowlist, minus the blocklist",
                "follows": "the follows plus the allowlist, minus the blocklist"}[self.mode]
        out = [f"mode {self.mode}: {what}; {self.size} allowed" if self.mode in ("allowlist", "follows")
               else f"mode {self.mode}: {what}"]
        if self.follows_of is not None:
            if self.follows_loaded_at is None and self.follows_rev is None:
                state = "not loaded yet"
            elif self.follows_loaded_at is None:
                state = f"live updates only, at rev {self.follows_rev}"
            else:
                loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.follows_loaded_at))
                state = f"loaded {loaded}, at rev {self.follows_rev}"
            out.append(f"follows of {self.follows_of} ({state})")
        for entry in self.entries:
            out.append(f"{entry.did:<40} {entry.source:<10} {entry.handle or ''}".rstrip())
        return out


async def access_report(config: Config) -> AccessReport:
    """The effective access set from config plus the store's cached follow set (no network)."""
    source = follow_source(config) if follows_needed(config) else None
    follow_set: frozenset[str] = frozenset()
    state = None
    handles: dict[str, str | None] = {}
    policy = AccessPolicy.from_config(config.access)
    if config.store_path.exists():  # no store yet: nothing cached, and nothing to create
        store = await Store.open(config.store_path)
        try:
            async with store.read() as conn:
                if source is not None:
                    follow_set = await follow_store.subjects(conn, source)
                    state = await follow_store.state(conn, source)
                policy = policy.with_follows(follow_set)
                for did, _ in policy.entries():
                    known = await identities.get(conn, did)
                    handles[did] = known.handle if known else None
        finally:
            await store.close()
    entries = [AccessEntry(did, where, handles.get(did)) for did, where in policy.entries()]
    return AccessReport(policy.mode, policy.size, source, state.loaded_at if state else None,
                        state.rev if state else None, entries)
