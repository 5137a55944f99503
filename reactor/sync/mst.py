"""Merkle Search Tree over a (possibly partial) set of blocks.

The atproto repo MST is deterministic: a key's layer is the number of leading
zero bits of sha256(key) counted in 2-bit chunks, every node holds the keys of
one layer in order, and each gap between keys points to a subtree exactly one
layer down (empty intermediate nodes fill skipped layers; the root is trimmed).
That determinism is what lets a consumer check a commit: look keys up along
hash-verified paths (proofs), or undo the ops on the partial tree shipped in
the commit's CAR and compare the root with ``prevData`` (Sync 1.1 inversion).

Nodes are immutable and shared (path copying), so an :class:`MST` can be cheaply
forked; unloaded subtrees are just CIDs, fetched on demand from ``get_block``
(which must return hash-verified bytes) and validated as they load.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256

import libipld

from .cbor import head
from .cid import cid_for_cbor
from .errors import CarError, MstError

__all__ = ["EMPTY_NODE", "EMPTY_NODE_CID", "MST", "BlockGetter", "Node", "encode_node", "key_depth"]

BlockGetter = Callable[[bytes], bytes]

EMPTY_NODE = b"\xa2\x61e\x80\x61l\xf6"  # {"e": [], "l": null}
EMPTY_NODE_CID = cid_for_cbor(EMPTY_NODE)
_MAX_KEY = 1024


@functools.lru_cache(maxsize=1 << 16)
def key_depth(key: bytes) -> int:
    """MST layer of ``key``: leading zero bits of sha256(key) // 2."""
    h = sha256(key).digest()
    zeros = 0
    for i in range(0, 32, 8):
        word = int.from_bytes(h[i : i + 8], "big")
        if word:
            zeros += 64 - word.bit_length()
            break
        zeros += 64
    return zeros // 2


@dataclass(slots=True, eq=False)
class Node:
    """One MST node. ``children[i]`` is the subtree left of ``keys[i]``;
    ``children[-1]`` is right of the last key. A child is a :class:`Node`,
    a CID (``bytes``, not loaded yet) or ``None``."""

    layer: int
    keys: list[bytes]
    vals: list[bytes]
    children: list[Node | bytes | None]
    cid: bytes | None = None
    raw: bytes | None = None


Ref = Node | bytes | None


_LINK36 = b"\xd8\x2a\x58\x25\x00"  # tag 42 + bytes(37) + identity multibase prefix


def _link(cid: bytes | None) -> bytes:
    if cid is None:
        return b"\xf6"
    if len(cid) == 36:
        return _LINK36 + cid
    return b"\xd8\x2a" + head(2, len(cid) + 1) + b"\x00" + cid


def _common(a: bytes, b: bytes) -> int:
    """Length of the common prefix, via one big-int XOR instead of a byte loop."""
    n = min(len(a), len(b))
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


def encode_node(keys: list[bytes], vals: list[bytes], child_cids: list[bytes | None]) -> bytes:
    """Canonical DAG-CBOR of a node, with prefix-compressed keys."""
    out = [b"\xa2\x61e", head(4, len(keys))]
    append = out.append
    prev = b""
    for i, key in enumerate(keys):
        p = _common(prev, key) if prev else 0
        ls = len(key) - p
        append(
            b"\xa4\x61k"
            + (bytes((0x40 | ls,)) if ls < 24 else head(2, ls))
            + key[p:]
            + b"\x61p"
            + (bytes((p,)) if p < 24 else head(0, p))
            + b"\x61t"
            + _link(child_cids[i + 1])
            + b"\x61v"
            + _link(vals[i])
        )
        prev = key
    append(b"\x61l")
    append(_link(child_cids[0]))
    return b"".join(out)


def _bad(why: str) -> MstError:
    return MstError("mst_invalid", why)


