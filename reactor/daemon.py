"""`at-rund serve`: the store, the reactor's tasks and the HTTP server in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any, Iterator

import structlog
import uvicorn

from reactor import __version__
from reactor.config import Config, ConfigError, load_config
from reactor.api.admin import admin_routes, ensure_admin_token
from reactor.api.app import create_app
from reactor.services import Services

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, config: Config, *, dev: bool = False, config_path: Path | None = None) -> None:
        self.config = config
        self.dev = dev
        self.config_path = config_path
        self.services: Services | None = None
        self._stopping = asyncio.Event()
        self._server: _Server | None = None

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"version": __version__, "did": self.config.did,
                                  "stopping": self._stopping.is_set()}
        if self.services is None:
            return {**report, "ok": False, "store": "unavailable"}
        report.update(await self.services.health())
        report["ok"] = (report["store"] == "ok" and report["pool"]["state"] == "ok"
                        and not self._stopping.is_set())
        return report

    def reload(self) -> None:
        """SIGHUP: re-read the config file and swap in its [access] lists; a bad file changes nothing."""
        if self.services is None:
            return
        try:
            fresh = load_config(self.config_path)
        except ConfigError as error:
            log.error("config.reload_failed", error=str(error))
            return
        self.services.reload_access(fresh.access)
        log.info("config.reloaded", mode=fresh.access.mode, allowlist=len(fresh.access.allowlist),
                 blocklist=len(fresh.access.blocklist))

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("daemon.stopping")
            self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.services = services = await Services.open(self.config, dev=self.dev)
        try:
            await services.start()
            admin = admin_routes(ensure_admin_token(self.config.home), services.pool_actions())
            app = create_app(services.api_context(self.health), extra_routes=admin)
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
            await services.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            log.info("daemon.stopped")
