"""Read a request body with a hard cap, before it is all in memory."""

from __future__ import annotations

from starlette.requests import Request

from reactor.api.errors import payload_too_large
from reactor.capped import OverLimit, collect_capped


async def read_capped(request: Request, limit: int) -> bytes:
    try:
        return await collect_capped(request.stream(), limit, request.headers.get("content-length"))
    except OverLimit:
        raise payload_too_large(limit) from None
