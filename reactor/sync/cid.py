"""Binary CID helpers for the atproto "blessed" subset: CIDv1, sha2-256.

CIDs stay as raw bytes (what libipld yields for links) on every hot path;
strings are produced only at the edges.
"""

from __future__ import annotations

from hashlib import sha256

import libipld

from .errors import CarError

__all__ = [
    "DAG_CBOR",
    "RAW",
    "check_block",
    "cid_bytes",
    "cid_for_cbor",
    "cid_for_raw",
    "cid_str",
]

DAG_CBOR = 0x71
RAW = 0x55
_CBOR_PREFIX = b"\x01\x71\x12\x20"  # v1, dag-cbor, sha2-256, 32 bytes
_RAW_PREFIX = b"\x01\x55\x12\x20"  # v1, raw, sha2-256, 32 bytes


def cid_for_cbor(data: bytes) -> bytes:
    """CID of a DAG-CBOR block (records, MST nodes, commits)."""
    return _CBOR_PREFIX + sha256(data).digest()


def cid_for_raw(data: bytes) -> bytes:
    """CID of a raw block (blobs)."""
    return _RAW_PREFIX + sha256(data).digest()


def check_block(cid: bytes, data: bytes) -> None:
    """Raise unless ``data`` hashes to ``cid``; content addressing is the only
    thing that makes a relayed block trustworthy, so never skip this."""
    prefix = cid[:4]
    if len(cid) != 36 or (prefix != _CBOR_PREFIX and prefix != _RAW_PREFIX):
        raise CarError("bad_cid", f"unsupported CID {cid[:6].hex()}")
    if sha256(data).digest() != cid[4:]:
        raise CarError("cid_mismatch", f"block does not hash to {cid_str(cid)}")


def cid_str(cid: bytes) -> str:
    """Base32 string form (``bafyrei...``) for logs and storage."""
    try:
        return libipld.encode_cid(cid)
    except ValueError:
        return "0x" + cid.hex()


def cid_bytes(cid: str | bytes) -> bytes:
    """Binary form of a CID given as string or bytes."""
    if isinstance(cid, bytes):
        return cid
    try:
        info = libipld.decode_cid(cid)
    except ValueError as e:
        raise CarError("bad_cid", f"unparseable CID {cid[:20]!r}") from e
    mh = info["hash"]
    if info["version"] != 1 or info["codec"] not in (DAG_CBOR, RAW) or mh["code"] != 0x12 or mh["size"] != 32:
        raise CarError("bad_cid", f"unsupported CID {cid[:20]!r}")
    return bytes((1, info["codec"], 0x12, 0x20)) + mh["digest"]
