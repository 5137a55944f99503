"""Decode one ``subscribeRepos`` websocket frame into a typed event.

A frame is two concatenated DAG-CBOR objects: a header ``{op, t}`` and a body.
``op == 1`` is a message whose type is ``t`` (``#commit``, ``#identity``...);
``op == -1`` is an error (``{error, message}``) after which the server closes.
Bodies are validated field by field because the network is hostile; unknown
message types are returned as :class:`UnknownEvent` (the spec says ignore).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libipld

from .errors import FrameError

__all__ = [
    "COMMIT_HEADER",
    "AccountEvent",
    "CommitEvent",
    "ErrorFrame",
    "Event",
    "IdentityEvent",
    "InfoEvent",
    "RepoOp",
    "SyncEvent",
    "UnknownEvent",
    "commit_from_body",
    "decode_frame",
    "event_from_parts",
    "frame_seq",
    "split_frame",
]

#: Canonical DAG-CBOR of ``{op: 1, t: "#commit"}``. It is the only valid
#: encoding: libipld (strict DAG-CBOR) rejects unsorted map keys.
COMMIT_HEADER = b"\xa2\x61t\x67#commit\x62op\x01"

_DID_RE = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_ACTIONS = frozenset(("create", "update", "delete"))
# libipld messages that mean "ran out of bytes" rather than "bytes are nonsense".
_TRUNCATION_HINTS = ("remaining data", "end of data", "eof", "unexpected end", "not enough")


@dataclass(slots=True, frozen=True)
class RepoOp:
    """One record operation listed in a ``#commit``; ``path`` is ``collection/rkey``."""

    action: str
    path: str
    cid: bytes | None
    prev: bytes | None = None

    @property
    def collection(self) -> str:
        return self.path.partition("/")[0]

    @property
    def rkey(self) -> str:
        return self.path.partition("/")[2]


@dataclass(slots=True, frozen=True)
class CommitEvent:
    """``#commit``: a signed repo update, with a CAR diff in ``blocks``."""

    seq: int
    repo: str
    rev: str
    since: str | None
    commit: bytes
    ops: tuple[RepoOp, ...]
    blocks: bytes
    prev_data: bytes | None
    time: str
    too_big: bool = False


@dataclass(slots=True, frozen=True)
class IdentityEvent:
    """``#identity``: the DID document or handle may have changed (re-resolve keys)."""

    seq: int
    did: str
    time: str
    handle: str | None = None


@dataclass(slots=True, frozen=True)
class AccountEvent:
    """``#account``: hosting status changed (``active`` false means stop serving)."""

    seq: int
    did: str
    time: str
    active: bool
    status: str | None = None


@dataclass(slots=True, frozen=True)
class SyncEvent:
    """``#sync``: repo state reset; ``blocks`` is a CAR holding just the commit."""

    seq: int
    did: str
    rev: str
    blocks: bytes
    time: str


@dataclass(slots=True, frozen=True)
class InfoEvent:
    """``#info``: informational, e.g. ``OutdatedCursor``."""

    name: str
    message: str | None = None


@dataclass(slots=True, frozen=True)
class ErrorFrame:
    """``op == -1``: stream error such as ``FutureCursor`` or ``ConsumerTooSlow``."""

    error: str
    message: str | None = None


@dataclass(slots=True, frozen=True)
class UnknownEvent:
    """A well-formed message of a type we don't know; consumers should skip it."""

    type: str
    seq: int | None


Event = CommitEvent | IdentityEvent | AccountEvent | SyncEvent | InfoEvent | ErrorFrame | UnknownEvent


