"""Typed rejections for hostile sync input.

Every failure carries a short, stable machine ``reason`` so callers can count,
log and branch on it without parsing messages. Reasons in use:

frames:  truncated_frame, garbage_frame, bad_header, bad_event
keys:    bad_key, unsupported_key
revs:    bad_rev, old_rev, future_rev
car:     bad_car, missing_block, cid_mismatch, bad_cid
verify:  bad_commit, commit_mismatch, bad_signature, bad_op, bad_path,
         bad_record, op_mismatch, too_big, too_many_ops
mst:     mst_invalid, prev_data_mismatch
"""

from __future__ import annotations

__all__ = [
    "CarError",
    "FrameError",
    "KeyFormatError",
    "MstError",
    "RevError",
    "SyncError",
    "VerifyError",
]


class SyncError(Exception):
    """Base class: input from the network was rejected for ``reason``."""

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FrameError(SyncError):
    """A websocket frame could not be decoded into an event."""


class KeyFormatError(SyncError):
    """A did:key / multibase public key could not be parsed."""


class RevError(SyncError):
    """A repo revision is malformed, stale, or too far in the future."""


class VerifyError(SyncError):
    """A commit or repo failed cryptographic or structural verification."""


class CarError(VerifyError):
    """A CAR archive is malformed, lacks a block, or a block fails its CID."""


class MstError(VerifyError):
    """An MST node is malformed, or the ops do not invert to ``prevData``."""
