"""One `com.atproto.sync.subscribeRepos` connection, kept alive with jittered backoff.

Resumes from the cursor stored for its source. A FutureCursor error (the source
was reset) drops the cursor; an OutdatedCursor info makes the processor's
`on_gap` hook backfill the repos we care about.
"""

from __future__ import annotations

import asyncio
import random
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog
import websockets

from reactor import metrics
from reactor.ingest.processor import EventProcessor, SourceError
from reactor.store import Store, cursors

log = structlog.get_logger(__name__)

MAX_FRAME_BYTES = 8 * 1024 * 1024


def subscribe_url(base: str, cursor: int | None) -> str:
    parts = urlsplit(base if "://" in base else f"wss://{base}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/xrpc/com.atproto.sync.subscribeRepos"):
        path += "/xrpc/com.atproto.sync.subscribeRepos"
    query = f"cursor={cursor}" if cursor is not None else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def backoff_delays(base: float = 0.5, cap: float = 60.0) -> Callable[[int], float]:
    def delay(attempt: int) -> float:
        return random.uniform(0, min(cap, base * 2 ** min(attempt, 16)))  # full jitter
    return delay


class Subscription:
    def __init__(self, source: str, store: Store, processor: EventProcessor, *,
                 watch: Callable[[str], bool] | None = None) -> None:
        self.source = source
        self._store = store
        self._processor = processor
        self._watch = watch
        self._delay = backoff_delays()
        self.connected = asyncio.Event()
        self.state = "starting"

    async def run(self) -> None:
        attempt = 0
        while True:
            async with self._store.read() as conn:
                cursor = await cursors.get(conn, self.source)
            url = subscribe_url(self.source, cursor)
            try:
                async with websockets.connect(url, max_size=MAX_FRAME_BYTES, open_timeout=15,
                                              ping_interval=20, ping_timeout=30) as ws:
                    self.state = "connected"
                    self.connected.set()
                    metrics.source_connected.labels(source=self.source).set(1)
                    log.info("firehose.connected", source=self.source, cursor=cursor)
                    attempt = 0
                    async for frame in ws:
                        if isinstance(frame, str):
                            metrics.events_rejected.labels(reason="text_frame").inc()
                            continue
                        await self._handle(frame)
            except asyncio.CancelledError:
                await self._processor.flush(self.source)
                raise
            except SourceError as error:
                await self._source_error(error)
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as error:
                log.warning("firehose.disconnected", source=self.source, error=str(error) or type(error).__name__)
            finally:
                self.state = "reconnecting"
                self.connected.clear()
                metrics.source_connected.labels(source=self.source).set(0)
            await self._processor.flush(self.source)
            metrics.reconnects.labels(source=self.source).inc()
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    async def _handle(self, frame: bytes) -> None:
        """A bug on one event is logged and counted; it must not stop the stream."""
        try:
            await self._processor.handle_frame(self.source, frame, watch=self._watch)
        except (SourceError, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001
            metrics.events_rejected.labels(reason="internal_error").inc()
            log.exception("event.internal_error", source=self.source)

    async def _source_error(self, error: SourceError) -> None:
        log.warning("firehose.error_frame", source=self.source, error=error.error, message=str(error))
        metrics.events_rejected.labels(reason=f"source_{error.error}").inc()
        if error.error == "FutureCursor":
            # Our cursor is ahead of the source (it was reset): start from live and backfill.
            async with self._store.transaction() as conn:
                await cursors.delete(conn, self.source)
            if self._processor.on_gap is not None:
                await self._processor.on_gap(self.source)
