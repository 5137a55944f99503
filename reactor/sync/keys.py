"""atproto signing keys: did:key parsing, compact low-S ECDSA verify and sign.

atproto signatures are 64-byte ``r || s`` over SHA-256, with ``s`` in the low
half of the curve order (the high-S twin of a valid signature is invalid).
secp256k1 goes through libsecp256k1 via coincurve (~25 µs per verify; it
rejects high-S by itself); P-256 goes through ``cryptography`` with an explicit
low-S check.
"""

from __future__ import annotations

import functools
from hashlib import sha256
from typing import Literal, Protocol

import coincurve
import libipld
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .errors import KeyFormatError

try:  # low-level path: compact signatures straight into libsecp256k1, no DER round trip
    from coincurve._libsecp256k1 import ffi as _ffi
    from coincurve._libsecp256k1 import lib as _lib
    from coincurve.context import GLOBAL_CONTEXT as _GLOBAL_CONTEXT

    _CTX = _GLOBAL_CONTEXT.ctx
except ImportError:  # pragma: no cover - depends on coincurve internals
    _lib = None

__all__ = [
    "P256_ORDER",
    "SECP256K1_ORDER",
    "Curve",
    "KeyCache",
    "P256PublicKey",
    "PublicKey",
    "Secp256k1PublicKey",
    "SigningKey",
    "parse_did_key",
    "parse_multikey",
    "parse_verification_method",
]

Curve = Literal["secp256k1", "p256"]

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_PREFIX = {"secp256k1": b"\xe7\x01", "p256": b"\x80\x24"}  # multicodec varints 0xe7, 0x1200
_DID_KEY = "did:key:"


class PublicKey(Protocol):
    """What verification needs from a key."""

    curve: Curve
    did_key: str

    def verify(self, message: bytes, sig: bytes) -> bool: ...


def _encode_did_key(curve: Curve, compressed: bytes) -> str:
    return _DID_KEY + libipld.encode_multibase("z", _PREFIX[curve] + compressed)


class Secp256k1PublicKey:
    """secp256k1 (K-256) public key."""

    __slots__ = ("_cdata", "_pub", "did_key")
    curve: Curve = "secp256k1"

    def __init__(self, compressed: bytes) -> None:
        try:
            self._pub = coincurve.PublicKey(compressed)
        except (ValueError, TypeError) as e:
            raise KeyFormatError("bad_key", "invalid secp256k1 point") from e
        self._cdata = self._pub.public_key
        self.did_key = _encode_did_key("secp256k1", compressed)

    def verify(self, message: bytes, sig: bytes) -> bool:
        """True iff ``sig`` is a valid compact low-S signature of ``message``."""
        if len(sig) != 64:
            return False
        if _lib is None:  # pragma: no cover
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            if not (0 < r < SECP256K1_ORDER and 0 < s <= SECP256K1_ORDER // 2):
                return False
            return self._pub.verify(encode_dss_signature(r, s), message)
        raw = _ffi.new("secp256k1_ecdsa_signature *")
        if not _lib.secp256k1_ecdsa_signature_parse_compact(_CTX, raw, sig):
            return False
        # libsecp256k1 only accepts lower-S signatures, which is exactly atproto's rule.
        return _lib.secp256k1_ecdsa_verify(_CTX, raw, sha256(message).digest(), self._cdata) == 1


class P256PublicKey:
    """NIST P-256 (secp256r1) public key."""

    __slots__ = ("_pub", "did_key")
    curve: Curve = "p256"

    def __init__(self, compressed: bytes) -> None:
        try:
            self._pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), compressed)
        except ValueError as e:
            raise KeyFormatError("bad_key", "invalid P-256 point") from e
        self.did_key = _encode_did_key("p256", compressed)

    def verify(self, message: bytes, sig: bytes) -> bool:
        """True iff ``sig`` is a valid compact low-S signature of ``message``."""
        if len(sig) != 64:
            return False
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s <= P256_ORDER // 2):
            return False
        try:
            self._pub.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _from_multicodec(data: bytes) -> PublicKey:
    cls: type[Secp256k1PublicKey | P256PublicKey]
    if data[:2] == _PREFIX["secp256k1"]:
        key, cls = data[2:], Secp256k1PublicKey
    elif data[:2] == _PREFIX["p256"]:
        key, cls = data[2:], P256PublicKey
    else:
        raise KeyFormatError("unsupported_key", f"multicodec {data[:2].hex()} is not secp256k1 or P-256")
    if len(key) != 33 or key[0] not in (2, 3):
        raise KeyFormatError("bad_key", "expected a 33-byte compressed point")
    return cls(key)


def parse_multikey(multibase: str) -> PublicKey:
    """Parse a ``publicKeyMultibase`` (Multikey form: ``z`` + base58btc of multicodec key)."""
    if not isinstance(multibase, str) or not multibase.startswith("z") or len(multibase) > 128:
        raise KeyFormatError("bad_key", "expected base58btc multibase")
    try:
        _, data = libipld.decode_multibase(multibase)
    except ValueError as e:
        raise KeyFormatError("bad_key", "bad multibase") from e
    return _from_multicodec(data)


_LEGACY_VM_TYPES: dict[str, Curve] = {
    "EcdsaSecp256k1VerificationKey2019": "secp256k1",
    "EcdsaSecp256r1VerificationKey2019": "p256",
}


