"""`at-rund serve`: the store, the reactor's tasks and the HTTP server in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any, Iterator

import structlog
import uvicorn

from reactor import __version__
from reactor.config import Config
from reactor.http.app import create_app
from reactor.keys import RunnerKeys
from reactor.store import Store

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, config: Config, *, dev: bool = False) -> None:
        self.config = config
        self.dev = dev
        self.store: Store | None = None
        self.keys: RunnerKeys | None = None
        self._stopping = asyncio.Event()
        self._server: _Server | None = None

    async def health(self) -> dict[str, Any]:
        store_ok = False
        if self.store is not None:
            try:
                await self.store.schema_version()
                store_ok = True
            except Exception:  # noqa: BLE001 - a broken store is exactly what health reports
                store_ok = False
        return {
            "ok": store_ok and not self._stopping.is_set(),
            "version": __version__,
            "did": self.config.did,
            "store": "ok" if store_ok else "unavailable",
            "stopping": self._stopping.is_set(),
        }

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("daemon.stopping")
            self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        self.keys = RunnerKeys.load(self.config.keys_dir)
        self.store = await Store.open(self.config.store_path)
        try:
            app = create_app(self.health)
            self._server = _Server(
                uvicorn.Config(app, host=self.config.host, port=self.config.port, log_config=None,
                               access_log=False, lifespan="off")
            )
            serve = asyncio.create_task(self._server.serve(), name="http")
            log.info("daemon.started", version=__version__, host=self.config.host, port=self.config.port,
                     did=self.config.did, dev=self.dev, store=str(self.config.store_path))
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait({serve, stop}, return_when=asyncio.FIRST_COMPLETED)
            if serve in done and serve.exception():
                raise serve.exception()  # type: ignore[misc]
            self._server.should_exit = True
            await serve
        finally:
            await self.store.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            log.info("daemon.stopped")
