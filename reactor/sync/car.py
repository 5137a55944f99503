"""CAR v1 reading (raw block bytes, hash-checked on access) and writing.

``libipld.decode_car`` hands back decoded blocks and never checks that a block
hashes to its CID, so it can't serve content verification. This parser keeps
the raw bytes, and :meth:`Car.get` verifies a block's hash before use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import libipld

from .cbor import Link, encode
from .cid import check_block
from .errors import CarError

__all__ = ["Car", "read_car", "varint", "write_car"]


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _uvarint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; returns (value, new_pos)."""
    if pos >= end:
        raise CarError("bad_car", "truncated varint")
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    value = 0
    shift = 0
    for i in range(pos, min(end, pos + 9)):
        b = data[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise CarError("bad_car", "bad varint")


def _cid_len(data: bytes, pos: int, end: int) -> int:
    """Length of the binary CID starting at ``pos``."""
    if end - pos >= 2 and data[pos] == 0x12 and data[pos + 1] == 0x20:
        return 34  # CIDv0: bare sha2-256 multihash
    version, p = _uvarint(data, pos, end)
    if version != 1:
        raise CarError("bad_car", f"unsupported CID version {version}")
    _, p = _uvarint(data, p, end)  # codec
    _, p = _uvarint(data, p, end)  # multihash code
    size, p = _uvarint(data, p, end)
    if p + size > end:
        raise CarError("bad_car", "truncated CID")
    return p + size - pos


@dataclass(slots=True)
class Car:
    """Parsed CAR: roots plus raw, not-yet-verified blocks keyed by CID."""

    roots: list[bytes]
    blocks: dict[bytes, bytes] = field(default_factory=dict)

    def get(self, cid: bytes) -> bytes:
        """Raw block bytes, verified against ``cid``."""
        data = self.blocks.get(cid)
        if data is None:
            raise CarError("missing_block", f"block {cid.hex()[:24]}.. not in CAR")
        check_block(cid, data)
        return data

    def get_cbor(self, cid: bytes) -> Any:
        """Verified and decoded DAG-CBOR block."""
        data = self.get(cid)
        try:
            return libipld.decode_dag_cbor(data)
        except (ValueError, RecursionError) as e:
            raise CarError("bad_car", f"undecodable block: {e}") from e

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.blocks


def read_car(data: bytes, *, max_blocks: int = 1_000_000) -> Car:
    """Parse a CAR v1 archive; raises ``CarError('bad_car')`` on any malformation."""
    if not isinstance(data, (bytes, bytearray)):
        raise CarError("bad_car", "CAR must be bytes")
    data = bytes(data)
    end = len(data)
    hlen, pos = _uvarint(data, 0, end)
    if hlen == 0 or pos + hlen > end:
        raise CarError("bad_car", "truncated header")
    try:
        header = libipld.decode_dag_cbor(data[pos : pos + hlen])
    except (ValueError, RecursionError) as e:
        raise CarError("bad_car", f"bad header: {e}") from e
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError("bad_car", "not a CAR v1 header")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, bytes) for r in roots):
        raise CarError("bad_car", "bad roots")
    pos += hlen
    blocks: dict[bytes, bytes] = {}
    while pos < end:
        slen, pos = _uvarint(data, pos, end)
        stop = pos + slen
        if slen == 0 or stop > end:
            raise CarError("bad_car", "truncated block")
        clen = _cid_len(data, pos, stop)
        blocks[data[pos : pos + clen]] = data[pos + clen : stop]
        pos = stop
        if len(blocks) > max_blocks:
            raise CarError("bad_car", "too many blocks")
    return Car(roots, blocks)


def write_car(roots: Iterable[bytes], blocks: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialize a CAR v1 archive from (cid, bytes) pairs."""
    header = encode({"version": 1, "roots": [Link(r) for r in roots]})
    out = [varint(len(header)), header]
    for cid, data in blocks:
        out.append(varint(len(cid) + len(data)))
        out.append(cid)
        out.append(data)
    return b"".join(out)
