"""Firehose sync: decode frames, filter commits, verify signatures, CIDs and MSTs.

Pure and I/O-free; the daemon feeds it websocket frames and getRepo CARs.
Typical ingest: ``CommitFilter.select(frame)`` -> ``check_rev`` ->
``verify_commit(event, keys.get(did_key))``.
"""

from .car import Car, read_car, write_car
from .cid import cid_bytes, cid_for_cbor, cid_str
from .errors import CarError, FrameError, KeyFormatError, MstError, RevError, SyncError, VerifyError
from .filter import ATRUN_COLLECTIONS, CommitFilter
from .frames import (
    AccountEvent,
    CommitEvent,
    ErrorFrame,
    Event,
    IdentityEvent,
    InfoEvent,
    RepoOp,
    SyncEvent,
    UnknownEvent,
    decode_frame,
    frame_seq,
)
from .keys import KeyCache, PublicKey, SigningKey, parse_did_key, parse_multikey, parse_verification_method
from .mst import MST, key_depth
from .tid import make_tid, tid_timestamp_us
from .verify import (
    Commit,
    VerifiedCommit,
    VerifiedRecord,
    check_rev,
    invert_ops,
    verify_commit,
    verify_repo_car,
    verify_sync_event,
)

__all__ = [
    "ATRUN_COLLECTIONS",
    "MST",
    "AccountEvent",
    "Car",
    "CarError",
    "Commit",
    "CommitEvent",
    "CommitFilter",
    "ErrorFrame",
    "Event",
    "FrameError",
    "IdentityEvent",
    "InfoEvent",
    "KeyCache",
    "KeyFormatError",
    "MstError",
    "PublicKey",
    "RepoOp",
    "RevError",
    "SigningKey",
    "SyncError",
    "SyncEvent",
    "UnknownEvent",
    "VerifiedCommit",
    "VerifiedRecord",
    "VerifyError",
    "check_rev",
    "cid_bytes",
    "cid_for_cbor",
    "cid_str",
    "decode_frame",
    "frame_seq",
    "invert_ops",
    "key_depth",
    "make_tid",
    "parse_did_key",
    "parse_multikey",
    "parse_verification_method",
    "read_car",
    "tid_timestamp_us",
    "verify_commit",
    "verify_repo_car",
    "verify_sync_event",
    "write_car",
]
