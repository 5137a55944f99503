"""Builders for real signed repos, commits, CARs and firehose frames.

Used by tests and ``bench/firehose.py``: :class:`RepoBuilder` keeps a genuine
MST, signs genuine v3 commits, and emits ``#commit`` frames shaped like a
Sync 1.1 PDS's (``prevData``, op ``prev``s, and the MST blocks a consumer needs
to check proofs and invert the ops). Nothing here talks to the network.
"""

from __future__ import annotations

import itertools
import random
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .car import write_car
from .cbor import Link, encode
from .cid import cid_for_cbor
from .frames import RepoOp
from .keys import Curve, SigningKey
from .mst import EMPTY_NODE, EMPTY_NODE_CID, MST
from .tid import make_tid
from .verify import invert_ops

__all__ = [
    "BuiltCommit",
    "RepoBuilder",
    "Write",
    "account_frame",
    "commit_frame",
    "encode_frame",
    "error_frame",
    "identity_frame",
    "info_frame",
    "now_iso",
    "random_did",
]

_seq = itertools.count(1)


def now_iso(ts: float | None = None) -> str:
    t = datetime.fromtimestamp(ts if ts is not None else _time.time(), tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def random_did(rng: Any = None) -> str:
    """A syntactically real did:plc (24 base32 chars)."""
    r = rng or random
    return "did:plc:" + "".join(r.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))


def encode_frame(t: str | None, body: dict[str, Any], *, op: int = 1) -> bytes:
    """Header + body, canonical DAG-CBOR, as a PDS sends them."""
    header: dict[str, Any] = {"op": op} if t is None else {"op": op, "t": t}
    return encode(header) + encode(body)


def error_frame(error: str, message: str | None = None) -> bytes:
    body: dict[str, Any] = {"error": error}
    if message is not None:
        body["message"] = message
    return encode_frame(None, body, op=-1)


def identity_frame(did: str, *, seq: int | None = None, handle: str | None = None) -> bytes:
    body: dict[str, Any] = {"seq": seq if seq is not None else next(_seq), "did": did, "time": now_iso()}
    if handle is not None:
        body["handle"] = handle
    return encode_frame("#identity", body)


def account_frame(did: str, active: bool, *, status: str | None = None, seq: int | None = None) -> bytes:
    body: dict[str, Any] = {
        "seq": seq if seq is not None else next(_seq),
        "did": did,
        "time": now_iso(),
        "active": active,
    }
    if status is not None:
        body["status"] = status
    return encode_frame("#account", body)


def info_frame(name: str, message: str | None = None) -> bytes:
    body: dict[str, Any] = {"name": name}
    if message is not None:
        body["message"] = message
    return encode_frame("#info", body)


def commit_frame(body: dict[str, Any]) -> bytes:
    """Re-frame a (possibly tampered) ``#commit`` body."""
    return encode_frame("#commit", body)


@dataclass(slots=True, frozen=True)
class Write:
    """One record write: ``action`` is create/update/delete; ``record`` None for delete."""

    action: str
    path: str
    record: dict[str, Any] | None = None


@dataclass(slots=True)
class BuiltCommit:
    """A signed commit and everything needed to re-frame or tamper with it."""

    frame: bytes
    body: dict[str, Any]
    commit_cid: bytes
    commit_block: bytes
    rev: str
    data: bytes
    prev_data: bytes
    ops: list[RepoOp]
    blocks: dict[bytes, bytes] = field(default_factory=dict)

    def car(self, blocks: dict[bytes, bytes] | None = None, root: bytes | None = None) -> bytes:
        b = self.blocks if blocks is None else blocks
        return write_car([self.commit_cid if root is None else root], b.items())

    def reframe(self, **changes: Any) -> bytes:
        """Frame with some body fields replaced (``prevData``, ``blocks``...)."""
        return commit_frame({**self.body, **changes})


