"""Build the reactor's long-lived parts from config, and take them down in reverse order.

Tests use this directly to run a whole runner in-process; `Daemon` adds the
HTTP server and signal handling around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

import asyncio

from sandboxes import Executor, create_executor

from reactor import __version__
from reactor.access import AccessPolicy, PolicyBox
from reactor.api.auth import ServiceAuth
from reactor.api.context import ApiContext
from reactor.api.quotas import QuotaLimits, Quotas
from reactor.bundles import BundleCache, ReadyBundle
from reactor.config import AccessConfig, Config
from reactor.declaration import build_declaration, publish
from reactor.dispatch.dispatcher import Dispatcher
from reactor.dispatch.execute import CallRunner
from reactor.follows import Follows, follow_source, follows_needed
from reactor.identity import IdentityResolver
from reactor.ingest.apply import Applier
from reactor.ingest.service import Ingestion
from reactor.intake import Intake
from reactor.keys import RunnerKeys
from reactor.outbox_drain import OutboxDrain
from reactor.sandboxing import enabled_runtimes, sandbox_settings
from reactor.store import Store
from reactor.writers import GrantWriter, RunnerRepoWriter
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
    access: PolicyBox
    executor: Executor
    calls: CallRunner
    dispatcher: Dispatcher
    outbox: OutboxDrain
    runner_writer: RunnerRepoWriter | None
    follows: Follows | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def runner_did(self) -> str:
        return self.config.did or NO_RUNNER_DID

    @property
    def policy(self) -> AccessPolicy:
        return self.access.get()

    def reload_access(self, access: AccessConfig) -> None:
        if access.mode == "follows" and self.follows is None:
            log.warning("access.follows_need_restart", hint='mode "follows" is loaded on start: restart at-rund')
        elif self.follows is not None and (access.follows_of or self.config.did) != self.follows.source:
            log.warning("access.follows_of_need_restart", hint="a new follows_of takes effect on restart")
        mode_changed = access.mode != self.config.access.mode
        self.config = self.config.model_copy(update={"access": access})
        self.access.set(AccessPolicy.from_config(access, follows=self.policy.follows))
        if self.follows is not None:
            self.follows.kick()  # the blocklist may have changed: blocked accounts are not watched
        if mode_changed:  # the runner declaration advertises the access mode
            self.tasks.append(asyncio.create_task(self.declare(), name="declare"))

    @classmethod
    async def open(cls, config: Config, *, dev: bool = False) -> "Services":
        keys = RunnerKeys.load(config.keys_dir)
        store = await Store.open(config.store_path)
        xrpc = XrpcClient()
        handle_services = [u for u in (config.atproto.pds_url, config.atproto.firehose) if u]
        identity = IdentityResolver(store, config.atproto.plc_url, handle_services=handle_services, xrpc=xrpc)
        bundles = BundleCache(store, identity, xrpc, code_dir=config.bundles_dir,
                              max_blob_bytes=config.limits.max_blob_bytes)
        access = PolicyBox(AccessPolicy.from_config(config.access))
        if config.did is None:
            log.warning("runner.no_did", hint="set `did` in config.toml: no invocation can be aimed at this runner")
        intake = Intake(config.did or NO_RUNNER_DID, keys, access.get,
                        max_output_bytes=config.limits.max_output_bytes)
        applier = Applier(store, bundles, intake)
        follow = config.atproto.follow if isinstance(config.atproto.follow, list) else []
        ingestion = Ingestion(store, identity, xrpc, applier, firehose=config.atproto.firehose, follow=follow)
        executor = create_executor(sandbox_settings(config, dev=dev))
        runner_did = config.did or NO_RUNNER_DID
        calls = CallRunner(bundles, executor, keys, runner_did, access.get, config.limits)
        runner_writer = RunnerRepoWriter.from_config(config, xrpc, keys)
        drain = OutboxDrain(store, GrantWriter(xrpc, identity, keys, runner_did), runner_writer)
        dispatcher = Dispatcher(store, calls, keys, runner_did, max_output_bytes=config.limits.output_bytes,
                                global_limit=config.dispatch.concurrency, per_author_limit=config.dispatch.per_author,
                                max_attempts=config.dispatch.max_attempts, on_result=drain.kick)
        applier.on_queued = dispatcher.kick
        follows = None
        source = follow_source(config)
        if follows_needed(config) and source is not None:
            follows = Follows(store, identity, xrpc, ingestion, source, watch=config.atproto.follow == "follows",
                              on_change=lambda subjects: access.set(access.get().with_follows(subjects)),
                              blocked=lambda: access.get().blocklist)
        services = cls(config=config, dev=dev, store=store, keys=keys, xrpc=xrpc, identity=identity,
                       bundles=bundles, intake=intake, ingestion=ingestion, access=access, executor=executor,
                       calls=calls, dispatcher=dispatcher, outbox=drain, runner_writer=runner_writer,
                       follows=follows)
        bundles.prewarm = services._prewarm
        return services

    async def _prewarm(self, bundle: ReadyBundle) -> None:
        await self.calls.warm(bundle)

    async def start(self) -> None:
        await self.executor.start()
        for name, job in (("dispatcher", self.dispatcher.run()), ("outbox", self.outbox.run())):
            self.tasks.append(asyncio.create_task(job, name=name))
        if self.follows is not None:
            # Before ingestion: the follow set (cached, then loaded) decides who is watched and allowed.
            await self.follows.start()
        await self.ingestion.start()
        if self.follows is not None:
            self.tasks.append(asyncio.create_task(self.follows.run(), name="follows"))
        self.tasks.append(asyncio.create_task(self.declare(), name="declare"))

    async def declare(self) -> None:
        """Publish dev.atrun.runner/self when the runner account is configured (and it changed)."""
        if self.runner_writer is None:
            log.info("runner.declaration_skipped", reason="no [atproto] pds_url/identifier/password")
            return
        record = build_declaration(self.config, self.keys, self.runtime_mime_types(), [],
                                   isolation=self.executor.backend)
        try:
            changed = await publish(self.runner_writer, record)
            log.info("runner.declared", changed=changed)
        except Exception as error:  # noqa: BLE001 - the runner works without it; say why
            log.warning("runner.declaration_failed", error=str(error))

    def runtime_mime_types(self) -> list[str]:
        rows = enabled_runtimes(self.config, dev=self.dev)
        return sorted({mime for row in rows if row.available for mime in row.mime_types})

    def describe(self) -> dict[str, Any]:
        limits = self.config.limits
        return {
            "did": self.runner_did,
            "endpoint": self.config.public_url or f"http://{self.config.host}:{self.config.port}",
            "runtimes": self.runtime_mime_types(),
            "isolation": self.executor.backend,
            "sandboxClasses": [],
            "access": self.policy.mode,
            "encryptionKey": self.keys.encryption_did_key,
            "signingKey": self.keys.signing_did_key,
            "limits": {"memoryMb": limits.max_memory_mb, "timeoutMs": limits.max_timeout_ms,
                       "pids": limits.max_pids, "outputBytes": limits.max_output_bytes},
            "version": __version__,
        }

    def pool_actions(self) -> dict[str, Any]:
        """What `at-rund pool status|warm|drain` can ask of the running server."""
        async def status(_: dict[str, Any]) -> dict[str, Any]:
            return {"backend": self.executor.backend, "inFlight": self.dispatcher.in_flight,
                    "stats": await self.executor.stats()}

        async def warm(body: dict[str, Any]) -> dict[str, Any]:
            count = int(body.get("count") or 1)
            if body.get("bundle"):
                bundle = await self.bundles.ready_or_fetch(str(body["bundle"]), body.get("cid"))
                await self.calls.warm(bundle, count)
                return {"warmed": bundle.key, "count": count}
            runtime = str(body.get("runtime") or "deno")
            return {"warmed": runtime, "count": await self.executor.warm(runtime, count)}

        async def drain(body: dict[str, Any]) -> dict[str, Any]:
            await self.dispatcher.stop(float(body.get("timeout") or 30))
            await self.executor.drain(float(body.get("timeout") or 30))
            return {"drained": True, "stats": await self.executor.stats()}

        return {"status": status, "warm": warm, "drain": drain}

    def api_context(self, health: Any) -> ApiContext:
        quotas = self.config.quotas
        return ApiContext(
            config=self.config, runner_did=self.runner_did, identity=self.identity, calls=self.calls,
            auth=ServiceAuth(self.identity, self.runner_did),
            quotas=Quotas(QuotaLimits(quotas.concurrent, quotas.per_minute),
                          {did: QuotaLimits(q.concurrent, q.per_minute) for did, q in quotas.per_did.items()}),
            health=health, describe=self.describe,
        )

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop intake first, let running work finish, then take the rest down."""
        if self.follows is not None:
            await self.follows.stop()
        await self.ingestion.stop()
        await self.dispatcher.stop(drain_timeout)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.executor.drain(drain_timeout)
        await self.executor.shutdown()
        await self.xrpc.aclose()
        await self.store.close()

    async def health(self) -> dict[str, Any]:
        try:
            await self.store.schema_version()
            store_ok = True
        except Exception:  # noqa: BLE001 - a broken store is exactly what health reports
            store_ok = False
        return {"store": "ok" if store_ok else "unavailable", "ingest": self.ingestion.health(),
                "pool": await self._pool_health(),
                "access": {"mode": self.policy.mode, "size": self.policy.size,
                           **({"follows": self.follows.health()} if self.follows is not None else {})}}

    async def _pool_health(self) -> dict[str, Any]:
        """A summary of the sandbox pool (no per-bundle detail: health is public)."""
        try:
            stats = await self.executor.stats()
        except Exception as error:  # noqa: BLE001 - a broken pool is exactly what health reports
            log.warning("health.pool_failed", error=str(error))
            return {"state": "unavailable"}
        summary = {k: stats[k] for k in ("backend", "instances", "busy", "starting", "maxInstances", "inflight")
                   if k in stats}
        return {"state": "closing" if stats.get("closing") else "ok", **summary}
