"""Warm instances: reuse per bundle, adopt generic hosts, reclaim idle ones, respect caps.

An instance is bound to one plan key (bundle + version + permissions + env + limits): a sandbox's
permissions, mounts and secrets are fixed at start, so nothing is ever shared across keys. Generic
hosts (from `prewarm` settings) start unbound with no network and an empty slot directory and are
bound to the first compatible bundle that needs an instance. Instances that crashed, timed out or
hit a limit are retired and never handed out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from sandboxes.launcher import InstanceConfig, Launcher, Started
from sandboxes.models import Permissions
from sandboxes.policy import Plan
from sandboxes.process import Counters, InstanceDied, Process
from sandboxes.runtimes import Runtime
from sandboxes.settings import SandboxSettings

log = structlog.get_logger(__name__)
How = Literal["warm", "adopted", "cold"]
MAX_TRACKED_BUNDLES = 1024


class Closing(Exception):
    """The pool is draining or shut down and takes no new work."""


@dataclass
class Instance:
    runtime: Runtime
    started: Started
    key: str | None = None
    bundle_key: str | None = None
    code_path: str | None = None
    slot: str | None = None
    loaded: bool = False
    busy: int = 0
    calls: int = 0
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)
    counters: Counters = field(default_factory=Counters)

    @property
    def ident(self) -> str:
        return self.started.ident

    @property
    def process(self) -> Process:
        return self.started.process

    @property
    def free(self) -> bool:
        return not self.retired and self.process.alive and self.busy < self.runtime.concurrency


@dataclass
class Pin:
    plan: Plan
    count: int


class Pool:
    def __init__(self, settings: SandboxSettings, launcher: Launcher, runtimes: dict[str, Runtime]) -> None:
        self.settings = settings
        self.pool = settings.pool
        self.launcher = launcher
        self.runtimes = runtimes
        self.instances: dict[str, Instance] = {}
        self.by_key: dict[str, list[Instance]] = defaultdict(list)
        self.generic: dict[str, list[Instance]] = defaultdict(list)
        self.reserved: Counter[str] = Counter()  # starting instances per key ("rt:<name>" for generic)
        self.pins: dict[str, Pin] = {}
        self.generic_floor: dict[str, int] = {n: c for n, c in self.pool.prewarm.items() if n in runtimes}
        self.events: OrderedDict[str, Counter[str]] = OrderedDict()  # "runtime:x" / "bundle:y" -> counters
        self.closing = False
        self.cond = asyncio.Condition()
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._maintainer: asyncio.Task[None] | None = None

    # ---- bookkeeping -------------------------------------------------------------------------

    def _count(self, event: str, runtime: str, bundle_key: str | None = None, n: int = 1) -> None:
        self.events.setdefault(f"runtime:{runtime}", Counter())[event] += n
        if bundle_key is not None:
            label = f"bundle:{bundle_key}"
            self.events.setdefault(label, Counter())[event] += n
            self.events.move_to_end(label)
            while len(self.events) > MAX_TRACKED_BUNDLES:  # least recently active bundles' counters go
                oldest = next(k for k in self.events if k.startswith("bundle:"))
                del self.events[oldest]

    def total(self) -> int:
        return len(self.instances) + sum(self.reserved.values())

    def key_count(self, key: str) -> int:
        return len(self.by_key.get(key, ())) + self.reserved[key]

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _register(self, inst: Instance) -> None:
        self.instances[inst.ident] = inst
        if inst.key is None:
            self.generic[inst.runtime.name].append(inst)
        else:
            self.by_key[inst.key].append(inst)

    def _unregister(self, inst: Instance) -> None:
        self.instances.pop(inst.ident, None)
        group = self.generic[inst.runtime.name] if inst.key is None else self.by_key.get(inst.key, [])
        if inst in group:
            group.remove(inst)
        if inst.key is not None and not self.by_key.get(inst.key):
            self.by_key.pop(inst.key, None)

    def retire(self, inst: Instance, reason: str) -> None:
        """Take an instance out of service for good and kill it in the background."""
        if inst.retired:
            return
        inst.retired = True
        self._unregister(inst)
        self._count(reason, inst.runtime.name, inst.bundle_key)
        log.debug("sandbox.retire", instance=inst.ident, reason=reason)
        self._spawn_task(self._stop(inst))
        self._wake.set()

    async def _stop(self, inst: Instance) -> None:
        await self.launcher.stop(inst.started)
        if inst.slot is not None:
            await self.launcher.drop_slot(inst.slot)
        async with self.cond:
            self.cond.notify_all()

    def _evict_idle(self) -> bool:
        """Free one slot for a new instance by retiring the least recently used idle one."""
        candidates = [
            i for i in self.instances.values()
            if i.busy == 0 and not i.retired and i.key is not None and self._surplus(i.key) > 0
        ]
        if not candidates:
            candidates = [i for i in self.instances.values() if i.busy == 0 and not i.retired and i.key is None]
        if not candidates:
            return False
        self.retire(min(candidates, key=lambda i: i.last_used), "evicted")
        return True

    def _surplus(self, key: str) -> int:
        pin = self.pins.get(key)
        return len(self.by_key.get(key, ())) - (pin.count if pin else 0)

    # ---- acquire / release ---------------------------------------------------------------------

    async def acquire(self, plan: Plan) -> tuple[Instance, How]:
        """A free instance for `plan`: warm if one exists, else adopt a generic host, else start one."""
        async with self.cond:
            while True:
                if self.closing:
                    raise Closing("executor is draining")
                free = [i for i in self.by_key.get(plan.key, ()) if i.free]
                if free:  # the most recently used: the others stay idle long enough to be reclaimed
                    inst = max(free, key=lambda i: i.last_used)
                    inst.busy += 1
                    return inst, "warm"
                if self.key_count(plan.key) < self.pool.max_per_bundle:
                    host = self._take_generic(plan) if plan.adoptable else None
                    if host is not None:
                        break
                    if self.total() < self.pool.max_instances or self._evict_idle():
                        self.reserved[plan.key] += 1
                        host = None
                        break
                await self.cond.wait()
        if host is not None:
            return await self._adopt(host, plan), "adopted"
        try:
            inst = await self._start(plan)
        finally:
            self.reserved[plan.key] -= 1
        return inst, "cold"

    def _take_generic(self, plan: Plan) -> Instance | None:
        if plan.memory_mb != self.settings.limits.memory_mb or plan.pids != self.settings.limits.pids:
            return None
        for host in self.generic.get(plan.runtime.name, []):
            if host.free:
                self._unregister(host)
                host.key, host.bundle_key, host.busy = plan.key, plan.bundle_key, 1
                self._register(host)
                self._wake.set()  # refill the generic floor
                return host
        return None

    async def _adopt(self, host: Instance, plan: Plan) -> Instance:
        try:
            assert host.slot is not None
            slot = await self.launcher.stage_slot(host.slot, plan.bundle_dir)
            host.code_path = str(slot / plan.code_path.name)
            reply = await host.process.request(
                {"op": "load", "codePath": host.code_path, "env": plan.env}, plan.output_bytes
            )
            host.loaded = bool(reply.get("success"))
            self._count("adoptions", plan.runtime.name, plan.bundle_key)
            return host
        except BaseException:
            self.retire(host, "failedAdoptions")
            raise

    def _config(self, plan: Plan) -> InstanceConfig:
        return InstanceConfig(
            runtime=plan.runtime, bundle_dir=plan.bundle_dir, permissions=plan.permissions,
            env=plan.env, memory_mb=plan.memory_mb, pids=plan.pids,
        )

    async def _start(self, plan: Plan, *, busy: bool = True) -> Instance:
        started = await self.launcher.start(self._config(plan))
        inst = Instance(
            runtime=plan.runtime, started=started, key=plan.key, bundle_key=plan.bundle_key,
            code_path=str(plan.code_path), busy=1 if busy else 0,
        )
        inst.counters = inst.process.counters()
        self._register(inst)
        self._count("coldStarts", plan.runtime.name, plan.bundle_key)
        if self.closing:
            self.retire(inst, "shutdown")
            raise Closing("executor is draining")
        return inst

    async def release(self, inst: Instance, *, reuse: bool, call: bool = True) -> None:
        """Hand an instance back; `reuse=False` (crash, timeout, limit hit) retires it."""
        inst.busy -= 1
        inst.calls += int(call)
        inst.last_used = time.monotonic()
        if not reuse:
            self.retire(inst, "replaced")
        elif not inst.process.alive:
            self.retire(inst, "crashed")
        elif not inst.runtime.warm:
            self.retire(inst, "oneShot")
        async with self.cond:
            self.cond.notify_all()

    # ---- warming and maintenance --------------------------------------------------------------

    async def warm_bundle(self, plan: Plan, count: int) -> int:
        """Pin `count` loaded instances for a bundle (0 unpins); returns how many are warm now."""
        if count <= 0:
            self.pins.pop(plan.key, None)
            self._wake.set()
            return len(self.by_key.get(plan.key, ()))
        self.pins[plan.key] = Pin(plan, min(count, self.pool.max_per_bundle))
        await self._fill_pin(self.pins[plan.key])
        return sum(1 for i in self.by_key.get(plan.key, ()) if i.loaded)

    async def warm_runtime(self, runtime: Runtime, count: int) -> int:
        self.generic_floor[runtime.name] = max(0, count)
        await self._fill_generic(runtime.name)
        return len(self.generic.get(runtime.name, ()))

    async def _fill_pin(self, pin: Pin) -> None:
        plan = pin.plan
        starts = []
        async with self.cond:
            while self.key_count(plan.key) < pin.count and (
                self.total() < self.pool.max_instances or self._evict_idle()
            ):
                self.reserved[plan.key] += 1
                starts.append(self._start_loaded(plan))
        await asyncio.gather(*starts, return_exceptions=True)

    async def _start_loaded(self, plan: Plan) -> None:
        try:
            inst = await self._start(plan, busy=True)
        finally:
            self.reserved[plan.key] -= 1
        try:
            reply = await asyncio.wait_for(
                inst.process.request({"op": "load", "codePath": inst.code_path}, plan.output_bytes), plan.timeout
            )
            inst.loaded = bool(reply.get("success"))
            if not inst.loaded:
                log.warning("sandbox.prewarm_load_failed", bundle=plan.bundle_key, error=reply.get("error"))
            await self.release(inst, reuse=inst.loaded, call=False)
        except (TimeoutError, InstanceDied, OSError) as error:
            log.warning("sandbox.prewarm_failed", bundle=plan.bundle_key, error=str(error))
            await self.release(inst, reuse=False, call=False)

    async def _fill_generic(self, name: str) -> None:
        runtime = self.runtimes[name]
        tag = f"rt:{name}"
        starts = []
        async with self.cond:
            while (
                not self.closing
                and len(self.generic.get(name, ())) + self.reserved[tag] < self.generic_floor.get(name, 0)
                and self.total() < self.pool.max_instances
            ):
                self.reserved[tag] += 1
                starts.append(self._start_generic(runtime, tag))
        await asyncio.gather(*starts, return_exceptions=True)

    async def _start_generic(self, runtime: Runtime, tag: str) -> None:
        slot = self.launcher.new_ident()
        try:
            config = InstanceConfig(
                runtime=runtime, bundle_dir=self.launcher.new_slot(slot), permissions=Permissions(env=["*"]),
                env={}, memory_mb=self.settings.limits.memory_mb, pids=self.settings.limits.pids,
            )
            started = await self.launcher.start(config)
        except Exception as error:  # noqa: BLE001 - a failed prewarm is logged, the pool goes on
            log.warning("sandbox.generic_start_failed", runtime=runtime.name, error=str(error))
            await self.launcher.drop_slot(slot)
            return
        finally:
            self.reserved[tag] -= 1
        inst = Instance(runtime=runtime, started=started, slot=slot)
        inst.counters = inst.process.counters()
        self._register(inst)
        self._count("genericStarts", runtime.name)
        if self.closing:
            self.retire(inst, "shutdown")
        async with self.cond:
            self.cond.notify_all()

    def start_maintenance(self) -> None:
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain())

    async def _maintain(self) -> None:
        tick = max(0.05, min(1.0, self.pool.idle_timeout_s / 4))
        while not self.closing:
            try:
                self._reclaim_idle()
                for name in list(self.generic_floor):
                    await self._fill_generic(name)
                for pin in list(self.pins.values()):
                    if self.key_count(pin.plan.key) < pin.count:
                        await self._fill_pin(pin)
                for inst in list(self.instances.values()):
                    if not inst.process.alive and inst.busy == 0:
                        self.retire(inst, "crashed")
            except Exception:  # noqa: BLE001 - maintenance must outlive any one failure
                log.exception("sandbox.maintenance_failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            self._wake.clear()

    def _reclaim_idle(self) -> None:
        deadline = time.monotonic() - self.pool.idle_timeout_s
        for key in list(self.by_key):
            for inst in sorted(self.by_key.get(key, []), key=lambda i: i.last_used):
                if inst.busy == 0 and inst.last_used < deadline and self._surplus(key) > 0:
                    self.retire(inst, "reclaimed")

    # ---- shutdown ------------------------------------------------------------------------------

    def busy_count(self) -> int:
        return sum(i.busy for i in self.instances.values())

    async def close(self) -> None:
        self.closing = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        for inst in list(self.instances.values()):
            self.retire(inst, "shutdown")
        async with self.cond:
            self.cond.notify_all()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ---- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        def summary(instances: list[Instance]) -> dict[str, int]:
            busy = sum(1 for i in instances if i.busy)
            return {"warm": len(instances), "busy": busy, "idle": len(instances) - busy}

        runtimes: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self.runtimes)):
            bound = [i for i in self.instances.values() if i.runtime.name == name and i.key is not None]
            entry: dict[str, Any] = summary(bound)
            entry["generic"] = len(self.generic.get(name, ()))
            entry.update({"coldStarts": 0, "adoptions": 0, **self.events.get(f"runtime:{name}", {})})
            runtimes[name] = entry
        bundles: dict[str, dict[str, Any]] = {}
        labels = {i.bundle_key for i in self.instances.values() if i.bundle_key} | {
            k.removeprefix("bundle:") for k in self.events if k.startswith("bundle:")
        }
        for label in sorted(labels):
            entry = summary([i for i in self.instances.values() if i.bundle_key == label])
            entry["pinned"] = sum(p.count for p in self.pins.values() if p.plan.bundle_key == label)
            entry.update({"coldStarts": 0, "adoptions": 0, **self.events.get(f"bundle:{label}", {})})
            bundles[label] = entry
        return {
            "instances": len(self.instances),
            "starting": sum(self.reserved.values()),
            "busy": sum(1 for i in self.instances.values() if i.busy),
            "maxInstances": self.pool.max_instances,
            "maxPerBundle": self.pool.max_per_bundle,
            "closing": self.closing,
            "runtimes": runtimes,
            "bundles": bundles,
        }
