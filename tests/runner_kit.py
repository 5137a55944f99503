"""Build an in-process runner against the test network (config, keys, services)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from reactor.config import Config, parse_config
from reactor.keys import ensure_keys
from reactor.records import now_datetime
from reactor.services import Services
from tests.atnet import Account, TestNetwork

T = TypeVar("T")

HELLO_JS = b"""export async function hello(args, ctx) {
  return { greeting: `hello ${args.name ?? "world"}` };
}
"""


def runner_config(home: Path, atnet: TestNetwork, did: str, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "did": did,
        "home": str(home),
        "atproto": {"plc_url": atnet.plc_url, "firehose": atnet.pds_url},
        "observability": {"log_format": "console", "log_level": "debug"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    ensure_keys(home / "keys")
    return parse_config(data, "test", env={})


async def start_runner(config: Config, *, dev: bool = True, wait_connected: bool = True) -> Services:
    services = await Services.open(config, dev=dev)
    await services.start()
    if wait_connected:
        for sub in services.ingestion.subscriptions.values():
            await asyncio.wait_for(sub.connected.wait(), 15)
    return services


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        await asyncio.sleep(0.05)


async def publish_bundle(author: Account, name: str = "hello", code: bytes = HELLO_JS,
                         mime_type: str = "application/javascript", **fields: Any) -> tuple[str, str]:
    blob = await author.upload_blob(code, mime_type)
    record = {"$type": "dev.atrun.bundle", "name": name, "code": blob, "createdAt": now_datetime(), **fields}
    ref = await author.put_record("dev.atrun.bundle", name, record)
    return ref.uri, ref.cid


async def post_invocation(author: Account, runner: str, bundle: tuple[str, str], endpoint: str = "hello",
                          args: dict[str, Any] | None = None) -> tuple[str, str]:
    record = {"$type": "dev.atrun.invocation", "runner": runner,
              "bundle": {"uri": bundle[0], "cid": bundle[1]}, "endpoint": endpoint,
              "args": args or {}, "createdAt": now_datetime()}
    ref = await author.create_record("dev.atrun.invocation", record)
    return ref.uri, ref.cid
