"""Decide cheaply whether a frame matters, before touching any CAR block.

Nearly every firehose frame is a single-op ``#commit`` for collections we
ignore. DAG-CBOR is canonical, so such a frame has a fixed layout: the
``#commit`` header, then a body whose first key is ``ops`` holding one map
whose first keys are ``cid`` and ``path``. :func:`peek_single_path` reads that
path with a few slice compares (no decoding at all); any deviation from the
layout returns None and the frame takes the exact path instead: libipld decodes
header + body (never the CAR) and every op path is checked. Skipped frames
are not validated further: whatever else is in them, they are not ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import FrameError
from .frames import COMMIT_HEADER, CommitEvent, Event, RepoOp, commit_from_body, event_from_parts, split_frame

__all__ = ["ATRUN_COLLECTIONS", "CommitFilter", "peek_single_path"]

ATRUN_COLLECTIONS: frozenset[str] = frozenset({"dev.atrun.bundle", "dev.atrun.invocation"})

_NSID_RE = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+")

_OPS_KEY = b"\x63ops"  # text(3) "ops": first key of a canonical #commit body
_ONE_OP = b"\x81"  # array(1)
_CID_KEY = b"\x63cid"  # first key of a canonical repoOp map
_LINK_HEAD = b"\xd8\x2a\x58\x25\x00"  # tag 42, bytes(37), multibase identity prefix
_PATH_KEY = b"\x64path"


def peek_single_path(frame: bytes) -> bytes | None:
    """Raw op path of a canonical single-op ``#commit`` frame, else None.

    Offsets: 0-14 header, 15 body map head, 16-19 ``ops`` key, 20 array(1),
    21 op map head, 22-25 ``cid`` key, then a 36-byte CIDv1 link or null,
    then the ``path`` key and its text. Slices never raise on short input.
    """
    if frame[16:20] != _OPS_KEY or frame[20:21] != _ONE_OP or frame[22:26] != _CID_KEY:
        return None
    if frame[26:31] == _LINK_HEAD:
        i = 67
    elif frame[26:27] == b"\xf6":
        i = 27
    else:
        return None
    if frame[i : i + 5] != _PATH_KEY:
        return None
    h = frame[i + 5 : i + 6]
    if not h:
        return None
    n = h[0] - 0x60
    if 0 <= n < 24:
        start = i + 6
    elif n == 24 and len(frame) > i + 6:
        n, start = frame[i + 6], i + 7
    else:
        return None
    end = start + n
    return frame[start:end] if end <= len(frame) else None


class CommitFilter:
    """Selects frames whose ``#commit`` ops touch one of ``collections``.

    Non-commit events (identity, account, sync, info, errors) always pass: they
    carry key rotations, takedowns and cursor problems the daemon must see.
    """

    __slots__ = ("_cols_b", "_header", "collections")

    def __init__(self, collections: Iterable[str] = ATRUN_COLLECTIONS) -> None:
        cols = frozenset(collections)
        for c in cols:
            if not _NSID_RE.fullmatch(c):
                raise ValueError(f"not an NSID: {c!r}")
        self.collections: frozenset[str] = cols
        self._cols_b: frozenset[bytes] = frozenset(c.encode() for c in cols)
        self._header = COMMIT_HEADER

    def wants_path(self, path: str) -> bool:
        """Exact test on one ``collection/rkey`` op path."""
        return path.partition("/")[0] in self.collections

    def relevant_ops(self, ops: Iterable[RepoOp]) -> list[RepoOp]:
        """The ops of a decoded commit that touch our collections."""
        cols = self.collections
        return [op for op in ops if op.path.partition("/")[0] in cols]

    def select(self, frame: bytes) -> Event | None:
        """``None`` for a commit we don't care about, else the validated event.

        Raises :class:`FrameError` for undecodable frames that were not skipped.
        """
        if type(frame) is not bytes:
            if not isinstance(frame, (bytearray, memoryview)):
                raise FrameError("garbage_frame", "frame is not binary")
            frame = bytes(frame)
        if frame.startswith(self._header):
            path = peek_single_path(frame)
            if path is not None and path.partition(b"/")[0] not in self._cols_b:
                return None
        header, body = split_frame(frame)
        if header.get("t") == "#commit" and header.get("op") == 1:
            ops = body.get("ops")
            if type(ops) is not list:
                raise FrameError("bad_event", "ops: missing or wrong type")
            cols = self.collections
            for op in ops:
                path = op.get("path") if type(op) is dict else None
                if type(path) is not str:
                    raise FrameError("bad_event", "ops.path: missing or wrong type")
                if path.partition("/")[0] in cols:
                    return commit_from_body(body)
            return None
        return event_from_parts(header, body)

    def select_commit(self, frame: bytes) -> CommitEvent | None:
        """Like :meth:`select` but only returns relevant commits."""
        ev = self.select(frame)
        return ev if type(ev) is CommitEvent else None
