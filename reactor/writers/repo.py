"""Reading one record and creating one exactly once.

The reference PDS answers `createRecord` at an occupied record key with a bare
`500 InternalServerError` (no dedicated error name), indistinguishable from a
real outage. So after any failed create we look at the key: a result of ours
for the same invocation there means the earlier attempt landed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Mapping

from atproto_crypto.verify import verify_signature

from reactor.records import signing_payload
from reactor.writers.base import RecordConflict
from reactor.writers.session import AuthSession
from reactor.xrpc import XrpcClient, XrpcError

_ABSENT_ERRORS = frozenset({"RecordNotFound", "RepoNotFound"})


@dataclass(frozen=True)
class RecordView:
    uri: str
    cid: str
    value: dict[str, Any]


async def query(xrpc: XrpcClient, service: str, nsid: str, params: dict[str, Any]) -> Any:
    return await xrpc.query(service, nsid, params)


def at_uri(repo: str, collection: str, rkey: str) -> str:
    return f"at://{repo}/{collection}/{rkey}"


async def get_record(xrpc: XrpcClient, service: str, repo: str, collection: str, rkey: str) -> RecordView | None:
    """`com.atproto.repo.getRecord`; None when the record (or the whole repo) is not there."""
    try:
        out = await query(xrpc, service, "com.atproto.repo.getRecord",
                          {"repo": repo, "collection": collection, "rkey": rkey})
    except XrpcError as error:
        # Missing repo: 400 InvalidRequest "Could not locate record" on the reference PDS.
        if error.error in _ABSENT_ERRORS or (error.status == 400 and "locate record" in error.message):
            return None
        raise
    if not isinstance(out, dict) or not isinstance(out.get("value"), dict) or not isinstance(out.get("cid"), str):
        raise XrpcError(502, "BadRecord", f"getRecord for {at_uri(repo, collection, rkey)} returned no record")
    return RecordView(uri=at_uri(repo, collection, rkey), cid=out["cid"], value=out["value"])


def is_our_result(existing: Mapping[str, Any], record: Mapping[str, Any], signing_did_key: str) -> bool:
    """Same invocation, same runner, and signed by our key: an earlier write of this result."""
    invocation = existing.get("invocation")
    ours = record.get("invocation")
    if not (isinstance(invocation, dict) and isinstance(ours, dict) and invocation.get("uri") == ours.get("uri")):
        return False
    if existing.get("runner") != record.get("runner"):
        return False
    sig = existing.get("sig")
    if not (isinstance(sig, dict) and isinstance(sig.get("$bytes"), str)):
        return False
    try:
        raw = base64.b64decode(sig["$bytes"] + "=" * (-len(sig["$bytes"]) % 4), validate=True)
        return bool(verify_signature(signing_did_key, signing_payload(existing), raw))
    except Exception:  # noqa: BLE001 - any malformed field means "not ours"
        return False


async def create_once(session: AuthSession, xrpc: XrpcClient, collection: str, rkey: str,
                      record: dict[str, Any], *, signing_did_key: str) -> str:
    """createRecord at `rkey`; an earlier copy of this same result counts as success."""
    did = await session.ensure()
    uri = at_uri(did, collection, rkey)
    try:
        await session.procedure("com.atproto.repo.createRecord",
                                {"repo": did, "collection": collection, "rkey": rkey, "record": record})
        return uri
    except XrpcError as error:
        existing = await get_record(xrpc, session.service, did, collection, rkey)
        if existing is None:
            raise error from None
    if is_our_result(existing.value, record, signing_did_key):
        return uri
    raise RecordConflict(f"{uri} already holds a record that is not this runner's result for the invocation")
