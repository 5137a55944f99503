"""Verify firehose commits and full-repo CARs against the repo's signing key.

Only the commit object is signed; the event's ``ops`` list is relay-supplied.
So a record is trusted only if (1) the commit block hashes to the event's
``commit`` CID and its signature checks out, (2) the op's path resolves to the
op's CID in the signed MST (a hash-verified proof path through the CAR), and
(3) the record block hashes to that CID. Sync 1.1 inversion additionally
proves the op list is complete: undoing every op must yield ``prevData``.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import libipld

from .car import Car, read_car
from .cid import cid_str
from .errors import MstError, RevError, VerifyError
from .filter import ATRUN_COLLECTIONS
from .frames import CommitEvent, RepoOp, SyncEvent
from .keys import PublicKey
from .mst import MST
from .tid import is_tid, tid_timestamp_us

__all__ = [
    "MAX_BLOCKS_BYTES",
    "MAX_FUTURE_S",
    "MAX_OPS",
    "Commit",
    "VerifiedCommit",
    "VerifiedRecord",
    "check_rev",
    "invert_ops",
    "load_commit",
    "verify_commit",
    "verify_repo_car",
    "verify_sync_event",
]

MAX_OPS = 200
MAX_BLOCKS_BYTES = 2_000_000
MAX_FUTURE_S = 300.0

_NSID_RE = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+")
_RKEY_RE = re.compile(r"[a-zA-Z0-9._:~-]{1,512}")


@dataclass(slots=True, frozen=True)
class Commit:
    """A decoded, hash-checked (not yet signature-checked) v3 commit object."""

    cid: bytes
    did: str
    rev: str
    data: bytes
    prev: bytes | None
    sig: bytes
    unsigned: bytes


@dataclass(slots=True, frozen=True)
class VerifiedRecord:
    """A record write proven to be in the signed repo; ``record`` is None for deletes."""

    collection: str
    rkey: str
    action: str
    cid: str | None
    record: dict[str, Any] | None

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


@dataclass(slots=True, frozen=True)
class VerifiedCommit:
    """Outcome of :func:`verify_commit`. ``inverted`` tells whether the
    Sync 1.1 ``prevData`` check ran (it needs ``prevData`` and op ``prev``s)."""

    seq: int
    did: str
    rev: str
    since: str | None
    commit: bytes
    data: bytes
    records: tuple[VerifiedRecord, ...]
    inverted: bool


def check_rev(rev: str, last_rev: str | None, *, now: float | None = None, max_future_s: float = MAX_FUTURE_S) -> None:
    """Enforce rev ordering for one DID.

    ``old_rev``: rev <= the last rev we processed (replay or stale); ignore it.
    ``future_rev``: the TID timestamp is more than ``max_future_s`` ahead of now.
    TIDs sort as strings, so ordering is a string compare.
    """
    ts_us = tid_timestamp_us(rev)  # raises bad_rev
    if last_rev is not None and rev <= last_rev:
        raise RevError("old_rev", f"{rev} <= {last_rev}")
    limit_us = ((now if now is not None else _time.time()) + max_future_s) * 1_000_000
    if ts_us > limit_us:
        raise RevError("future_rev", f"{rev} is {(ts_us - limit_us) / 1e6 + max_future_s:.0f}s ahead")


def load_commit(car: Car, cid: bytes) -> Commit:
    """Find, hash-check and structurally validate the commit block ``cid``."""
    obj = car.get_cbor(cid)
    if type(obj) is not dict:
        raise VerifyError("bad_commit", "commit is not a map")
    did, rev, data, sig = obj.get("did"), obj.get("rev"), obj.get("data"), obj.get("sig")
    prev = obj.get("prev")
    if obj.get("version") != 3:
        raise VerifyError("bad_commit", f"unsupported commit version {obj.get('version')!r}")
    if type(did) is not str or type(rev) is not str or type(data) is not bytes or type(sig) is not bytes:
        raise VerifyError("bad_commit", "commit fields missing or of wrong type")
    if prev is not None and type(prev) is not bytes:
        raise VerifyError("bad_commit", "bad prev")
    if not is_tid(rev):
        raise VerifyError("bad_commit", "commit rev is not a TID")
    unsigned = dict(obj)
    del unsigned["sig"]
    try:
        unsigned_bytes = libipld.encode_dag_cbor(unsigned)
    except ValueError as e:
        raise VerifyError("bad_commit", f"cannot re-encode commit: {e}") from e
    return Commit(cid, did, rev, data, prev, sig, unsigned_bytes)


def _check_signature(commit: Commit, key: PublicKey) -> None:
    if not key.verify(commit.unsigned, commit.sig):
        raise VerifyError("bad_signature", f"commit {cid_str(commit.cid)} not signed by {key.did_key}")


def _split_path(path: str) -> tuple[str, str]:
    collection, sep, rkey = path.partition("/")
    if not sep or not _NSID_RE.fullmatch(collection) or not _RKEY_RE.fullmatch(rkey) or rkey in (".", ".."):
        raise VerifyError("bad_path", f"bad record path {path[:80]!r}")
    return collection, rkey


def _record(car: Car, cid: bytes, collection: str) -> dict[str, Any]:
    rec = car.get_cbor(cid)  # missing_block / cid_mismatch / bad_car
    if type(rec) is not dict or rec.get("$type") != collection:
        raise VerifyError("bad_record", f"record at {cid_str(cid)} is not a {collection}")
    return rec


def invert_ops(tree: MST, ops: Iterable[RepoOp]) -> bytes:
    """Undo ``ops`` on ``tree`` (mutating it) and return the resulting root CID.

    Every op must be reflected in the tree: undoing a create must remove exactly
    ``op.cid``, undoing an update must find ``op.cid`` and restore ``op.prev``,
    undoing a delete must re-insert ``op.prev`` where nothing was.
    """
    seen: set[str] = set()
    for op in ops:
        if op.path in seen:
            raise VerifyError("bad_op", f"duplicate op path {op.path[:80]!r}")
        seen.add(op.path)
        if (op.cid is None) != (op.action == "delete") or (op.prev is None) != (op.action == "create"):
            raise VerifyError("bad_op", f"{op.action} of {op.path[:80]!r} lacks cid/prev")
        key = op.path.encode()
        if op.action == "create":
            found = tree.delete(key)
            if found is None or found != op.cid:
                raise MstError("op_mismatch", f"create of {op.path[:80]!r} not in tree")
        elif op.action == "update":
            found = tree.put(key, op.prev)  # type: ignore[arg-type]
            if found is None or found != op.cid:
                raise MstError("op_mismatch", f"update of {op.path[:80]!r} not in tree")
        else:
            if tree.put(key, op.prev) is not None:  # type: ignore[arg-type]
                raise MstError("op_mismatch", f"deleted {op.path[:80]!r} still in tree")
    return tree.root_cid()


def _invertible(event: CommitEvent) -> bool:
    if event.prev_data is None:
        return False
    return all(op.prev is not None for op in event.ops if op.action != "create")


def verify_commit(
    event: CommitEvent,
    key: PublicKey,
    collections: frozenset[str] | None = ATRUN_COLLECTIONS,
    *,
    invert: bool = True,
    max_ops: int = MAX_OPS,
    max_blocks_bytes: int = MAX_BLOCKS_BYTES,
) -> VerifiedCommit:
    """Verify a ``#commit`` and return its proven records in ``collections``
    (all collections if None). Rev ordering is :func:`check_rev`'s job."""
    if event.too_big:
        raise VerifyError("too_big", "tooBig commit: fetch the records instead")
    if len(event.ops) > max_ops:
        raise VerifyError("too_many_ops", f"{len(event.ops)} ops")
    if len(event.blocks) > max_blocks_bytes:
        raise VerifyError("too_big", f"{len(event.blocks)} bytes of blocks")
    car = read_car(event.blocks)
    if not car.roots or car.roots[0] != event.commit:
        raise VerifyError("commit_mismatch", "CAR root is not the event's commit")
    commit = load_commit(car, event.commit)
    if commit.did != event.repo:
        raise VerifyError("commit_mismatch", f"commit did {commit.did[:64]!r} != repo {event.repo!r}")
    if commit.rev != event.rev:
        raise VerifyError("commit_mismatch", f"commit rev {commit.rev!r} != event rev {event.rev[:16]!r}")
    _check_signature(commit, key)

    tree = MST.load(commit.data, car.get)
    records = []
    for op in event.ops:
        collection, rkey = _split_path(op.path)
        if collections is not None and collection not in collections:
            continue
        if (op.cid is None) != (op.action == "delete"):
            raise VerifyError("bad_op", f"{op.action} with{'out' if op.cid is None else ''} cid")
        if tree.get(op.path.encode()) != op.cid:
            raise VerifyError("op_mismatch", f"{op.action} {op.path[:80]!r} does not match the signed tree")
        if op.cid is None:
            records.append(VerifiedRecord(collection, rkey, op.action, None, None))
        else:
            rec = _record(car, op.cid, collection)
            records.append(VerifiedRecord(collection, rkey, op.action, cid_str(op.cid), rec))

    inverted = False
    if invert and _invertible(event):  # every op path was syntax-checked above
        if invert_ops(tree, event.ops) != event.prev_data:
            raise MstError("prev_data_mismatch", "inverting ops does not yield prevData")
        inverted = True
    return VerifiedCommit(
        event.seq, event.repo, event.rev, event.since, event.commit, commit.data, tuple(records), inverted
    )


