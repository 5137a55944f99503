"""Decide cheaply whether a frame matters, before touching any CAR block.

Nearly every firehose frame is a ``#commit`` for collections we ignore. The
cheapest correct test: an op path is a CBOR text string, i.e. its UTF-8 bytes
appear verbatim in the frame, so if no ``<collection>/`` needle occurs anywhere
in a frame whose header is ``#commit``, no op can match and the frame is skipped
without decoding. Otherwise header and body are decoded (libipld, no CAR
parsing) and the op paths are checked exactly. Needle hits inside record text
are harmless false positives that fall through to the exact check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import FrameError
from .frames import COMMIT_HEADER, CommitEvent, Event, RepoOp, commit_from_body, event_from_parts, split_frame

__all__ = ["CommitFilter", "ATRUN_COLLECTIONS"]

ATRUN_COLLECTIONS: frozenset[str] = frozenset({"dev.atrun.bundle", "dev.atrun.invocation"})

_NSID_RE = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+")


class CommitFilter:
    """Selects frames whose ``#commit`` ops touch one of ``collections``.

    Non-commit events (identity, account, sync, info, errors) always pass: they
    carry key rotations, takedowns and cursor problems the daemon must see.
    """

    __slots__ = ("collections", "_needles", "_header")

    def __init__(self, collections: Iterable[str] = ATRUN_COLLECTIONS) -> None:
        cols = frozenset(collections)
        for c in cols:
            if not _NSID_RE.fullmatch(c):
                raise ValueError(f"not an NSID: {c!r}")
        self.collections: frozenset[str] = cols
        self._needles: tuple[bytes, ...] = tuple(sorted((c + "/").encode() for c in cols))
        self._header = COMMIT_HEADER

    def wants_path(self, path: str) -> bool:
        """Exact test on one ``collection/rkey`` op path."""
        return path.partition("/")[0] in self.collections

    def relevant_ops(self, ops: Iterable[RepoOp]) -> list[RepoOp]:
        """The ops of a decoded commit that touch our collections."""
        cols = self.collections
        return [op for op in ops if op.path.partition("/")[0] in cols]

    def may_match(self, frame: bytes) -> bool:
        """False only if no op path in ``frame`` can be one of ours (no false negatives)."""
        for n in self._needles:
            if n in frame:
                return True
        return False

    def select(self, frame: bytes) -> Event | None:
        """``None`` for a commit we don't care about, else the validated event.

        Raises :class:`FrameError` for undecodable frames that were not skipped.
        """
        if frame.startswith(self._header) and not self.may_match(frame):
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
