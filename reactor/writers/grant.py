"""Writing results into the invoking author's own repo, with the app password they granted us.

The author publishes `dev.atrun.grant/<runner DID>` whose box (sealed to our
encryption key) holds `{"identifier", "password"}`. The box is opened only to
log in; afterwards just the session tokens stay in memory. The grant is looked
at again every few minutes, so deleting it stops us even while a session lives.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import structlog
from nacl.exceptions import CryptoError
from pydantic import ValidationError

from reactor.identity import IdentityError, IdentityResolver
from reactor.keys import RunnerKeys
from reactor.records import GRANT_NSID, Grant
from reactor.writers.base import NoGrant, TransientWriteError, WriteError, as_write_error
from reactor.writers.repo import RecordView, create_once, get_record
from reactor.writers.session import AuthSession, Login, LoginRejected
from reactor.xrpc import XrpcClient, XrpcError

log = structlog.get_logger(__name__)


@dataclass
class _AuthorSession:
    pds: str
    session: AuthSession = field(init=False)
    grant_cid: str | None = None
    checked_at: float = 0.0


class GrantWriter:
    target = "author"

    def __init__(self, xrpc: XrpcClient, identity: IdentityResolver, keys: RunnerKeys, runner_did: str,
                 *, recheck_grant_s: float = 300.0) -> None:
        self._xrpc = xrpc
        self._identity = identity
        self._keys = keys
        self._runner_did = runner_did
        self._recheck_s = recheck_grant_s
        self._sessions: dict[str, _AuthorSession] = {}

    async def write(self, author: str, collection: str, rkey: str | None, record: dict[str, Any]) -> str:
        if rkey is None:
            raise WriteError("a result in the author's repo needs the invocation's record key")
        try:
            state = await self._session(author)
            return await create_once(state.session, self._xrpc, collection, rkey, record,
                                     signing_did_key=self._keys.signing_did_key)
        except LoginRejected as error:
            self._sessions.pop(author, None)
            raise NoGrant(f"the author's PDS rejected the granted credentials: {error}") from None
        except NoGrant:
            self._sessions.pop(author, None)
            raise
        except (XrpcError, httpx.HTTPError, IdentityError) as error:
            raise as_write_error(error, f"writing to {author}'s repo") from None

    def forget(self, author: str) -> None:
        self._sessions.pop(author, None)

    async def _session(self, author: str) -> _AuthorSession:
        identity = await self._identity.resolve(author)
        if not identity.pds:
            raise TransientWriteError(f"{author} has no PDS endpoint")
        state = self._sessions.get(author)
        if state is not None and state.pds != identity.pds:
            state = None  # the author moved PDS: log in at the new one
        if state is None:
            state = _AuthorSession(pds=identity.pds)
            state.session = AuthSession(self._xrpc, identity.pds, partial(self._credentials, author, state),
                                        expect_did=author)
            self._sessions[author] = state
        elif time.time() - state.checked_at > self._recheck_s:
            grant = await self._fetch_grant(author, state.pds)
            if grant.cid != state.grant_cid:
                state.session.forget()  # replaced grant: log in with the new credentials
            state.checked_at = time.time()
        return state

    async def _credentials(self, author: str, state: _AuthorSession) -> Login:
        grant = await self._fetch_grant(author, state.pds)
        state.grant_cid, state.checked_at = grant.cid, time.time()
        return self._open(grant)

    async def _fetch_grant(self, author: str, pds: str) -> RecordView:
        found = await get_record(self._xrpc, pds, author, GRANT_NSID, self._runner_did)
        if found is None:
            raise NoGrant(f"no {GRANT_NSID}/{self._runner_did} record in {author}'s repo")
        return found

    def _open(self, found: RecordView) -> Login:
        try:
            grant = Grant.model_validate(found.value)
        except ValidationError:
            raise NoGrant(f"{found.uri} is not a valid {GRANT_NSID} record") from None
        if grant.runner != self._runner_did:
            raise NoGrant(f"{found.uri} names runner {grant.runner}, not this runner")
        try:
            plain = json.loads(self._keys.open_sealed(grant.box).decode("utf-8"))
        except (CryptoError, ValueError, TypeError):
            raise NoGrant(f"{found.uri}: box does not open with this runner's encryption key") from None
        if not (isinstance(plain, dict) and isinstance(plain.get("identifier"), str)
                and isinstance(plain.get("password"), str)):
            raise NoGrant(f"{found.uri}: box does not hold {{identifier, password}} strings")
        return Login(identifier=plain["identifier"], password=plain["password"])
