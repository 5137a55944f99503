"""Bundle secrets: libsodium sealed boxes to the runner's X25519 key, and scrubbing them from text.

A bundle carries one `secrets` entry per runner; only the runner holding the
matching private key can open its box. Opened values live in memory only, so
every error here is phrased without the plaintext, and `Scrubber` removes the
values from anything the bundle prints before it reaches logs or a result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from reactor.keys import RunnerKeys, x25519_from_did_key
from reactor.records import Bundle

REDACTED = "[redacted]"
MIN_SCRUB_LENGTH = 4
MAX_SECRETS = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class SecretsError(Exception):
    """A secrets box that cannot be used. The message never contains secret material."""


def seal(encryption_did_key: str, plaintext: bytes) -> bytes:
    """`crypto_box_seal` to an X25519 did:key (raises ValueError for any other key)."""
    try:
        public = PublicKey(x25519_from_did_key(encryption_did_key))
    except Exception:  # noqa: BLE001 - malformed multibase raises many kinds
        raise ValueError(f"{encryption_did_key[:80]!r} is not an X25519 did:key") from None
    return SealedBox(public).encrypt(plaintext)


def seal_json(encryption_did_key: str, value: Any) -> bytes:
    """Seal the compact UTF-8 JSON of `value` (what grants and secrets boxes hold)."""
    return seal(encryption_did_key, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _check_values(values: Mapping[str, Any]) -> dict[str, str]:
    if len(values) > MAX_SECRETS:
        raise SecretsError(f"too many secrets ({len(values)} > {MAX_SECRETS})")
    for name, value in values.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            # The name itself is not echoed: an author may have pasted a value in its place.
            raise SecretsError("secret names must be environment variable names ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str):
            raise SecretsError(f"secret {name} must be a string, not {type(value).__name__}")
    return dict(values)


def seal_secrets(encryption_did_key: str, values: Mapping[str, str]) -> bytes:
    """The `box` of a bundle `secrets` entry for the runner owning `encryption_did_key`."""
    return seal_json(encryption_did_key, _check_values(values))


def open_secrets(bundle: Bundle, runner_did: str, keys: RunnerKeys) -> dict[str, str]:
    """NAME → value from the bundle's entry for `runner_did`; {} when the bundle has none for us."""
    entry = bundle.secret_for(runner_did)
    if entry is None:
        return {}
    where = f"bundle {bundle.name!r}: secrets box for {runner_did}"
    try:
        plaintext = keys.open_sealed(entry.box)
    except (CryptoError, ValueError, TypeError):
        raise SecretsError(f"{where} does not open with this runner's encryption key") from None
    try:
        values = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SecretsError(f"{where} does not hold UTF-8 JSON") from None
    if not isinstance(values, dict):
        raise SecretsError(f"{where} holds JSON {type(values).__name__}, expected an object of strings")
    try:
        return _check_values(values)
    except SecretsError as error:
        raise SecretsError(f"{where}: {error}") from None


class Scrubber:
    """Replaces every secret value (of at least 4 characters) in a text with `[redacted]`.

    The JSON-escaped form of each value is scrubbed too, since bundles often print
    JSON. Longer values are matched first so a value containing another is not
    left half visible.
    """

    def __init__(self, values: Iterable[str] | Mapping[str, str] = ()) -> None:
        items = values.values() if isinstance(values, Mapping) else values
        needles: set[str] = set()
        for value in items:
            if isinstance(value, str) and len(value) >= MIN_SCRUB_LENGTH:
                needles.add(value)
                needles.add(json.dumps(value, ensure_ascii=False)[1:-1])
                needles.add(json.dumps(value)[1:-1])
        ordered = sorted(needles, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        return self.scrub(text)

    def scrub(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None and text else text

    def __repr__(self) -> str:
        return "Scrubber(<redacted>)"
