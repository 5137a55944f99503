"""Build an in-process runner against the test network (config, keys, services)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from reactor.access import AccessPolicy, PolicyBox
from reactor.bundles import BundleCache
from reactor.config import AccessConfig, Config, parse_config
from reactor.identity import IdentityResolver
from reactor.ingest.apply import Applier
from reactor.ingest.processor import EventProcessor
from reactor.ingest.service import COLLECTIONS
from reactor.intake import Intake
from reactor.keys import RunnerKeys, ensure_keys
from reactor.records import now_datetime
from reactor.services import Services
from reactor.store import Store, identities
from reactor.store.identities import Identity
from reactor.xrpc import XrpcClient
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


UNREACHABLE_PLC = "http://127.0.0.1:9"


@asynccontextmanager
async def offline_processor(tmp_path: Path, runner_did: str) -> AsyncIterator[tuple[Store, EventProcessor]]:
    """A real store + processor whose PLC is unreachable: only identities a test `trust`s resolve."""
    ensure_keys(tmp_path / "keys")
    store = await Store.open(tmp_path / "s.db")
    identity = IdentityResolver(store, UNREACHABLE_PLC, timeout_s=1)
    xrpc = XrpcClient(timeout_s=1)
    bundles = BundleCache(store, identity, xrpc, code_dir=tmp_path / "bundles", max_blob_bytes=1 << 20)
    access = PolicyBox(AccessPolicy.from_config(AccessConfig()))
    intake = Intake(runner_did, RunnerKeys.load(tmp_path / "keys"), access.get, max_output_bytes=4096)
    try:
        yield store, EventProcessor(store, identity, Applier(store, bundles, intake), collections=COLLECTIONS)
    finally:
        await xrpc.aclose()
        await store.close()


async def trust(store: Store, did: str, did_key: str) -> None:
    """What a resolved DID document would have told us: the repo's signing key."""
    async with store.transaction() as conn:
        await identities.put(conn, Identity(did, None, UNREACHABLE_PLC, did_key, "active", time.time()))
