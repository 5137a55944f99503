"""TIDs: 13-char base32-sortable timestamps used as repo revisions.

Layout of the 64-bit value: top bit 0, 53 bits of microseconds since the
Unix epoch, 10 bits of clock id. Sortable base32 means string order equals
numeric order, so revs compare as plain strings.
"""

from __future__ import annotations

import re

from .errors import RevError

__all__ = ["ALPHABET", "is_tid", "make_tid", "tid_timestamp_us", "tid_to_int"]

ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_TID_RE = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
# Map the sortable alphabet onto int()'s base-32 digits so decoding is one C call.
_TO_STD32 = str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")


def is_tid(value: object) -> bool:
    """Syntax check only."""
    return isinstance(value, str) and _TID_RE.fullmatch(value) is not None


def tid_to_int(tid: str) -> int:
    """Integer value of a TID; raises ``RevError('bad_rev')`` on bad syntax."""
    if not is_tid(tid):
        raise RevError("bad_rev", f"not a TID: {str(tid)[:32]!r}")
    return int(tid.translate(_TO_STD32), 32)


def tid_timestamp_us(tid: str) -> int:
    """Microseconds since the epoch encoded in a TID."""
    return tid_to_int(tid) >> 10


def make_tid(timestamp_us: int, clock_id: int = 0) -> str:
    """Encode a TID (for tests and our own commits)."""
    if not 0 <= timestamp_us < (1 << 53) or not 0 <= clock_id < 1024:
        raise ValueError("timestamp or clock id out of range")
    value = (timestamp_us << 10) | clock_id
    out = []
    for _ in range(13):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))
