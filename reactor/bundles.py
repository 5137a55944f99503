"""The bundle cache: verified manifests and code blobs in SQLite, code files on disk for the sandbox.

A bundle is fetched once per (uri, cid). The blob is checked against its CID
and the operator's size cap before anything is stored, so the cache only ever
holds bytes the author actually published.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiosqlite
import structlog
from pydantic import ValidationError

from reactor.identity import IdentityError, IdentityResolver
from reactor.records import Bundle
from reactor.store import Store, bundles
from reactor.store.bundles import CachedBundle
from reactor.records import ipld_to_json
from reactor.sync.car import read_car
from reactor.sync.cid import cid_bytes, cid_for_raw, cid_str
from reactor.sync.errors import SyncError
from reactor.sync.keys import parse_did_key
from reactor.sync.mst import MST
from reactor.sync.verify import load_commit
from reactor.xrpc import XrpcClient, XrpcError

log = structlog.get_logger(__name__)

CODE_SUFFIX = {
    "application/javascript": ".js", "text/javascript": ".js", "application/typescript": ".ts",
    "text/x-python": ".py", "application/wasm": ".wasm",
}


class BundleError(Exception):
    """A bundle that cannot be used; `reason` is a short stable label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FetchedBundle:
    uri: str
    cid: str
    author: str
    manifest: Bundle
    record: dict[str, Any]
    code_cid: str
    mime_type: str
    code: bytes | None  # None when the blob was already cached


@dataclass(frozen=True)
class ReadyBundle:
    """What the dispatcher needs to run a bundle: its manifest and a code file on disk."""

    cached: CachedBundle
    manifest: Bundle
    code_path: Path
    mime_type: str

    @property
    def key(self) -> str:
        return f"{self.cached.uri}#{self.cached.cid}"


def parse_manifest(record: dict[str, Any]) -> Bundle:
    try:
        return Bundle.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise BundleError("invalid_manifest", f"bundle record is invalid at {where}: {first['msg']}") from None


Prewarm = Callable[[ReadyBundle], Awaitable[None]]


