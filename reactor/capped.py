"""Collect a streamed body with a hard size cap, refusing before it is all in memory.

Used on both sides of the runner: HTTP requests it serves and XRPC responses it fetches.
"""

from __future__ import annotations

from typing import AsyncIterable


class OverLimit(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit


async def collect_capped(chunks: AsyncIterable[bytes], limit: int, declared_length: str | None = None) -> bytes:
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise OverLimit(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise OverLimit(limit)
        parts.append(chunk)
    return b"".join(parts)