class MST:
    """A mutable handle on an immutable, lazily loaded MST."""

    __slots__ = ("_cache", "_get_block", "_layer", "_root", "fresh", "touched")

    def __init__(self, get_block: BlockGetter | None = None) -> None:
        self._root: Ref = None
        self._layer = 0
        self._get_block = get_block
        self._cache: dict[bytes, Node] = {}
        #: CID -> bytes of nodes encoded by :meth:`root_cid` (None: don't collect).
        self.fresh: dict[bytes, bytes] | None = None
        #: CID -> bytes of persisted nodes read by operations (None: don't track);
        #: exactly the blocks a consumer needs to replay those operations.
        self.touched: dict[bytes, bytes] | None = None

    # ---- construction ---------------------------------------------------

    @classmethod
    def load(cls, root: bytes, get_block: BlockGetter) -> MST:
        """Open the tree whose root node has CID ``root``."""
        t = cls(get_block)
        node = t._decode(root, None, None, None)
        if not node.keys:
            if node.children[0] is not None:
                raise _bad("root node has no entries (not trimmed)")
            return t  # empty repo
        t._root, t._layer = node, node.layer
        return t

    def fork(self) -> MST:
        """An independent handle sharing all nodes (cheap: nodes are immutable)."""
        t = MST(self._get_block)
        t._root, t._layer, t._cache = self._root, self._layer, self._cache
        return t

    @property
    def empty(self) -> bool:
        return self._root is None

    # ---- loading --------------------------------------------------------

    def _load(self, ref: Node | bytes, layer: int, lo: bytes | None, hi: bytes | None) -> Node:
        if type(ref) is Node:
            node = ref
        else:
            assert isinstance(ref, bytes)
            cached = self._cache.get(ref)
            if cached is None:
                node = self._decode(ref, layer, lo, hi)
            else:
                node = cached
                if node.layer != layer or (
                    node.keys and ((lo is not None and node.keys[0] <= lo) or (hi is not None and node.keys[-1] >= hi))
                ):
                    raise _bad("subtree out of place")
        if self.touched is not None and node.cid is not None and node.raw is not None:
            self.touched[node.cid] = node.raw
        return node

    def _decode(self, cid: bytes, layer: int | None, lo: bytes | None, hi: bytes | None) -> Node:
        if self._get_block is None:
            raise CarError("missing_block", "MST has no block source")
        raw = self._get_block(cid)
        try:
            obj = libipld.decode_dag_cbor(raw)
        except (ValueError, RecursionError) as e:
            raise _bad(f"undecodable node: {e}") from e
        if type(obj) is not dict or len(obj) != 2 or type(obj.get("e")) is not list or "l" not in obj:
            raise _bad("not an MST node")
        left = obj["l"]
        if left is not None and type(left) is not bytes:
            raise _bad("bad left link")
        keys: list[bytes] = []
        vals: list[bytes] = []
        children: list[Ref] = [left]
        prev = b""
        for entry in obj["e"]:
            try:
                p, k, v, t = entry["p"], entry["k"], entry["v"], entry["t"]
            except (KeyError, TypeError) as exc:
                raise _bad("bad entry") from exc
            if (
                type(p) is not int
                or type(k) is not bytes
                or type(v) is not bytes
                or (t is not None and type(t) is not bytes)
                or len(entry) != 4
            ):
                raise _bad("bad entry fields")
            if p < 0 or p > len(prev) or (p and not keys):
                raise _bad("bad prefix length")
            key = prev[:p] + k if p else k
            if (keys and key <= prev) or not key or len(key) > _MAX_KEY:
                raise _bad("keys not strictly increasing")
            keys.append(key)
            vals.append(v)
            children.append(t)
            prev = key
        if keys:
            if layer is None:
                layer = key_depth(keys[0])
            for key in keys:
                if key_depth(key) != layer:
                    raise _bad("key on wrong layer")
            if (lo is not None and keys[0] <= lo) or (hi is not None and keys[-1] >= hi):
                raise _bad("key outside parent range")
        elif layer is None:
            layer = 0  # empty root; caller decides
        elif left is None:
            raise _bad("empty non-root node")
        if layer == 0 and any(c is not None for c in children):
            raise _bad("subtree below layer 0")
        node = Node(layer, keys, vals, children, cid, raw)
        self._cache[cid] = node
        return node

    # ---- queries --------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Value CID stored at ``key``, or None. Raises if a needed block is missing."""
        kd = key_depth(key)
        ref: Ref = self._root
        layer = self._layer
        lo = hi = None
        while ref is not None and kd <= layer:
            n = self._load(ref, layer, lo, hi)
            keys = n.keys
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                return n.vals[i]
            if kd == layer:
                return None
            if i:
                lo = keys[i - 1]
            if i < len(keys):
                hi = keys[i]
            ref = n.children[i]
            layer -= 1
        return None

    def items(self, lo: bytes | None = None, hi: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``lo <= key < hi``, in key order."""
        if self._root is not None:
            yield from self._walk(self._root, self._layer, lo, hi, None, None)

    def _walk(
        self, ref: Node | bytes, layer: int, lo: bytes | None, hi: bytes | None, blo: bytes | None, bhi: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        n = self._load(ref, layer, blo, bhi)
        keys = n.keys
        s = 0 if lo is None else bisect_left(keys, lo)
        e = len(keys) if hi is None else bisect_left(keys, hi)
        for j in range(s, e + 1):
            child = n.children[j]
            if child is not None:
                yield from self._walk(
                    child, layer - 1, lo, hi, keys[j - 1] if j else blo, keys[j] if j < len(keys) else bhi
                )
            if j < e:
                yield keys[j], n.vals[j]

    # ---- mutation -------------------------------------------------------

    def put(self, key: bytes, val: bytes) -> bytes | None:
        """Insert or update; returns the previous value CID."""
        if not key or len(key) > _MAX_KEY:
            raise _bad("bad key")
        kd = key_depth(key)
        if self._root is None:
            self._root, self._layer = Node(kd, [key], [val], [None, None]), kd
            return None
        if kd > self._layer:
            r: Ref = self._root
            for layer in range(self._layer + 1, kd):
                r = Node(layer, [], [], [r])
            left, right = self._split(r, kd - 1, key, None, None)
            self._root, self._layer = Node(kd, [key], [val], [left, right]), kd
            return None
        self._root, prev = self._put(self._root, self._layer, key, kd, val, None, None)
        return prev

    def delete(self, key: bytes) -> bytes | None:
        """Remove ``key``; returns its value CID (None if it was absent)."""
        if self._root is None:
            return None
        root, prev = self._delete(self._root, self._layer, key, key_depth(key), None, None)
        if prev is None:
            return None
        layer = self._layer
        while root is not None:  # trim empty nodes off the top
            n = self._load(root, layer, None, None)
            if n.keys:
                break
            root, layer = n.children[0], layer - 1
        self._root, self._layer = root, (layer if root is not None else 0)
        return prev

    def _put(
        self, ref: Ref, layer: int, key: bytes, kd: int, val: bytes, lo: bytes | None, hi: bytes | None
    ) -> tuple[Node, bytes | None]:
        if ref is None:
            if kd == layer:
                return Node(layer, [key], [val], [None, None]), None
            child, _ = self._put(None, layer - 1, key, kd, val, lo, hi)
            return Node(layer, [], [], [child]), None
        n = self._load(ref, layer, lo, hi)
        keys = n.keys
        i = bisect_left(keys, key)
        clo = keys[i - 1] if i else lo
        chi = keys[i] if i < len(keys) else hi
        if kd == layer:
            if i < len(keys) and keys[i] == key:
                old = n.vals[i]
                if old == val:
                    return n, old
                vals = n.vals.copy()
                vals[i] = val
                return Node(layer, keys, vals, n.children), old
            left, right = self._split(n.children[i], layer - 1, key, clo, chi)
            return (
                Node(
                    layer,
                    keys[:i] + [key] + keys[i:],
                    n.vals[:i] + [val] + n.vals[i:],
                    n.children[:i] + [left, right] + n.children[i + 1 :],
                ),
                None,
            )
        child, prev = self._put(n.children[i], layer - 1, key, kd, val, clo, chi)
        if child is n.children[i]:
            return n, prev
        children = n.children.copy()
        children[i] = child
        return Node(layer, keys, n.vals, children), prev

    def _split(self, ref: Ref, layer: int, key: bytes, lo: bytes | None, hi: bytes | None) -> tuple[Ref, Ref]:
        """Cut a subtree into the parts below and above ``key`` (not in it)."""
        if ref is None:
            return None, None
        n = self._load(ref, layer, lo, hi)
        keys = n.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            raise _bad("split key present in subtree")
        child = n.children[i]
        cl, cr = self._split(child, layer - 1, key, keys[i - 1] if i else lo, keys[i] if i < len(keys) else hi)
        if cr is None and cl is child and i == len(keys):
            return n, None
        if cl is None and cr is child and i == 0:
            return None, n
        return (
            self._make(layer, keys[:i], n.vals[:i], n.children[:i] + [cl]),
            self._make(layer, keys[i:], n.vals[i:], [cr] + n.children[i + 1 :]),
        )

    def _delete(
        self, ref: Ref, layer: int, key: bytes, kd: int, lo: bytes | None, hi: bytes | None
    ) -> tuple[Ref, bytes | None]:
        if ref is None or kd > layer:
            return ref, None
        n = self._load(ref, layer, lo, hi)
        keys = n.keys
        i = bisect_left(keys, key)
        if kd == layer:
            if i < len(keys) and keys[i] == key:
                merged = self._merge(
                    n.children[i],
                    n.children[i + 1],
                    layer - 1,
                    keys[i - 1] if i else lo,
                    key,
                    keys[i + 1] if i + 1 < len(keys) else hi,
                )
                node = self._make(
                    layer,
                    keys[:i] + keys[i + 1 :],
                    n.vals[:i] + n.vals[i + 1 :],
                    n.children[:i] + [merged] + n.children[i + 2 :],
                )
                return node, n.vals[i]
            return ref, None
        child, prev = self._delete(
            n.children[i], layer - 1, key, kd, keys[i - 1] if i else lo, keys[i] if i < len(keys) else hi
        )
        if prev is None:
            return ref, None
        children = n.children.copy()
        children[i] = child
        return self._make(layer, keys, n.vals, children), prev

    def _merge(self, a: Ref, b: Ref, layer: int, lo: bytes | None, mid: bytes, hi: bytes | None) -> Ref:
        """Join two adjacent subtrees of one layer (the key between them was removed)."""
        if a is None:
            return b
        if b is None:
            return a
        na = self._load(a, layer, lo, mid)
        nb = self._load(b, layer, mid, hi)
        seam = self._merge(
            na.children[-1],
            nb.children[0],
            layer - 1,
            na.keys[-1] if na.keys else lo,
            mid,
            nb.keys[0] if nb.keys else hi,
        )
        return Node(layer, na.keys + nb.keys, na.vals + nb.vals, na.children[:-1] + [seam] + nb.children[1:])

    @staticmethod
    def _make(layer: int, keys: list[bytes], vals: list[bytes], children: list[Ref]) -> Ref:
        if not keys and children[0] is None:
            return None
        return Node(layer, keys, vals, children)

    # ---- hashing --------------------------------------------------------

    def root_cid(self) -> bytes:
        """CID of the root node, encoding any nodes created since load."""
        if self._root is None:
            if self.fresh is not None:
                self.fresh[EMPTY_NODE_CID] = EMPTY_NODE
            return EMPTY_NODE_CID
        return self._cid(self._root)  # type: ignore[return-value]

    def root_block(self) -> tuple[bytes, bytes]:
        """(CID, bytes) of the root node."""
        cid = self.root_cid()
        if self._root is None:
            return cid, EMPTY_NODE
        node = self._load(self._root, self._layer, None, None)
        assert node.raw is not None
        return cid, node.raw

    def _cid(self, ref: Ref) -> bytes | None:
        if ref is None or type(ref) is bytes:
            return ref
        node: Node = ref  # type: ignore[assignment]
        if node.cid is None:
            raw = encode_node(node.keys, node.vals, [self._cid(c) for c in node.children])
            node.raw, node.cid = raw, cid_for_cbor(raw)
            if self.fresh is not None:
                self.fresh[node.cid] = raw
        return node.cid

    def nodes(self) -> Iterator[Node]:
        """Every node of a fully loadable tree (for exporting whole repos)."""
        if self._root is None:
            return
        self.root_cid()
        stack: list[tuple[Ref, int]] = [(self._root, self._layer)]
        while stack:
            ref, layer = stack.pop()
            if ref is None:
                continue
            n = self._load(ref, layer, None, None)
            yield n
            stack.extend((c, layer - 1) for c in n.children)
