"""Helpers for the HTTP API tests: service-auth tokens from the real PDS, servers on loopback.

`serve_app` runs the ASGI app under uvicorn in the current event loop (what `at-rund serve`
does, minus signals); `ServeProcess` runs a real `at-rund serve --dev` subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from reactor.api.app import create_app
from reactor.config import Config
from reactor.daemon import Daemon
from reactor.services import Services
from tests.atnet import Account, _raise_for_xrpc
from tests.helpers import cli_env, free_port
from tests.runner_kit import start_runner

INVOKE = "dev.atrun.invoke"


async def service_token(account: Account, aud: str, lxm: str | None = INVOKE, exp: int | None = None) -> str:
    """A service-auth JWT minted by the account's own PDS (`com.atproto.server.getServiceAuth`)."""
    params: dict[str, Any] = {"aud": aud}
    if lxm is not None:
        params["lxm"] = lxm
    if exp is not None:
        params["exp"] = exp
    for attempt in range(2):
        if account._access_jwt is None:
            account._access_jwt = await account._create_session()
        async with httpx.AsyncClient(base_url=account.pds_url, timeout=30) as http:
            resp = await http.get("/xrpc/com.atproto.server.getServiceAuth", params=params,
                                  headers={"Authorization": f"Bearer {account._access_jwt}"})
        if attempt == 0 and resp.status_code in (400, 401) and "Token" in resp.text:
            account._access_jwt = None
            continue
        _raise_for_xrpc(resp)
        return str(resp.json()["token"])
    raise AssertionError("unreachable")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class _Server(uvicorn.Server):
    """uvicorn that leaves signal handling alone (pytest's, or the daemon's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 (a free port unless given); yields the base URL."""
    port = port or free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                    lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
                raise AssertionError("uvicorn exited before it started")
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class Api:
    """An in-process runner (Services) with its HTTP API served on loopback."""

    services: Services
    daemon: Daemon
    url: str
    app: Any


@contextlib.asynccontextmanager
async def running_api(config: Config, *, port: int | None = None) -> AsyncIterator[Api]:
    """Services + the same ASGI app `at-rund serve` builds (health from Daemon), on a free port."""
    services = await start_runner(config)
    daemon = Daemon(config, dev=True)
    daemon.services = services
    try:
        app = create_app(services.api_context(daemon.health))
        async with serve_app(app, port) as url:
            yield Api(services=services, daemon=daemon, url=url, app=app)
    finally:
        await services.close()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a config file: top-level scalars, then one table per dict."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{toml_value(k) if not k.isidentifier() else k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class ServeProcess:
    """A real `at-rund serve --dev` on a free loopback port, with its stderr kept in a file."""

    def __init__(self, home: Path, config: dict[str, Any]) -> None:
        self.home = home
        self.port = free_port()
        self.config_path = home / "config.toml"
        self.config = {**config, "home": str(home), "port": self.port}
        self.log_path = home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, **changes: Any) -> None:
        for key, value in changes.items():
            if isinstance(value, dict):
                self.config.setdefault(key, {}).update(value)
            else:
                self.config[key] = value
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(to_toml(self.config))
        os.replace(tmp, self.config_path)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "reactor.cli", "serve", "--dev", "--config", str(self.config_path)],
                env=cli_env(self.home), stdout=log, stderr=log, start_new_session=True,
            )

    async def start(self, timeout: float = 60) -> None:
        """Spawn the server and wait until /xrpc/_health answers 200."""
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                try:
                    if (await http.get(f"{self.url}/xrpc/_health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.proc.poll() is not None:
                    raise AssertionError(f"at-rund serve exited with {self.proc.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"at-rund serve not healthy after {timeout} s:\n{self.logs()}")
                await asyncio.sleep(0.1)

    def signal(self, signum: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signum)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, timeout: float = 30) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return int(proc.returncode)
