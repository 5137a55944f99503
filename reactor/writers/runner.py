"""Writing results (and the runner declaration) into the runner's own repo.

Idempotency without a lookup table: the record key is a TID derived from the
result itself — its `createdAt` (fixed when the result was built and stored in
the outbox) plus a hash of the invocation URI for the sub-millisecond digits
and the clock id. A retry after a crash or timeout computes the same key, and
`create_once` recognises the copy already there. Keys still sort by time like
ordinary TIDs. Should another record ever hold the key, the next key in the
same deterministic sequence is tried.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping

import httpx
from pydantic import SecretStr

from reactor.config import Config
from reactor.keys import RunnerKeys
from reactor.writers.base import RecordConflict, WriteError, as_write_error
from reactor.writers.repo import RecordView, at_uri, create_once, get_record
from reactor.writers.session import AuthSession, Login, LoginRejected
from reactor.xrpc import XrpcClient, XrpcError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
KEY_PROBES = 4


def _tid(timestamp_us: int, clock_id: int) -> str:
    """13 sortable base32 chars of (53-bit microseconds << 10 | 10-bit clock id)."""
    value = (timestamp_us << 10) | clock_id
    return "".join(_TID_ALPHABET[(value >> shift) & 31] for shift in range(60, -1, -5))


def result_tid(record: Mapping[str, Any], probe: int = 0) -> str:
    """A TID for `record` that is the same every time it is computed."""
    invocation = record.get("invocation")
    created = record.get("createdAt")
    if not (isinstance(invocation, Mapping) and isinstance(invocation.get("uri"), str) and isinstance(created, str)):
        raise ValueError("a result record needs invocation.uri and createdAt")
    when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    millis = (when - _EPOCH) // (datetime.resolution * 1000)
    digest = int.from_bytes(hashlib.sha256(f"{invocation['uri']}\n{probe}".encode()).digest()[:8], "big")
    micros = millis * 1000 + digest % 1000
    if not 0 <= micros < 1 << 53:
        raise ValueError("result createdAt is out of the TID range")
    return _tid(micros, (digest >> 10) & 0x3FF)


class RunnerRepoWriter:
    target = "runner"

    def __init__(self, xrpc: XrpcClient, pds_url: str, identifier: str, password: SecretStr | str,
                 keys: RunnerKeys, *, runner_did: str | None = None) -> None:
        self._xrpc = xrpc
        self._identifier = identifier
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self._keys = keys
        self.session = AuthSession(xrpc, pds_url, self._credentials, expect_did=runner_did)

    @classmethod
    def from_config(cls, config: Config, xrpc: XrpcClient, keys: RunnerKeys) -> "RunnerRepoWriter | None":
        """None unless `[atproto] pds_url`, `identifier` and `password` are all set."""
        at = config.atproto
        if not (at.pds_url and at.identifier and at.password):
            return None
        return cls(xrpc, at.pds_url, at.identifier, at.password, keys, runner_did=config.did)

    async def _credentials(self) -> Login:
        return Login(self._identifier, self._password.get_secret_value())

    async def ensure(self) -> str:
        """Log in if needed; the runner repo's DID."""
        return await self._guard(self.session.ensure(), "logging in to the runner's PDS")

    async def write(self, author: str, collection: str, rkey: str | None, record: dict[str, Any]) -> str:
        """`author` and `rkey` name where the result was meant to go; here the key is `result_tid`."""
        for probe in range(KEY_PROBES):
            try:
                return await self._guard(
                    create_once(self.session, self._xrpc, collection, result_tid(record, probe), record,
                                signing_did_key=self._keys.signing_did_key),
                    "writing to the runner's repo")
            except RecordConflict:
                continue
        raise WriteError(f"{KEY_PROBES} candidate record keys in the runner's repo are taken by other records")

    async def get_record(self, collection: str, rkey: str) -> RecordView | None:
        did = await self.ensure()
        return await self._guard(get_record(self._xrpc, self.session.service, did, collection, rkey),
                                 "reading the runner's repo")

    async def put_record(self, collection: str, rkey: str, record: dict[str, Any]) -> str:
        did = await self.ensure()
        await self._guard(self.session.procedure("com.atproto.repo.putRecord",
                                                 {"repo": did, "collection": collection, "rkey": rkey,
                                                  "record": record}),
                          "writing to the runner's repo")
        return at_uri(did, collection, rkey)

    @staticmethod
    async def _guard(call: Any, what: str) -> Any:
        try:
            return await call
        except LoginRejected as error:
            raise WriteError(f"{what}: the runner account's credentials were rejected: {error}") from None
        except (XrpcError, httpx.HTTPError) as error:
            raise as_write_error(error, what) from None
