"""ATProto inter-service JWTs: `iss` caller, `aud` this runner, `lxm` the method, short `exp`.

Signatures are checked against the caller's DID document key through the SDK,
which refreshes the key once on a mismatch (key rotation). A `jti` is accepted
once while its token is valid, so a captured token cannot be replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from atproto_server.auth.jwt import parse_jwt, verify_jwt_async
from atproto_server.exceptions import InvalidTokenError, TokenExpiredSignatureError

from reactor.api.errors import XrpcHttpError, auth_missing, invalid_token
from reactor.identity import IdentityError, IdentityResolver

MAX_LIFETIME_S = 300
ALLOWED_ALGS = {"ES256K", "ES256"}
SESSION_TOKEN_TYPES = {"at+jwt", "refresh+jwt", "dpop+jwt"}


@dataclass(frozen=True)
class Caller:
    did: str
    jti: str | None


class ReplayCache:
    """jti → expiry; entries are dropped once their token would be expired anyway."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: dict[str, float] = {}
        self._max = max_entries

    def claim(self, jti: str, exp: float, now: float) -> bool:
        if len(self._seen) >= self._max:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        if self._seen.get(jti, 0) > now:
            return False
        self._seen[jti] = exp
        return True


class ServiceAuth:
    def __init__(self, identity: IdentityResolver, runner_did: str) -> None:
        self._identity = identity
        self._runner_did = runner_did
        self._replays = ReplayCache()

    async def _key(self, did: str, force: bool) -> str:
        try:
            identity = await self._identity.resolve(did.split("#", 1)[0], force=force)
        except IdentityError as error:
            raise invalid_token(f"cannot resolve the token issuer: {error}") from None
        return identity.signing_key or ""

    async def verify(self, authorization: str | None, lxm: str) -> Caller:
        if not authorization:
            raise auth_missing()
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise auth_missing("expected `Authorization: Bearer <service-auth JWT>`")
        token = token.strip()
        try:
            _, _, header, _ = parse_jwt(token)
        except InvalidTokenError as error:
            raise invalid_token(f"malformed token: {error}") from None
        except Exception:  # noqa: BLE001 - hostile input can break the parser in many ways
            raise invalid_token("malformed token") from None
        if header.get("alg") not in ALLOWED_ALGS or header.get("typ") in SESSION_TOKEN_TYPES:
            raise invalid_token("not an inter-service token (alg must be ES256K/ES256, no session tokens)")
        try:
            payload = await verify_jwt_async(token, self._key, self._runner_did)
        except TokenExpiredSignatureError:
            raise invalid_token("token has expired") from None
        except XrpcHttpError:
            raise
        except InvalidTokenError as error:
            raise invalid_token(str(error) or type(error).__name__) from None
        except (ValueError, TypeError, json.JSONDecodeError):
            raise invalid_token("malformed token") from None
        now = time.time()
        extra = payload.model_extra or {}
        if extra.get("lxm") != lxm:
            raise invalid_token(f"token is not for {lxm} (lxm={extra.get('lxm')!r})")
        if payload.exp is None or payload.exp > now + MAX_LIFETIME_S + 5:
            raise invalid_token(f"token must expire within {MAX_LIFETIME_S} s")
        if payload.jti is not None and not self._replays.claim(payload.jti, float(payload.exp), now):
            raise invalid_token("token was already used (jti replay)")
        return Caller(did=(payload.iss or "").split("#", 1)[0], jti=payload.jti)