def split_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode header and body (both must be maps), mapping decoder failures to
    ``truncated_frame`` / ``garbage_frame``."""
    if type(frame) is not bytes:
        if not isinstance(frame, (bytearray, memoryview)):
            raise FrameError("garbage_frame", "frame is not binary")
        frame = bytes(frame)
    if not frame:
        raise FrameError("truncated_frame", "empty frame")
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except RecursionError as e:
        raise FrameError("garbage_frame", "nesting too deep") from e
    except ValueError as e:
        msg = str(e).lower()
        reason = "truncated_frame" if any(h in msg for h in _TRUNCATION_HINTS) else "garbage_frame"
        raise FrameError(reason, str(e)) from e
    if len(parts) < 2:
        if parts and isinstance(parts[0], dict) and "op" in parts[0]:
            raise FrameError("truncated_frame", "header without body")
        raise FrameError("garbage_frame", "not a header+body frame")
    if len(parts) > 2:
        raise FrameError("garbage_frame", "trailing data after body")
    header, body = parts
    if not isinstance(header, dict):
        raise FrameError("garbage_frame", "header is not a map")
    if not isinstance(body, dict):
        raise FrameError("bad_event", "body is not a map")
    return header, body


def decode_frame(frame: bytes) -> Event:
    """Decode and validate one frame."""
    header, body = split_frame(frame)
    return event_from_parts(header, body)


def event_from_parts(header: dict[str, Any], body: dict[str, Any]) -> Event:
    """Typed event from an already-decoded header and body."""
    op = header.get("op")
    if op == 1:
        t = header.get("t")
        if not isinstance(t, str):
            raise FrameError("bad_header", "message header without type")
        decoder = _DECODERS.get(t)
        if decoder is None:
            seq = body.get("seq")
            return UnknownEvent(t, seq if type(seq) is int else None)
        return decoder(body)
    if op == -1:
        return ErrorFrame(_req_str(body, "error"), _opt_str(body, "message"))
    raise FrameError("bad_header", f"unknown op {op!r}")


def frame_seq(frame: bytes) -> int | None:
    """Sequence number of a frame, for cursor bookkeeping on skipped frames."""
    _, body = split_frame(frame)
    seq = body.get("seq")
    return seq if type(seq) is int else None


# ---- field validation -------------------------------------------------------


def _bad(field: str, why: str = "missing or wrong type") -> FrameError:
    return FrameError("bad_event", f"{field}: {why}")


def _req_str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if type(v) is not str:
        raise _bad(key)
    return v


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and type(v) is not str:
        raise _bad(key)
    return v


def _req_seq(body: dict[str, Any]) -> int:
    v = body.get("seq")
    if type(v) is not int or v < 0:
        raise _bad("seq")
    return v


def _req_did(body: dict[str, Any], key: str) -> str:
    v = _req_str(body, key)
    if len(v) > 2048 or not _DID_RE.fullmatch(v):
        raise _bad(key, "not a DID")
    return v


def _opt_link(v: Any, field: str) -> bytes | None:
    if v is not None and type(v) is not bytes:
        raise _bad(field)
    return v


def _ops(raw: Any) -> tuple[RepoOp, ...]:
    if type(raw) is not list:
        raise _bad("ops")
    out = []
    for op in raw:
        if type(op) is not dict:
            raise _bad("ops", "op is not a map")
        action = op.get("action")
        path = op.get("path")
        if action not in _ACTIONS:
            raise _bad("ops", f"unknown action {str(action)[:16]!r}")
        if type(path) is not str:
            raise _bad("ops.path")
        out.append(RepoOp(action, path, _opt_link(op.get("cid"), "ops.cid"), _opt_link(op.get("prev"), "ops.prev")))
    return tuple(out)


def commit_from_body(body: dict[str, Any]) -> CommitEvent:
    """Validate a ``#commit`` body."""
    commit = body.get("commit")
    if type(commit) is not bytes:
        raise _bad("commit")
    blocks = body.get("blocks")
    if type(blocks) is not bytes:
        raise _bad("blocks")
    since = body.get("since")
    if since is not None and type(since) is not str:
        raise _bad("since")
    too_big = body.get("tooBig", False)
    if type(too_big) is not bool:
        raise _bad("tooBig")
    time = body.get("time", "")
    if type(time) is not str:
        raise _bad("time")
    return CommitEvent(
        seq=_req_seq(body),
        repo=_req_did(body, "repo"),
        rev=_req_str(body, "rev"),
        since=since,
        commit=commit,
        ops=_ops(body.get("ops")),
        blocks=blocks,
        prev_data=_opt_link(body.get("prevData"), "prevData"),
        time=time,
        too_big=too_big,
    )


def _identity(body: dict[str, Any]) -> IdentityEvent:
    return IdentityEvent(_req_seq(body), _req_did(body, "did"), _opt_str(body, "time") or "", _opt_str(body, "handle"))


def _account(body: dict[str, Any]) -> AccountEvent:
    active = body.get("active")
    if type(active) is not bool:
        raise _bad("active")
    return AccountEvent(
        _req_seq(body), _req_did(body, "did"), _opt_str(body, "time") or "", active, _opt_str(body, "status")
    )


def _sync(body: dict[str, Any]) -> SyncEvent:
    blocks = body.get("blocks")
    if type(blocks) is not bytes:
        raise _bad("blocks")
    return SyncEvent(_req_seq(body), _req_did(body, "did"), _req_str(body, "rev"), blocks, _opt_str(body, "time") or "")


def _info(body: dict[str, Any]) -> InfoEvent:
    return InfoEvent(_req_str(body, "name"), _opt_str(body, "message"))


_DECODERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    "#commit": commit_from_body,
    "#identity": _identity,
    "#account": _account,
    "#sync": _sync,
    "#info": _info,
}