def _compress(curve: Curve, point: bytes) -> bytes:
    try:
        if curve == "secp256k1":
            return coincurve.PublicKey(point).format(compressed=True)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    except (ValueError, TypeError) as e:
        raise KeyFormatError("bad_key", f"invalid {curve} point") from e


def parse_verification_method(vm_type: str, public_key_multibase: str) -> PublicKey:
    """Key of a DID document ``verificationMethod`` entry.

    ``Multikey`` carries a multicodec-prefixed compressed key (like did:key);
    the legacy ``Ecdsa...VerificationKey2019`` types, still served by PLC,
    carry the bare (often uncompressed) point.
    """
    if vm_type == "Multikey":
        return parse_multikey(public_key_multibase)
    curve = _LEGACY_VM_TYPES.get(vm_type)
    if curve is None:
        raise KeyFormatError("unsupported_key", f"verification method type {str(vm_type)[:64]!r}")
    if not isinstance(public_key_multibase, str) or not public_key_multibase.startswith("z"):
        raise KeyFormatError("bad_key", "expected base58btc multibase")
    try:
        _, point = libipld.decode_multibase(public_key_multibase)
    except ValueError as e:
        raise KeyFormatError("bad_key", "bad multibase") from e
    if len(point) not in (33, 65):
        raise KeyFormatError("bad_key", "expected a 33- or 65-byte point")
    return _from_multicodec(_PREFIX[curve] + _compress(curve, point))


def parse_did_key(did_key: str) -> PublicKey:
    """Parse ``did:key:z...`` into a verifier; raises :class:`KeyFormatError`."""
    if not isinstance(did_key, str) or not did_key.startswith(_DID_KEY):
        raise KeyFormatError("bad_key", "not a did:key")
    return parse_multikey(did_key[len(_DID_KEY) :])


class KeyCache:
    """LRU of parsed keys by did:key string; parsing a point costs more than a dict hit."""

    __slots__ = ("get",)

    def __init__(self, maxsize: int = 4096) -> None:
        self.get = functools.lru_cache(maxsize=maxsize)(parse_did_key)
        """``get(did_key) -> PublicKey``; raises :class:`KeyFormatError`."""

    def info(self) -> functools._CacheInfo:
        return self.get.cache_info()

    def clear(self) -> None:
        self.get.cache_clear()


class SigningKey:
    """A private key that signs like an atproto PDS: SHA-256, compact, low-S."""

    __slots__ = ("_compressed", "_k1", "_p256", "_secret", "curve")

    def __init__(self, secret: bytes, curve: Curve = "secp256k1") -> None:
        if len(secret) != 32:
            raise ValueError("private key must be 32 bytes")
        self.curve: Curve = curve
        self._secret = bytes(secret)
        self._k1: coincurve.PrivateKey | None = None
        self._p256: ec.EllipticCurvePrivateKey | None = None
        if curve == "secp256k1":
            self._k1 = coincurve.PrivateKey(self._secret)
            self._compressed = self._k1.public_key.format(compressed=True)
        elif curve == "p256":
            value = int.from_bytes(self._secret, "big")
            if not 0 < value < P256_ORDER:
                raise ValueError("private key out of range")
            self._p256 = ec.derive_private_key(value, ec.SECP256R1())
            self._compressed = self._p256.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
        else:
            raise ValueError(f"unsupported curve {curve!r}")

    @classmethod
    def generate(cls, curve: Curve = "secp256k1") -> SigningKey:
        if curve == "secp256k1":
            return cls(coincurve.PrivateKey().secret, curve)
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key.private_numbers().private_value.to_bytes(32, "big"), curve)

    @classmethod
    def from_bytes(cls, secret: bytes, curve: Curve = "secp256k1") -> SigningKey:
        return cls(secret, curve)

    @classmethod
    def from_pem(cls, pem: bytes | str, password: bytes | None = None) -> SigningKey:
        data = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, password=password)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("PEM is not an EC private key")
        name = key.curve.name
        curve: Curve
        if name == "secp256k1":
            curve = "secp256k1"
        elif name == "secp256r1":
            curve = "p256"
        else:
            raise ValueError(f"unsupported curve {name}")
        return cls(key.private_numbers().private_value.to_bytes(32, "big"), curve)

    def to_bytes(self) -> bytes:
        return self._secret

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM."""
        crv = ec.SECP256K1() if self.curve == "secp256k1" else ec.SECP256R1()
        key = ec.derive_private_key(int.from_bytes(self._secret, "big"), crv)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_bytes(self) -> bytes:
        """33-byte compressed public point."""
        return self._compressed

    def did_key(self) -> str:
        return _encode_did_key(self.curve, self._compressed)

    def multibase(self) -> str:
        """``publicKeyMultibase`` for a Multikey verification method."""
        return libipld.encode_multibase("z", _PREFIX[self.curve] + self._compressed)

    def public_key(self) -> PublicKey:
        return Secp256k1PublicKey(self._compressed) if self.curve == "secp256k1" else P256PublicKey(self._compressed)

    def sign(self, message: bytes) -> bytes:
        """64-byte compact ``r || s`` ECDSA-SHA256 signature with low S."""
        if self._k1 is not None:
            # libsecp256k1 always emits normalized (low-S) signatures.
            return self._k1.sign_recoverable(message)[:64]
        assert self._p256 is not None
        r, s = decode_dss_signature(self._p256.sign(message, ec.ECDSA(hashes.SHA256())))
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