class RepoBuilder:
    """An in-memory atproto repo that produces signed commits and frames."""

    def __init__(self, did: str | None = None, key: SigningKey | None = None, *, curve: Curve = "secp256k1") -> None:
        self.did = did or random_did()
        self.key = key or SigningKey.generate(curve)
        self.tree = MST()
        self.records: dict[bytes, bytes] = {}
        self.rev: str | None = None
        self.data: bytes = self.tree.root_cid()
        self._last_us = 0

    def did_key(self) -> str:
        return self.key.did_key()

    def next_rev(self) -> str:
        us = max(int(_time.time() * 1_000_000), self._last_us + 1)
        self._last_us = us
        return make_tid(us, 0)

    def _apply(self, writes: Iterable[Write]) -> tuple[list[RepoOp], dict[bytes, bytes]]:
        ops: list[RepoOp] = []
        new_records: dict[bytes, bytes] = {}
        for w in writes:
            key = w.path.encode()
            if w.action == "delete":
                prev = self.tree.delete(key)
                if prev is None:
                    raise KeyError(f"delete of missing {w.path}")
                ops.append(RepoOp("delete", w.path, None, prev))
                continue
            raw = encode(w.record)
            cid = cid_for_cbor(raw)
            self.records[cid] = raw
            new_records[cid] = raw
            prev = self.tree.put(key, cid)
            if (prev is None) != (w.action == "create"):
                raise KeyError(f"{w.action} of {'missing' if prev is None else 'existing'} {w.path}")
            ops.append(RepoOp(w.action, w.path, cid, prev))
        return ops, new_records

    def seed(self, writes: Iterable[Write]) -> None:
        """Apply writes as history (no frame); the next commit builds on it."""
        self._apply(writes)
        self.data = self.tree.root_cid()
        self.rev = self.next_rev()

    def _sign_commit(self, data: bytes, rev: str, signer: SigningKey) -> tuple[bytes, bytes]:
        unsigned = {"did": self.did, "version": 3, "data": Link(data), "rev": rev, "prev": None}
        block = encode({**unsigned, "sig": signer.sign(encode(unsigned))})
        return cid_for_cbor(block), block

    def commit(
        self,
        writes: Iterable[Write],
        *,
        seq: int | None = None,
        rev: str | None = None,
        time: str | None = None,
        proofs: bool = True,
        signer: SigningKey | None = None,
    ) -> BuiltCommit:
        """Apply ``writes``, sign a commit and frame it as ``#commit``.

        ``proofs`` adds the untouched MST nodes that inverting the ops reads
        (what a Sync 1.1 PDS ships); without it only new nodes are included.
        """
        prev_data, since = self.data, self.rev
        self.tree.fresh = {}
        ops, new_records = self._apply(writes)
        data, root_raw = self.tree.root_block()
        blocks: dict[bytes, bytes] = {data: root_raw}  # the root may be an old node after a trim
        blocks.update(self.tree.fresh)
        self.tree.fresh = None
        if proofs:
            probe = self.tree.fork()
            probe.touched = {}
            for op in ops:
                probe.get(op.path.encode())
            if invert_ops(probe, ops) != prev_data:  # pragma: no cover - builder self-check
                raise AssertionError("MST inversion self-check failed")
            blocks.update(probe.touched)
        blocks.update(new_records)
        rev = rev or self.next_rev()
        commit_cid, commit_block = self._sign_commit(data, rev, signer or self.key)
        blocks = {commit_cid: commit_block, **blocks}
        body: dict[str, Any] = {
            "seq": seq if seq is not None else next(_seq),
            "rebase": False,
            "tooBig": False,
            "repo": self.did,
            "commit": Link(commit_cid),
            "rev": rev,
            "since": since,
            "blocks": write_car([commit_cid], blocks.items()),
            "ops": [_op_body(op) for op in ops],
            "blobs": [],
            "time": time or now_iso(),
            "prevData": Link(prev_data),
        }
        self.data, self.rev = data, rev
        return BuiltCommit(commit_frame(body), body, commit_cid, commit_block, rev, data, prev_data, ops, blocks)

    def repo_car(self) -> bytes:
        """A ``com.atproto.sync.getRepo`` export of the current state."""
        rev = self.rev or self.next_rev()
        self.rev = rev
        commit_cid, commit_block = self._sign_commit(self.data, rev, self.key)
        blocks: dict[bytes, bytes] = {commit_cid: commit_block}
        if self.tree.empty:
            blocks[EMPTY_NODE_CID] = EMPTY_NODE
        for node in self.tree.nodes():
            assert node.cid is not None and node.raw is not None
            blocks[node.cid] = node.raw
            for v in node.vals:
                blocks[v] = self.records[v]
        return write_car([commit_cid], blocks.items())

    def sync_frame(self, *, seq: int | None = None) -> bytes:
        """``#sync`` for the current state (CAR holding just the commit)."""
        rev = self.rev or self.next_rev()
        commit_cid, commit_block = self._sign_commit(self.data, rev, self.key)
        body = {
            "seq": seq if seq is not None else next(_seq),
            "did": self.did,
            "rev": rev,
            "blocks": write_car([commit_cid], [(commit_cid, commit_block)]),
            "time": now_iso(),
        }
        return encode_frame("#sync", body)


def _op_body(op: RepoOp) -> dict[str, Any]:
    d: dict[str, Any] = {"action": op.action, "path": op.path, "cid": None if op.cid is None else Link(op.cid)}
    if op.prev is not None:
        d["prev"] = Link(op.prev)
    return d
