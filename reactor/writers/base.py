"""The result-writer interface and the errors that tell the outbox what to do next.

`NoGrant` means "this target will not take the record" (write elsewhere), a
`TransientWriteError` means "same target, later". Messages are safe to log:
they never carry a password, token or secret.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from reactor.identity import IdentityError
from reactor.xrpc import XrpcError

AUTH_TOKEN_ERRORS = frozenset({"ExpiredToken", "InvalidToken", "AuthenticationRequired"})


class WriteError(Exception):
    """The record cannot be written to this target (a permanent refusal)."""


class NoGrant(WriteError):
    """The author has not (validly) granted this runner write access to their repo."""


class RecordConflict(WriteError):
    """Another record, not this runner's result for the same invocation, holds the record key."""


class TransientWriteError(WriteError):
    """PDS down, 5xx, rate limit or network trouble: retry the same target later."""


class ResultWriter(Protocol):
    """Writes one record into some repo; implementations: grant session, runner repo (and later OAuth)."""

    target: str  # metrics label: "author" | "runner"

    async def write(self, author: str, collection: str, rkey: str | None, record: dict[str, Any]) -> str:
        """Create the record (idempotently) and return the at-uri written."""
        ...


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (httpx.TransportError, IdentityError)):
        return True
    if isinstance(error, XrpcError):
        return error.status >= 500 or error.status in (408, 429)
    return False


def describe(error: BaseException, limit: int = 200) -> str:
    """One short line about a network error (server text is hostile: it is cut, never trusted)."""
    text = str(error).replace("\n", " ")[:limit]
    return text if isinstance(error, (XrpcError, IdentityError)) else f"{type(error).__name__}: {text}"


def as_write_error(error: BaseException, what: str) -> WriteError:
    """Map a network-layer error to transient vs. permanent."""
    kind = TransientWriteError if is_transient(error) else WriteError
    return kind(f"{what}: {describe(error)}")
