"""did:key parsing, compact low-S ECDSA, signing keys and the key cache."""

from __future__ import annotations

import libipld
import pytest
from atproto_crypto.verify import verify_signature

from reactor.sync import KeyCache, KeyFormatError, SigningKey, parse_did_key, parse_multikey, parse_verification_method
from reactor.sync.keys import P256_ORDER, SECP256K1_ORDER

CURVES = ("secp256k1", "p256")
ORDER = {"secp256k1": SECP256K1_ORDER, "p256": P256_ORDER}


@pytest.mark.parametrize("curve", CURVES)
def test_sign_verify_roundtrip(curve) -> None:
    sk = SigningKey.generate(curve)
    did_key = sk.did_key()
    assert did_key.startswith("did:key:zQ3s" if curve == "secp256k1" else "did:key:zDn")
    pk = parse_did_key(did_key)
    assert pk.curve == curve and pk.did_key == did_key
    for i in range(50):
        msg = b"message %d" % i
        sig = sk.sign(msg)
        assert len(sig) == 64 and int.from_bytes(sig[32:], "big") <= ORDER[curve] // 2
        assert pk.verify(msg, sig)
        assert verify_signature(did_key, msg, sig)  # the atproto SDK agrees
        assert not pk.verify(msg + b"!", sig)


@pytest.mark.parametrize("curve", CURVES)
def test_high_s_rejected(curve) -> None:
    sk = SigningKey.generate(curve)
    msg = b"malleable"
    sig = sk.sign(msg)
    s = int.from_bytes(sig[32:], "big")
    high = sig[:32] + (ORDER[curve] - s).to_bytes(32, "big")
    pk = parse_did_key(sk.did_key())
    assert pk.verify(msg, sig) and not pk.verify(msg, high)


@pytest.mark.parametrize("curve", CURVES)
def test_malformed_signatures_rejected(curve) -> None:
    sk = SigningKey.generate(curve)
    pk = sk.public_key()
    sig = sk.sign(b"x")
    for bad in (b"", sig[:63], sig + b"\x00", b"\x00" * 64, b"\xff" * 64, sig[:32] + b"\x00" * 32):
        assert not pk.verify(b"x", bad)


def test_der_signature_rejected() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    sk = SigningKey.generate("p256")
    sig = sk.sign(b"x")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    assert not sk.public_key().verify(b"x", der)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("did:plc:abc", "bad_key"),
        ("did:key:", "bad_key"),
        ("did:key:mAbc", "bad_key"),
        ("did:key:z0OIl", "bad_key"),  # not base58
        ("did:key:" + libipld.encode_multibase("z", b"\xed\x01" + b"\x01" * 32), "unsupported_key"),  # ed25519
        ("did:key:" + libipld.encode_multibase("z", b"\xe7\x01" + b"\x02" * 10), "bad_key"),  # short point
        ("did:key:" + libipld.encode_multibase("z", b"\xe7\x01\x02" + b"\xff" * 32), "bad_key"),  # not on curve
        ("did:key:" + libipld.encode_multibase("z", b"\x80\x24\x05" + b"\x01" * 32), "bad_key"),  # bad tag
    ],
)
def test_bad_did_keys(text, reason) -> None:
    with pytest.raises(KeyFormatError) as ei:
        parse_did_key(text)
    assert ei.value.reason == reason


def test_known_vectors() -> None:
    """Published atproto interop vectors (crypto/signature-fixtures.json, CC0)."""
    import base64

    def b64(s: str) -> bytes:
        return base64.b64decode(s + "=" * (-len(s) % 4))

    msg = b64("oWVoZWxsb2V3b3JsZA")
    k1 = parse_did_key("did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc")
    assert k1.verify(msg, b64("5WpdIuEUUfVUYaozsi8G0B3cWO09cgZbIIwg1t2YKdUn/FEznOndsz/qgiYb89zwxYCbB71f7yQK5Lr7NasfoA"))
    assert not k1.verify(
        msg, b64("5WpdIuEUUfVUYaozsi8G0B3cWO09cgZbIIwg1t2YKdXYA67MYxYiTMAVfdnkDCMN9S5B3vHosRe07aORmoshoQ")
    )
    p = parse_did_key("did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo")
    assert p.verify(msg, b64("2vZNsG3UKvvO/CDlrdvyZRISOFylinBh0Jupc6KcWoJWExHptCfduPleDbG3rko3YZnn9Lw0IjpixVmexJDegg"))
    assert not p.verify(
        msg, b64("2vZNsG3UKvvO/CDlrdvyZRISOFylinBh0Jupc6KcWoKp7O4VS9giSAah8k5IUbXIW00SuOrjfEqQ9HEkN9JGzw")
    )


@pytest.mark.parametrize("curve", CURVES)
def test_signing_key_serialization(curve) -> None:
    sk = SigningKey.generate(curve)
    assert SigningKey.from_pem(sk.to_pem()).did_key() == sk.did_key()
    assert SigningKey.from_pem(sk.to_pem().decode()).curve == curve
    assert SigningKey.from_bytes(sk.to_bytes(), curve).did_key() == sk.did_key()
    assert parse_multikey(sk.multibase()).did_key == sk.did_key()
    assert sk.public_bytes()[0] in (2, 3) and len(sk.public_bytes()) == 33


def test_signing_key_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        SigningKey(b"\x00" * 31)
    with pytest.raises(ValueError):
        SigningKey(b"\x00" * 32, "p256")
    with pytest.raises(ValueError):
        SigningKey(b"\x01" * 32, "ed25519")  # type: ignore[arg-type]


def test_key_cache_hits() -> None:
    cache = KeyCache(maxsize=2)
    keys = [SigningKey.generate().did_key() for _ in range(3)]
    a = cache.get(keys[0])
    assert cache.get(keys[0]) is a
    assert cache.info().hits == 1
    cache.get(keys[1])
    cache.get(keys[2])  # evicts keys[0]
    assert cache.get(keys[0]) is not a
    with pytest.raises(KeyFormatError):
        cache.get("did:key:zbad")


@pytest.mark.parametrize("curve", CURVES)
def test_did_document_verification_methods(curve) -> None:
    """PLC still serves the legacy 2019 types with a bare, uncompressed point."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    sk = SigningKey.generate(curve)
    if curve == "secp256k1":
        import coincurve

        raw = coincurve.PublicKey(sk.public_bytes()).format(compressed=False)
        vm_type = "EcdsaSecp256k1VerificationKey2019"
    else:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sk.public_bytes())
        raw = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        vm_type = "EcdsaSecp256r1VerificationKey2019"
    legacy = parse_verification_method(vm_type, libipld.encode_multibase("z", raw))
    assert legacy.did_key == sk.did_key() and legacy.verify(b"m", sk.sign(b"m"))
    assert parse_verification_method("Multikey", sk.multibase()).did_key == sk.did_key()
    with pytest.raises(KeyFormatError) as ei:
        parse_verification_method("Ed25519VerificationKey2020", sk.multibase())
    assert ei.value.reason == "unsupported_key"
    with pytest.raises(KeyFormatError) as ei:
        parse_verification_method(vm_type, libipld.encode_multibase("z", raw[:40]))
    assert ei.value.reason == "bad_key"