class BundleCache:
    def __init__(self, store: Store, identity: IdentityResolver, xrpc: XrpcClient, *,
                 code_dir: Path, max_blob_bytes: int) -> None:
        self._store = store
        self._identity = identity
        self._xrpc = xrpc
        self._code_dir = code_dir
        self._max_blob = max_blob_bytes
        self.prewarm: Prewarm | None = None
        self._ready: dict[tuple[str, str], ReadyBundle] = {}  # (uri, cid) is immutable content: safe to keep
        # uri → cid of its live version, for calls that name no version (HTTP). Every write to a uri bumps
        # its epoch, so a lookup that raced a write never installs a stale pointer.
        self._latest: dict[str, str] = {}
        self._epoch: dict[str, int] = {}

    async def fetch(self, *, uri: str, cid: str, author: str, record: dict[str, Any]) -> FetchedBundle:
        """Validate the manifest and fetch + verify its code blob (network; no transaction held)."""
        manifest = parse_manifest(record)
        blob = manifest.code
        if blob.size > self._max_blob:
            raise BundleError("too_large", f"code blob is {blob.size} bytes; this runner accepts {self._max_blob}")
        code_cid = blob.cid
        async with self._store.read() as conn:
            cached = await bundles.has_blob(conn, code_cid)
        data: bytes | None = None
        if not cached:
            try:
                pds = (await self._identity.resolve(author)).pds
                _, data = await self._xrpc.get_blob(pds or "", author, code_cid, limit=self._max_blob)
            except (XrpcError, IdentityError) as error:
                raise BundleError("blob_unavailable", f"cannot fetch code blob {code_cid}: {error}") from None
            try:
                expected = cid_bytes(code_cid)
            except SyncError as error:
                raise BundleError("bad_blob_cid", str(error)) from None
            if cid_for_raw(data) != expected:
                raise BundleError("blob_cid_mismatch", f"code blob bytes do not hash to {code_cid}")
        return FetchedBundle(uri=uri, cid=cid, author=author, manifest=manifest, record=record,
                             code_cid=code_cid, mime_type=blob.mime_type, code=data)

    def _invalidate(self, uri: str) -> None:
        self._epoch[uri] = self._epoch.get(uri, 0) + 1
        self._latest.pop(uri, None)

    async def save(self, conn: aiosqlite.Connection, fetched: FetchedBundle) -> None:
        """Store inside the caller's transaction (with the cursor of the event that named it)."""
        self._invalidate(fetched.uri)
        if fetched.code is not None:
            await bundles.put_blob(conn, fetched.code_cid, fetched.mime_type, fetched.code)
        await bundles.put(conn, uri=fetched.uri, cid=fetched.cid, author=fetched.author,
                          name=fetched.manifest.name, record=fetched.record, code_cid=fetched.code_cid)

    async def saved(self, fetched: FetchedBundle) -> None:
        """After commit: pre-warm when the author asked for it."""
        if fetched.manifest.prewarm and self.prewarm is not None:
            ready = await self.ready(fetched.uri, fetched.cid)
            if ready is not None:
                try:
                    await self.prewarm(ready)
                    async with self._store.transaction() as conn:
                        await bundles.set_warm_state(conn, fetched.uri, fetched.cid, "warm")
                except Exception as error:  # noqa: BLE001 - a failed warm-up must not fail ingestion
                    log.warning("bundle.prewarm_failed", uri=fetched.uri, error=str(error))

    async def delete(self, conn: aiosqlite.Connection, uri: str) -> None:
        await bundles.mark_deleted(conn, uri)
        self._invalidate(uri)
        for key in [k for k in self._ready if k[0] == uri]:
            del self._ready[key]

    async def ready(self, uri: str, cid: str | None = None) -> ReadyBundle | None:
        """A cached bundle with its code materialised on disk, or None if not cached."""
        version = cid or self._latest.get(uri)
        if version is not None and (hit := self._ready.get((uri, version))) is not None and hit.code_path.exists():
            return hit
        epoch = self._epoch.get(uri, 0)
        async with self._store.read() as conn:
            cached = await (bundles.get(conn, uri, cid) if cid else bundles.latest(conn, uri))
            blob = await bundles.get_blob(conn, cached.code_cid) if cached else None
        if cached is None or blob is None:
            return None
        manifest = parse_manifest(cached.record)
        mime_type = manifest.runtime or blob[0]
        path = await asyncio.to_thread(self._materialise, cached.code_cid, mime_type, blob[1])
        ready = ReadyBundle(cached=cached, manifest=manifest, code_path=path, mime_type=mime_type)
        if len(self._ready) >= 1024:
            self._ready.pop(next(iter(self._ready)))
        self._ready[(cached.uri, cached.cid)] = ready
        if cid is None and self._epoch.get(uri, 0) == epoch:
            self._latest[uri] = cached.cid
        return ready

    async def ready_or_fetch(self, uri: str, cid: str | None) -> ReadyBundle:
        """The bundle at `uri` (at version `cid` if given), fetching and verifying it on a cache miss."""
        ready = await self.ready(uri, cid)
        if ready is not None:
            return ready
        author, collection, rkey = _split_uri(uri)
        if collection != "dev.atrun.bundle":
            raise BundleError("not_a_bundle", f"{uri} is not a dev.atrun.bundle record")
        record_cid, record = await self._fetch_record(author, collection, rkey)
        if cid is not None and record_cid != cid:
            raise BundleError("cid_mismatch", f"bundle CID mismatch: {uri} is at {record_cid}, not the requested {cid}")
        fetched = await self.fetch(uri=uri, cid=record_cid, author=author, record=record)
        async with self._store.transaction() as conn:
            await self.save(conn, fetched)
        ready = await self.ready(uri, record_cid)
        if ready is None:
            raise BundleError("not_found", f"bundle {uri} vanished from the cache")
        return ready

    async def _fetch_record(self, did: str, collection: str, rkey: str) -> tuple[str, dict[str, Any]]:
        """A record with its signed inclusion proof (`sync.getRecord`), checked against the DID's key."""
        try:
            identity = await self._identity.resolve(did)
            car_bytes = await self._xrpc.get_record_proof(identity.pds or "", did, collection, rkey)
        except IdentityError as error:
            raise BundleError("not_found", str(error)) from None
        except XrpcError as error:
            reason = "not_found" if error.status in (400, 404) else "unavailable"
            raise BundleError(reason, f"cannot fetch {collection}/{rkey} of {did}: {error}") from None
        try:
            car = read_car(car_bytes)
            if not car.roots:
                raise BundleError("bad_proof", "record proof has no root")
            commit = load_commit(car, car.roots[0])
            key = parse_did_key(identity.signing_key or "")
            if commit.did != did or not key.verify(commit.unsigned, commit.sig):
                raise BundleError("bad_proof", f"record proof for {did} is not signed by its key")
            record_cid = MST.load(commit.data, car.get).get(f"{collection}/{rkey}".encode())
            if record_cid is None:
                raise BundleError("not_found", f"no {collection}/{rkey} in {did}'s repo")
            record = car.get_cbor(record_cid)
        except SyncError as error:
            raise BundleError("bad_proof", f"record proof rejected: {error}") from None
        if not isinstance(record, dict):
            raise BundleError("bad_proof", "record is not an object")
        return cid_str(record_cid), ipld_to_json(record)

    def _materialise(self, code_cid: str, mime_type: str, data: bytes) -> Path:
        """Content-addressed code file, world-readable so an unprivileged sandbox user can load it."""
        path = self._code_dir / code_cid / ("bundle" + CODE_SUFFIX.get(mime_type, ".bin"))
        if path.exists() and path.stat().st_size == len(data):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path


def _split_uri(uri: str) -> tuple[str, str, str]:
    parts = uri.removeprefix("at://").split("/")
    if not uri.startswith("at://") or len(parts) != 3 or not all(parts):
        raise BundleError("bad_uri", f"{uri!r} is not an at://did/collection/rkey URI")
    return parts[0], parts[1], parts[2]
