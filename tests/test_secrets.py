"""Sealed bundle secrets: round trip, hostile boxes, and scrubbing values out of text."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey, SealedBox

from reactor.keys import RunnerKeys, ensure_keys, x25519_did_key
from reactor.records import Bundle
from reactor.sealed import REDACTED, Scrubber, SecretsError, open_secrets, seal, seal_secrets

RUNNER = "did:plc:runnerrunnerrunnerrunner"
OTHER = "did:plc:otherotherotherotherothe"
VALUES = {"API_TOKEN": "tok-7f3a9c2e-very-secret", "DB_PASSWORD": 'p"a\\ss\nword'}


def _cid(data: bytes) -> str:
    raw = b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def _bundle(*entries: tuple[str, bytes]) -> Bundle:
    return Bundle.model_validate({
        "$type": "dev.atrun.bundle", "name": "hello", "createdAt": "2025-01-01T00:00:00.000Z",
        "code": {"$type": "blob", "ref": {"$link": _cid(b"code")}, "mimeType": "application/javascript", "size": 4},
        "secrets": [{"runner": runner, "box": {"$bytes": base64.b64encode(box).decode()}} for runner, box in entries],
    })


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> RunnerKeys:
    path: Path = tmp_path_factory.mktemp("keys")
    ensure_keys(path)
    return RunnerKeys.load(path)


def _assert_no_secret(error: Exception, *values: str) -> None:
    text = f"{error!s} {error!r} {error.__cause__!r}"
    for value in values:
        assert value not in text


def test_round_trip_picks_our_entry(keys: RunnerKeys) -> None:
    other_key = x25519_did_key(bytes(PrivateKey.generate().public_key))
    bundle = _bundle((OTHER, seal_secrets(other_key, {"X": "not for us"})),
                     (RUNNER, seal_secrets(keys.encryption_did_key, VALUES)))
    assert open_secrets(bundle, RUNNER, keys) == VALUES


def test_no_entry_for_us_is_empty(keys: RunnerKeys) -> None:
    assert open_secrets(_bundle(), RUNNER, keys) == {}
    other_key = x25519_did_key(bytes(PrivateKey.generate().public_key))
    assert open_secrets(_bundle((OTHER, seal_secrets(other_key, VALUES))), RUNNER, keys) == {}


@pytest.mark.parametrize("plaintext, message", [
    (None, "does not open"),  # sealed to someone else
    (b"\xff\xfe not utf-8", "UTF-8 JSON"),
    (b"{not json", "UTF-8 JSON"),
    (json.dumps(["tok-7f3a9c2e-very-secret"]).encode(), "expected an object"),
    (json.dumps({"API_TOKEN": 12345678}).encode(), "must be a string"),
    (json.dumps({"tok-7f3a9c2e-very-secret": "x"}).encode(), "environment variable names"),
])
def test_bad_boxes_fail_without_leaking(keys: RunnerKeys, plaintext: bytes | None, message: str) -> None:
    if plaintext is None:
        stranger = x25519_did_key(bytes(PrivateKey.generate().public_key))
        box = seal_secrets(stranger, VALUES)
    else:
        box = seal(keys.encryption_did_key, plaintext)
    with pytest.raises(SecretsError, match=message) as caught:
        open_secrets(_bundle((RUNNER, box)), RUNNER, keys)
    _assert_no_secret(caught.value, "tok-7f3a9c2e-very-secret", "12345678", *VALUES.values())
    assert caught.value.__cause__ is None


def test_garbage_box_is_a_secrets_error(keys: RunnerKeys) -> None:
    for box in (b"", b"x" * 10, b"\x00" * 200):
        with pytest.raises(SecretsError, match="does not open"):
            open_secrets(_bundle((RUNNER, box)), RUNNER, keys)


def test_seal_is_a_libsodium_sealed_box(keys: RunnerKeys) -> None:
    box = seal_secrets(keys.encryption_did_key, {"A": "b"})
    assert json.loads(SealedBox(keys.encryption).decrypt(box)) == {"A": "b"}
    with pytest.raises(ValueError, match="X25519"):
        seal_secrets(keys.signing_did_key, {"A": "b"})
    with pytest.raises(SecretsError):
        seal_secrets(keys.encryption_did_key, {"A": 1})  # type: ignore[dict-item]


def test_scrubber_redacts_values_and_their_json_form() -> None:
    scrub = Scrubber(VALUES)
    text = (f"token={VALUES['API_TOKEN']} pw={VALUES['DB_PASSWORD']} "
            f"json={json.dumps({'pw': VALUES['DB_PASSWORD']})}")
    out = scrub(text)
    assert VALUES["API_TOKEN"] not in out
    assert VALUES["DB_PASSWORD"] not in out
    assert json.dumps(VALUES["DB_PASSWORD"])[1:-1] not in out
    assert out.count(REDACTED) == 3
    assert "token=" in out and "json=" in out
    assert "secret" not in repr(scrub)


def test_scrubber_longest_first_and_short_values_kept() -> None:
    scrub = Scrubber(["abcd", "abcdefgh", "xyz"])
    assert scrub("abcdefgh abcd xyz") == f"{REDACTED} {REDACTED} xyz"
    assert not Scrubber(["ab", ""])
    assert Scrubber([])("anything") == "anything"


def test_scrubber_handles_regex_metacharacters() -> None:
    value: Any = "a.*b+(c)?[d]"
    assert Scrubber([value])(f"x {value} aXXb") == f"x {REDACTED} aXXb"
