"""Per-DID quotas: concurrent executions and invocations per minute.

A sliding one-minute window per DID keeps the arithmetic obvious; over quota
gets 429 with a Retry-After that says when the oldest call leaves the window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from reactor.api.errors import rate_limited


@dataclass(frozen=True)
class QuotaLimits:
    concurrent: int = 4
    per_minute: int = 600


@dataclass
class Quotas:
    default: QuotaLimits = field(default_factory=QuotaLimits)
    per_did: dict[str, QuotaLimits] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)
    _calls: dict[str, deque[float]] = field(default_factory=dict)
    _next_sweep: float = 0.0

    def limits_for(self, did: str) -> QuotaLimits:
        return self.per_did.get(did, self.default)

    @asynccontextmanager
    async def slot(self, did: str) -> AsyncIterator[None]:
        limits = self.limits_for(did)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._calls.setdefault(did, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= limits.per_minute:
            raise rate_limited(f"{did} is over {limits.per_minute} invocations per minute",
                               math.ceil(window[0] + 60 - now))
        if self._running.get(did, 0) >= limits.concurrent:
            raise rate_limited(f"{did} already has {limits.concurrent} executions running", 1)
        window.append(now)
        self._running[did] = self._running.get(did, 0) + 1
        try:
            yield
        finally:
            remaining = self._running[did] - 1
            if remaining:
                self._running[did] = remaining
            else:
                del self._running[did]

    def _sweep(self, now: float) -> None:
        """Forget DIDs whose window emptied, so one-off callers do not accumulate (once a minute)."""
        self._calls = {did: window for did, window in self._calls.items() if window and window[-1] > now - 60}
        self._next_sweep = now + 60
