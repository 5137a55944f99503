"""A tiny canonical DAG-CBOR encoder with an explicit link type.

libipld encodes any ``bytes`` that happen to parse as a CID as a link (tag
42), so a random 64-byte signature can silently turn into a link. Blocks we
hash or sign (commits, MST nodes) are therefore encoded here, where links are
spelled ``Link(cid)`` and ``bytes`` are always byte strings. Decoding stays
with libipld.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["Link", "encode"]


class Link(bytes):
    """Binary CID to be encoded as a DAG-CBOR link (tag 42)."""

    __slots__ = ()


def head(major: int, n: int) -> bytes:
    """A CBOR item head: major type and argument, in the shortest (canonical) form."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((m | 27,)) + n.to_bytes(8, "big")
    raise ValueError("integer out of 64-bit range")


def _key_order(item: tuple[str, Any]) -> tuple[int, bytes]:
    k = item[0].encode()
    return (len(k), k)


def _enc(value: Any, out: list[bytes]) -> None:
    if isinstance(value, Link):
        out.append(b"\xd8\x2a" + head(2, len(value) + 1) + b"\x00" + bytes(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        out.append(head(2, len(b)))
        out.append(b)
    elif isinstance(value, str):
        b = value.encode()
        out.append(head(3, len(b)))
        out.append(b)
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif value is None:
        out.append(b"\xf6")
    elif isinstance(value, int):
        out.append(head(0, value) if value >= 0 else head(1, -1 - value))
    elif isinstance(value, float):
        out.append(b"\xfb" + struct.pack(">d", value))
    elif isinstance(value, (list, tuple)):
        out.append(head(4, len(value)))
        for v in value:
            _enc(v, out)
    elif isinstance(value, dict):
        items = sorted(value.items(), key=_key_order)
        out.append(head(5, len(items)))
        for k, v in items:
            if not isinstance(k, str):
                raise TypeError("DAG-CBOR map keys must be strings")
            kb = k.encode()
            out.append(head(3, len(kb)))
            out.append(kb)
            _enc(v, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def encode(value: Any) -> bytes:
    """Canonical DAG-CBOR bytes of ``value`` (dict keys sorted length-first)."""
    out: list[bytes] = []
    _enc(value, out)
    return b"".join(out)
