"""A password session on one PDS, kept in memory and refreshed before it expires.

The password is asked for (`credentials()`) only when a new session is needed and
dropped right after `createSession`; only the JWTs stay in memory. Token errors
on a call lead to one refresh (or a fresh login) and one retry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from reactor.sealed import Scrubber
from reactor.writers.base import AUTH_TOKEN_ERRORS
from reactor.xrpc import XrpcClient, XrpcError

REFRESH_MARGIN_S = 60.0


@dataclass(frozen=True)
class Login:
    identifier: str
    password: str = field(repr=False)


class LoginRejected(Exception):
    """The PDS refused the credentials (4xx from createSession), or they name another account."""


@dataclass
class _Tokens:
    did: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)
    access_expires_at: float | None

    def expiring(self, now: float) -> bool:
        return self.access_expires_at is not None and self.access_expires_at - now < REFRESH_MARGIN_S


def jwt_claims(token: str) -> dict[str, Any]:
    """Unverified JWT claims: only used to schedule refreshes and as a guard, never to trust anything."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _tokens(body: Any) -> _Tokens:
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("did", "accessJwt", "refreshJwt")):
        raise XrpcError(502, "BadSession", "session response lacks did/accessJwt/refreshJwt")
    exp = jwt_claims(body["accessJwt"]).get("exp")
    return _Tokens(body["did"], body["accessJwt"], body["refreshJwt"],
                   float(exp) if isinstance(exp, (int, float)) else None)


class AuthSession:
    def __init__(self, xrpc: XrpcClient, service: str, credentials: Callable[[], Awaitable[Login]],
                 *, expect_did: str | None = None) -> None:
        self.service = service.rstrip("/")
        self._xrpc = xrpc
        self._credentials = credentials
        self._expect_did = expect_did
        self._tokens: _Tokens | None = None
        self._lock = asyncio.Lock()

    @property
    def did(self) -> str | None:
        return self._tokens.did if self._tokens else None

    async def ensure(self) -> str:
        """Log in or refresh as needed; returns the session's DID."""
        async with self._lock:
            if self._tokens is None:
                await self._login()
            elif self._tokens.expiring(time.time()):
                await self._refresh_or_login()
            assert self._tokens is not None
            return self._tokens.did

    async def procedure(self, nsid: str, body: Any) -> Any:
        await self.ensure()
        assert self._tokens is not None
        token = self._tokens.access
        try:
            return await self._xrpc.procedure(self.service, nsid, body, token=token)
        except XrpcError as error:
            if error.error not in AUTH_TOKEN_ERRORS:
                raise
        async with self._lock:
            if self._tokens is None or self._tokens.access == token:
                await self._refresh_or_login()
            assert self._tokens is not None
            token = self._tokens.access
        return await self._xrpc.procedure(self.service, nsid, body, token=token)

    def forget(self) -> None:
        self._tokens = None

    async def _refresh_or_login(self) -> None:
        if self._tokens is not None:
            try:
                out = await self._xrpc.procedure(self.service, "com.atproto.server.refreshSession",
                                                 token=self._tokens.refresh)
                self._tokens = self._checked(_tokens(out))
                return
            except XrpcError as error:
                if error.status >= 500 or error.status == 429:
                    raise
        await self._login()

    async def _login(self) -> None:
        self._tokens = None
        login = await self._credentials()
        scrub = Scrubber([login.password])
        try:
            out = await self._xrpc.procedure(self.service, "com.atproto.server.createSession",
                                             {"identifier": login.identifier, "password": login.password})
        except XrpcError as error:
            # A hostile PDS could echo the password back: scrub whatever it says.
            reason = scrub(f"{error.error} ({error.status})")[:120]
            if 400 <= error.status < 500 and error.status != 429:
                raise LoginRejected(f"createSession refused: {reason}") from None
            raise XrpcError(error.status, scrub(error.error)[:64], scrub(error.message)[:200]) from None
        finally:
            del login
        self._tokens = self._checked(_tokens(out))

    def _checked(self, tokens: _Tokens) -> _Tokens:
        if self._expect_did is not None and tokens.did != self._expect_did:
            raise LoginRejected(f"credentials log in as {tokens.did[:100]}, not {self._expect_did}")
        return tokens
