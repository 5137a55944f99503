"""SandboxExecutor: the Executor built from a backend, the runtimes and a warm pool."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import structlog
from pydantic import ValidationError

from sandboxes.backends.base import Backend
from sandboxes.cgroups import CgroupManager
from sandboxes.errors import Rejected
from sandboxes.launcher import Launcher
from sandboxes.models import ExecRequest, ExecResponse
from sandboxes.policy import Plan, make_plan
from sandboxes.pool import Closing, Instance, Pool
from sandboxes.process import Counters, InstanceDied, OutputExceeded
from sandboxes.runtimes import Runtime
from sandboxes.settings import SandboxSettings

log = structlog.get_logger(__name__)
PLAN_CACHE_SIZE = 1024
HEAP_OOM_MARKERS = ("out of memory", "MemoryError")


class SandboxExecutor:
    def __init__(
        self, settings: SandboxSettings, backend: Backend, cgroups: CgroupManager | None, runtimes: dict[str, Runtime]
    ) -> None:
        self.settings = settings
        self._backend = backend
        self.cgroups = cgroups
        self.runtimes = runtimes
        self.launcher = Launcher(settings, backend, cgroups)
        self.pool = Pool(settings, self.launcher, runtimes)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started: asyncio.Future[None] | None = None
        self._closed = False
        self._plans: dict[tuple[Any, ...], Plan] = {}

    @property
    def backend(self) -> str:
        return self._backend.name

    async def __aenter__(self) -> SandboxExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Idempotent: prepare runtime caches, start maintenance and the configured prewarm."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await asyncio.to_thread(self.launcher.ensure_dirs)
        available = [r for r in self.runtimes.values() if r.availability() is None]
        await asyncio.gather(*(self.launcher.prepare(r) for r in available))
        self.pool.start_maintenance()
        await asyncio.gather(*self.launcher.refill_spares())
        for name in self.pool.generic_floor:
            self.pool._spawn_task(self.pool.warm_runtime(self.runtimes[name], self.pool.generic_floor[name]))

    # ---- Executor --------------------------------------------------------------------------------

    async def execute(self, request: ExecRequest) -> ExecResponse:
        t0 = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - t0) * 1000, 3)

        try:
            await self.start()
            plan = self._plan(request)
            if not request.endpoint:
                raise Rejected("endpoint is required")
        except Rejected as rejected:
            return ExecResponse.failure(rejected.kind, str(rejected), elapsed_ms=elapsed())  # type: ignore[arg-type]
        if self.pool.closing:
            return ExecResponse.failure("error", "executor is draining; retry on another runner", elapsed_ms=elapsed())
        self._inflight += 1
        self._idle.clear()
        inst: Instance | None = None
        cold = True
        reuse = False
        try:
            async with asyncio.timeout(plan.timeout):
                inst, how = await self.pool.acquire(plan)
                cold = how != "warm"
                response, reuse = await self._call(inst, plan, request)
        except TimeoutError:
            phase = "running" if inst is not None else "waiting for an instance"
            response = ExecResponse.failure("timeout", f"timed out after {plan.timeout:g}s ({phase})")
        except Closing as closing:
            response = ExecResponse.failure("error", str(closing))
        except Exception as error:  # noqa: BLE001 - a sandbox failure is an answer, not a crash
            log.exception("sandbox.execute_failed", bundle=request.bundle_key)
            response = ExecResponse.failure("error", f"sandbox failure: {error}", crashed=True)
        finally:
            if inst is not None:
                await self.pool.release(inst, reuse=reuse)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        response.metrics.execution_time_ms = elapsed()
        response.metrics.cold_start = cold
        return response

    def _plan(self, request: ExecRequest) -> Plan:
        """make_plan, memoised on the fields that shape it (path checks are not repeated per call)."""
        p, limits = request.permissions, request.limits
        key = (
            request.bundle_key, request.mime_type, request.code_path, tuple(p.net), tuple(p.read), tuple(p.write),
            tuple(p.env), tuple(sorted(request.env.items())), limits.memory_mb, limits.pids, limits.output_bytes,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = make_plan(request, settings=self.settings, runtimes=self.runtimes, isolating=self._backend.isolating)
            if plan.warning:
                log.warning("sandbox.uncontained", bundle=request.bundle_key, detail=plan.warning)
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan if plan.timeout == request.timeout else replace(plan, timeout=request.timeout)

    async def _call(self, inst: Instance, plan: Plan, request: ExecRequest) -> tuple[ExecResponse, bool]:
        message = request.to_wire()
        message.update(
            op="call",
            codePath=inst.code_path,
            limits={"memoryMb": plan.memory_mb, "pids": plan.pids, "outputBytes": plan.output_bytes},
        )
        before = inst.counters
        try:
            reply = await inst.process.request(message, plan.output_bytes, close_stdin=not plan.runtime.warm)
        except OutputExceeded as error:
            return ExecResponse.failure("limitExceeded", str(error)), False
        except InstanceDied as error:
            return await self._explain_death(inst, plan, before, str(error)), False
        after = inst.process.counters()
        verdict = self._limit_verdict(before, after, plan)
        if verdict is not None:
            return ExecResponse.failure("limitExceeded", verdict), False
        inst.counters = after
        if isinstance(reply, dict):
            reply.pop("crashed", None)  # only the executor itself may say an instance crashed
        try:
            return ExecResponse.model_validate(reply), True
        except ValidationError as error:
            return ExecResponse.failure("error", f"executor sent an invalid reply: {error.errors()[0]['msg']}",
                                        crashed=True), False

    @staticmethod
    def _limit_verdict(before: Counters, after: Counters, plan: Plan) -> str | None:
        if after.oom_kills > before.oom_kills:
            return f"memory limit of {plan.memory_mb} MB exceeded"
        if after.pids_max > before.pids_max:
            return f"process limit of {plan.pids} reached (fork refused)"
        return None

    async def _explain_death(self, inst: Instance, plan: Plan, before: Counters, reason: str) -> ExecResponse:
        code = await inst.process.settle()
        verdict = self._limit_verdict(before, inst.process.counters(), plan)
        stderr = inst.process.stderr_text()
        if verdict is None and any(marker in stderr for marker in HEAP_OOM_MARKERS):
            verdict = f"memory limit of {plan.memory_mb} MB exceeded (heap)"
        if verdict is not None:
            return ExecResponse.failure("limitExceeded", verdict)
        tail = stderr.strip().splitlines()[-3:]
        detail = f" (exit {code})" if code is not None else ""
        return ExecResponse.failure("error", f"{reason}{detail}" + (": " + " | ".join(tail) if tail else ""),
                                    crashed=True)

    async def warm(self, target: ExecRequest | str, count: int = 1) -> int:
        await self.start()
        if self.pool.closing:
            return 0
        if isinstance(target, str):
            runtime = self.runtimes.get(target)
            if runtime is None or not runtime.warm:
                raise Rejected(f"no warm-capable runtime named {target!r}")
            return await self.pool.warm_runtime(runtime, count)
        plan = self._plan(target)
        if not plan.runtime.warm:
            raise Rejected(f"runtime {plan.runtime.name} keeps no warm instances")
        return await self.pool.warm_bundle(plan, count)

    async def stats(self) -> dict[str, Any]:
        return {
            "backend": self._backend.name,
            "isolating": self._backend.isolating,
            "cgroups": self.cgroups.describe() if self.cgroups else None,
            "inflight": self._inflight,
            "closing": self.pool.closing or self._closed,
            "spares": self.launcher.spare_count(),
            **self.pool.stats(),
        }

    async def drain(self, timeout: float | None = None) -> None:
        deadline = self.settings.pool.drain_timeout_s if timeout is None else timeout
        self.pool.closing = True
        async with self.pool.cond:
            self.pool.cond.notify_all()  # queued callers learn we are closing
        try:
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        except TimeoutError:
            log.warning("sandbox.drain_deadline", inflight=self._inflight)
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started is not None and not self._started.done():
            self._started.cancel()
        await self.pool.close()
        await self.launcher.close()
