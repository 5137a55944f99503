"""The runner's own keys: X25519 for sealed secrets and grants, secp256k1 for signing results.

Keys live as raw 32-byte files, mode 0600, created once by `at-rund init` and
never overwritten: losing them would orphan every secret sealed to this runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import coincurve
from atproto_crypto.multibase import bytes_to_multibase, multibase_to_bytes
from nacl.public import PrivateKey, SealedBox

from reactor.sync.keys import SigningKey

ENCRYPTION_KEY_FILE = "encryption.x25519"
SIGNING_KEY_FILE = "signing.secp256k1"
_X25519_PUB_MULTICODEC = b"\xec\x01"


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed."""


def _write_new_key(path: Path, secret: bytes) -> bool:
    """Create `path` with mode 0600 atomically; never replace an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return True


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read key ({error.strerror}); run `at-rund init`") from None
    if len(data) != 32:
        raise KeyFileError(f"{path}: expected 32 raw key bytes, found {len(data)}")
    return data


def ensure_keys(keys_dir: Path) -> list[Path]:
    """Generate whichever keys are missing. Returns the files it created."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    created = []
    encryption = keys_dir / ENCRYPTION_KEY_FILE
    if _write_new_key(encryption, bytes(PrivateKey.generate())):
        created.append(encryption)
    signing = keys_dir / SIGNING_KEY_FILE
    if _write_new_key(signing, coincurve.PrivateKey().secret):
        created.append(signing)
    return created


def x25519_did_key(public_key: bytes) -> str:
    return "did:key:" + bytes_to_multibase("z", _X25519_PUB_MULTICODEC + public_key)


def x25519_from_did_key(did_key: str) -> bytes:
    raw = multibase_to_bytes(did_key.removeprefix("did:key:"))
    if not raw.startswith(_X25519_PUB_MULTICODEC) or len(raw) != 34:
        raise KeyFileError(f"{did_key!r} is not an X25519 did:key")
    return raw[2:]


@dataclass(frozen=True)
class RunnerKeys:
    encryption: PrivateKey
    signing: SigningKey

    @classmethod
    def load(cls, keys_dir: Path) -> "RunnerKeys":
        return cls(
            encryption=PrivateKey(_read_key(keys_dir / ENCRYPTION_KEY_FILE)),
            signing=SigningKey(_read_key(keys_dir / SIGNING_KEY_FILE), "secp256k1"),
        )

    @property
    def encryption_did_key(self) -> str:
        return x25519_did_key(bytes(self.encryption.public_key))

    @property
    def signing_did_key(self) -> str:
        return self.signing.did_key()

    def open_sealed(self, box: bytes) -> bytes:
        """Open a libsodium sealed box addressed to this runner (raises nacl CryptoError)."""
        return SealedBox(self.encryption).decrypt(box)

    def sign(self, message: bytes) -> bytes:
        """ECDSA over SHA-256, compact r‖s, low-S: the atproto signature convention."""
        return self.signing.sign(message)
