"""Delivers queued results: the author's repo when they granted us access, else the runner's own.

Network writes happen outside any store transaction; only the bookkeeping
(written / retry later) is transactional. Each item is tried once per pass;
transient failures back off exponentially up to a minute, and a result with
nowhere to go (no grant, no runner repo configured) is retried slowly.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from reactor import metrics
from reactor.store import Store, invocations, outbox
from reactor.store.outbox import OutboxItem
from reactor.writers.base import ResultWriter, TransientWriteError, WriteError

log = structlog.get_logger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
NO_TARGET_RETRY_S = 300.0
POLL_S = 1.0
BATCH = 50
CONCURRENCY = 8


class _NoTarget(Exception):
    """The author's repo refused and no runner repo is configured."""


def backoff(attempts: int) -> float:
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempts, 16))


class OutboxDrain:
    def __init__(self, store: Store, grant_writer: ResultWriter, runner_writer: ResultWriter | None,
                 *, poll_s: float = POLL_S) -> None:
        self._store = store
        self._grant = grant_writer
        self._runner = runner_writer
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def kick(self) -> None:
        """A result was queued: drain now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                written = await self.drain_once()
            except Exception:  # noqa: BLE001 - a store hiccup must not end delivery for good
                log.exception("outbox.drain_failed")
                written = 0
            if written:
                continue  # more may be due already
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    async def drain_once(self) -> int:
        """One pass over the items due now; returns how many were written."""
        async with self._pass:
            async with self._store.read() as conn:
                items = await outbox.due(conn, limit=BATCH)
            results = await asyncio.gather(*(self._deliver(item) for item in items))
            return sum(results)

    async def _deliver(self, item: OutboxItem) -> bool:
        async with self._slots:
            with structlog.contextvars.bound_contextvars(invocation=item.invocation_uri):
                return await self._deliver_one(item)

    async def _deliver_one(self, item: OutboxItem) -> bool:
        try:
            uri, target = await self._write(item)
        except TransientWriteError as error:
            await self._retry(item, str(error), backoff(item.attempts))
            log.warning("outbox.retry", error=str(error), attempts=item.attempts + 1)
            return False
        except _NoTarget as error:
            await self._retry(item, str(error), NO_TARGET_RETRY_S)
            log.warning("outbox.no_target", reason=str(error), retry_in_s=NO_TARGET_RETRY_S)
            return False
        except Exception as error:  # noqa: BLE001 - a refusal or bug: keep the result, try much later
            message = str(error) if isinstance(error, WriteError) else f"{type(error).__name__}: {error}"
            await self._retry(item, message, NO_TARGET_RETRY_S)
            log.error("outbox.write_refused", error=message[:300], attempts=item.attempts + 1)
            return False
        async with self._store.transaction() as conn:
            await outbox.mark_written(conn, item.invocation_uri, uri)
            await invocations.set_result_uri(conn, item.invocation_uri, uri)
        metrics.results_written.labels(target=target).inc()
        log.info("outbox.written", uri=uri, target=target)
        return True

    async def _write(self, item: OutboxItem) -> tuple[str, str]:
        try:
            return await self._grant.write(item.repo, item.collection, item.rkey, item.record), "author"
        except TransientWriteError:
            raise
        except WriteError as why:
            if self._runner is None:
                raise _NoTarget(f"{why}; no runner repo configured ([atproto] pds_url/identifier/password)") \
                    from None
            log.info("outbox.fallback_to_runner_repo", author=item.repo, reason=str(why))
        return await self._runner.write(item.repo, item.collection, item.rkey, item.record), "runner"

    async def _retry(self, item: OutboxItem, error: str, delay_s: float) -> None:
        metrics.outbox_failures.inc()
        async with self._store.transaction() as conn:
            await outbox.retry_later(conn, item.invocation_uri, error, delay_s)