def verify_sync_event(event: SyncEvent, key: PublicKey) -> Commit:
    """Verify a ``#sync`` event's commit (the consumer then resyncs the repo)."""
    car = read_car(event.blocks)
    if len(car.roots) != 1:
        raise VerifyError("commit_mismatch", "#sync CAR must have exactly one root")
    commit = load_commit(car, car.roots[0])
    if commit.did != event.did or commit.rev != event.rev:
        raise VerifyError("commit_mismatch", "#sync commit does not match event")
    _check_signature(commit, key)
    return commit


def verify_repo_car(
    car_bytes: bytes, did: str, key: PublicKey, collections: Iterable[str] | None = None
) -> tuple[str, list[VerifiedRecord]]:
    """Verify a ``com.atproto.sync.getRepo`` export and list its records in
    ``collections`` (all if None) as ``create`` records. Returns (rev, records)."""
    car = read_car(car_bytes)
    if len(car.roots) != 1:
        raise VerifyError("commit_mismatch", "repo CAR must have exactly one root")
    commit = load_commit(car, car.roots[0])
    if commit.did != did:
        raise VerifyError("commit_mismatch", f"repo CAR is for {commit.did[:64]!r}, not {did!r}")
    _check_signature(commit, key)
    tree = MST.load(commit.data, car.get)
    ranges: list[tuple[bytes | None, bytes | None]]
    if collections is None:
        ranges = [(None, None)]
    else:
        ranges = [(c.encode() + b"/", c.encode() + b"0") for c in sorted(set(collections))]
    records: list[VerifiedRecord] = []
    for lo, hi in ranges:
        for k, v in tree.items(lo, hi):
            try:
                path = k.decode()
            except UnicodeDecodeError as e:
                raise MstError("mst_invalid", "non-UTF-8 key") from e
            collection, rkey = _split_path(path)
            records.append(VerifiedRecord(collection, rkey, "create", cid_str(v), _record(car, v, collection)))
    return commit.rev, records
