"""Build the reactor's long-lived parts from config, and take them down in reverse order.

Tests use this directly to run a whole runner in-process; `Daemon` adds the
HTTP server and signal handling around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from reactor.access import AccessPolicy
from reactor.bundles import BundleCache
from reactor.config import Config
from reactor.identity import IdentityResolver
from reactor.ingest.apply import Applier
from reactor.ingest.service import Ingestion
from reactor.intake import Intake
from reactor.keys import RunnerKeys
from reactor.store import Store
from reactor.xrpc import XrpcClient

log = structlog.get_logger(__name__)

NO_RUNNER_DID = "did:web:unconfigured.invalid"


@dataclass
class Services:
    config: Config
    dev: bool
    store: Store
    keys: RunnerKeys
    xrpc: XrpcClient
    identity: IdentityResolver
    bundles: BundleCache
    intake: Intake
    ingestion: Ingestion
    policy: AccessPolicy
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def runner_did(self) -> str:
        return self.config.did or NO_RUNNER_DID

    def current_policy(self) -> AccessPolicy:
        return self.policy

    def set_policy(self, policy: AccessPolicy) -> None:
        self.policy = policy
        log.info("access.policy", mode=policy.mode, size=policy.size)

    @classmethod
    async def open(cls, config: Config, *, dev: bool = False) -> "Services":
        keys = RunnerKeys.load(config.keys_dir)
        store = await Store.open(config.store_path)
        xrpc = XrpcClient()
        identity = IdentityResolver(store, config.atproto.plc_url)
        bundles = BundleCache(store, identity, xrpc, code_dir=config.bundles_dir,
                              max_blob_bytes=config.limits.max_blob_bytes)
        policy = AccessPolicy.from_config(config.access)
        if config.did is None:
            log.warning("runner.no_did", hint="set `did` in config.toml: no invocation can be aimed at this runner")
        holder: dict[str, Services] = {}
        intake = Intake(config.did or NO_RUNNER_DID, keys, lambda: holder["s"].policy,
                        max_output_bytes=config.limits.max_output_bytes)
        applier = Applier(store, bundles, intake)
        follow = config.atproto.follow if isinstance(config.atproto.follow, list) else []
        ingestion = Ingestion(store, identity, xrpc, applier, firehose=config.atproto.firehose, follow=follow)
        services = cls(config=config, dev=dev, store=store, keys=keys, xrpc=xrpc, identity=identity,
                       bundles=bundles, intake=intake, ingestion=ingestion, policy=policy)
        holder["s"] = services
        return services

    async def start(self) -> None:
        await self.ingestion.start()

    async def close(self) -> None:
        await self.ingestion.stop()
        await self.xrpc.aclose()
        await self.store.close()

    async def health(self) -> dict[str, Any]:
        try:
            await self.store.schema_version()
            store_ok = True
        except Exception:  # noqa: BLE001 - a broken store is exactly what health reports
            store_ok = False
        return {"store": "ok" if store_ok else "unavailable", "ingest": self.ingestion.health(),
                "access": {"mode": self.policy.mode, "size": self.policy.size}}
