"""ATProto inter-service JWTs: `iss` caller, `aud` this runner, `lxm` the method, short `exp`.

The token is parsed and its claims decoded by the SDK (`atproto_server.auth.jwt`); the
claims are checked here the way the SDK's `verify_jwt` does (exp, iat, aud, iss), plus
what inter-service auth adds: `lxm` must name the method, `exp` at most 5 minutes ahead,
`jti` present and accepted once while the token is valid (a captured token cannot be
replayed). The signature is checked against the #atproto key of the issuer's DID document
(resolved and cached by the runner's IdentityResolver) with libsecp256k1 (~25 µs instead of
~300 µs through OpenSSL on the event loop; same compact low-S rule as the SDK). Like the SDK,
a failed check refreshes the key once (key rotation), but at most every REFRESH_INTERVAL_S
per DID, so forged tokens cannot make the runner hammer the PLC directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from atproto_server.auth.jwt import JwtPayload, decode_jwt_payload, parse_jwt
from atproto_server.exceptions import InvalidTokenError

from reactor.api.errors import auth_missing, forbidden, invalid_token
from reactor.identity import IdentityError, IdentityResolver
from reactor.sync.errors import SyncError
from reactor.sync.keys import KeyCache

log = structlog.get_logger(__name__)

MAX_LIFETIME_S = 300
CLOCK_SKEW_S = 5  # tolerated for a token's `iat` (issuer clock ahead) and its lifetime cap only
ALLOWED_ALGS = {"ES256K", "ES256"}
SESSION_TOKEN_TYPES = {"at+jwt", "refresh+jwt", "dpop+jwt"}
MAX_TOKEN_BYTES = 8192
MAX_JTI_CHARS = 256
REFRESH_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Caller:
    did: str
    jti: str


class ReplayCache:
    """(issuer, jti) → expiry; entries are dropped once their token would be expired anyway.

    Sweeps are amortised: the next sweep happens when the table has doubled since the last
    one, so a burst of valid tokens costs O(1) per claim rather than a full scan each.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._min_sweep = max_entries
        self._next_sweep = max_entries

    def claim(self, key: tuple[str, str], exp: float, now: float) -> bool:
        if len(self._seen) >= self._next_sweep:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._next_sweep = max(self._min_sweep, 2 * len(self._seen))
        if self._seen.get(key, 0) > now:
            return False
        self._seen[key] = exp
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ServiceAuth:
    def __init__(self, identity: IdentityResolver, runner_did: str) -> None:
        self._identity = identity
        self._runner_did = runner_did
        # the DID, or the DID with the service id of its did.json (`did#atrun_runner`), as in appview tokens
        self._audiences = {runner_did, f"{runner_did}#atrun_runner"}
        self._replays = ReplayCache()
        self._keys = KeyCache()
        self._refreshed: dict[str, float] = {}

    async def verify(self, authorization: str | None, lxm: str) -> Caller:
        token = _bearer_token(authorization)
        try:
            raw_payload, signing_input, header, signature = parse_jwt(token)
            payload = decode_jwt_payload(raw_payload)
        except InvalidTokenError as error:
            raise invalid_token(f"malformed token: {error}") from None
        except Exception:  # noqa: BLE001 - hostile input can break the parser in many ways
            raise invalid_token("malformed token") from None
        if header.get("alg") not in ALLOWED_ALGS or header.get("typ") in SESSION_TOKEN_TYPES:
            raise invalid_token("not an inter-service token (alg must be ES256K/ES256, no session tokens)")
        did, jti = self._check_claims(payload, lxm, time.time())
        identity = await self._resolve(did, force=False)
        if not identity.active:
            raise forbidden(f"the caller's account is {identity.status}")
        if not self._signature_ok(identity.signing_key, signing_input, signature) \
                and not await self._retry_with_fresh_key(did, identity.signing_key, signing_input, signature):
            raise invalid_token("token signature does not match the issuer's signing key")
        assert payload.exp is not None
        if not self._replays.claim((did, jti), float(payload.exp), time.time()):
            raise invalid_token("token was already used (jti replay)")
        return Caller(did=did, jti=jti)

    def _check_claims(self, payload: JwtPayload, lxm: str, now: float) -> tuple[str, str]:
        if payload.exp is None:
            raise invalid_token("token has no exp")
        if payload.exp <= now:
            raise invalid_token("token has expired")
        if payload.exp > now + MAX_LIFETIME_S + CLOCK_SKEW_S:
            raise invalid_token(f"token must expire within {MAX_LIFETIME_S} s")
        if payload.iat is not None and payload.iat > now + CLOCK_SKEW_S:
            raise invalid_token("token is not valid yet (iat in the future)")
        if not isinstance(payload.aud, str) or payload.aud not in self._audiences:
            raise invalid_token(f"token audience {_short(payload.aud)} is not this runner ({self._runner_did})")
        got = (payload.model_extra or {}).get("lxm")
        if got != lxm:
            raise invalid_token(f"token is not for {lxm} (lxm={_short(got)})")
        iss = payload.iss
        if not isinstance(iss, str) or not iss.startswith(("did:plc:", "did:web:")) or len(iss) > 2048:
            raise invalid_token("token issuer must be a did:plc or did:web DID")
        jti = payload.jti
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise invalid_token("token has no usable jti (needed to refuse replays)")
        return iss.split("#", 1)[0], jti

    async def _resolve(self, did: str, *, force: bool):  # type: ignore[no-untyped-def]
        try:
            return await self._identity.resolve(did, force=force)
        except IdentityError as error:
            raise invalid_token(f"cannot resolve the token issuer: {error}") from None

    def _signature_ok(self, did_key: str | None, signing_input: bytes, signature: bytes) -> bool:
        if not did_key:
            return False
        try:
            return self._keys.get(did_key).verify(signing_input, signature)
        except SyncError:  # the DID document's key is unusable
            return False

    async def _retry_with_fresh_key(self, did: str, old_key: str | None, signing_input: bytes,
                                    signature: bytes) -> bool:
        """The issuer may have rotated its key: re-resolve once, at most every REFRESH_INTERVAL_S."""
        now = time.monotonic()
        if now - self._refreshed.get(did, -REFRESH_INTERVAL_S) < REFRESH_INTERVAL_S:
            return False
        if len(self._refreshed) > 10_000:
            self._refreshed = {k: v for k, v in self._refreshed.items() if now - v < REFRESH_INTERVAL_S}
        self._refreshed[did] = now
        fresh = await self._resolve(did, force=True)
        if fresh.signing_key == old_key:
            return False
        log.info("auth.key_refreshed", did=did)
        return self._signature_ok(fresh.signing_key, signing_input, signature)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise auth_missing()
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise auth_missing("expected `Authorization: Bearer <service-auth JWT>`")
    if len(token) > MAX_TOKEN_BYTES:
        raise invalid_token("token is too long")
    return token


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
