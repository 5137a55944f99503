"""The authority of a bundle address (`at://<authority>/…`, `/b/<authority>/…`): a DID or a handle.

Handles are checked for syntax before anything goes on the network (an IP address or an
internal name is not a handle), and handles that did not resolve are remembered for a
minute, so a stream of requests for one bogus handle costs one lookup, not one each.
"""

from __future__ import annotations

import re
import time

from reactor.api.context import ApiContext
from reactor.api.errors import bundle_not_found, invalid_request
from reactor.identity import IdentityError

_DID = re.compile(r"did:(plc|web):[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_HANDLE = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
# https://atproto.com/specs/handle#additional-non-syntax-restrictions (".test" stays usable for test networks)
_DISALLOWED_TLDS = {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"}
NEGATIVE_TTL_S = 60.0
NEGATIVE_MAX = 10_000


async def resolve_authority(ctx: ApiContext, authority: str) -> str:
    """A DID as is; a handle through the runner's resolver (confirmed both ways) → its DID."""
    if authority.startswith("did:"):
        if len(authority) > 2048 or not _DID.fullmatch(authority):
            raise invalid_request(f"{authority[:80]!r} is not a did:plc or did:web DID")
        return authority
    handle = authority.lower().removeprefix("@")
    if len(handle) > 253 or not _HANDLE.fullmatch(handle) or handle.rsplit(".", 1)[-1] in _DISALLOWED_TLDS:
        raise invalid_request(f"{authority[:80]!r} is neither a DID nor a valid handle")
    now = time.monotonic()
    failed = ctx.unresolvable.get(handle)
    if failed is not None and now - failed[0] < NEGATIVE_TTL_S:
        raise bundle_not_found(failed[1])
    try:
        return await ctx.identity.resolve_handle(handle)
    except IdentityError as error:
        if len(ctx.unresolvable) >= NEGATIVE_MAX:
            ctx.unresolvable.clear()
        ctx.unresolvable[handle] = (now, str(error))
        raise bundle_not_found(str(error)) from None
