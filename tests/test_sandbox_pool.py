"""Warm pool on real backends: prewarm, adoption, reclaim, replacement, caps, drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxes import DefaultLimits, Executor, Isolation, PoolSettings, SandboxSettings, create_executor
from tests.test_sandbox_helpers import State, backend_params, call, make_state

pytestmark = pytest.mark.asyncio(loop_scope="session")

SOURCE = """
export async function hello(args, ctx) { return { hello: args?.name ?? "world", token: ctx.env.TOKEN ?? null }; }
export async function slow(args) { await new Promise((r) => setTimeout(r, args.ms)); return "slept"; }
export function crash() { Deno.exit(3); }
export function spin() { for (;;) {} }
"""


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> Isolation:
    return request.param


@pytest.fixture
def state(tmp_path: Path) -> State:
    return make_state(tmp_path / "state")


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Executor]]:
    executors: list[Executor] = []
    yield executors
    for ex in executors:
        await ex.shutdown()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def executor(backend: Isolation, state: State, cleanup: list[Executor], **pool: Any) -> Executor:
    settings = SandboxSettings(
        state_dir=state.root, isolation=backend, limits=DefaultLimits(timeout_s=5), pool=PoolSettings(**pool)
    )
    ex = create_executor(settings)
    cleanup.append(ex)
    return ex


async def test_prewarmed_bundle_first_call_is_warm(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup)
    path = state.bundle("warm", "main.ts", SOURCE)
    request = call(path, "hello", env={"TOKEN": "t1"})
    assert await ex.warm(request, 2) == 2
    response = await ex.execute(request)
    assert response.success, response.error
    assert response.metrics.cold_start is False
    assert response.data == {"hello": "world", "token": "t1"}
    stats = await ex.stats()
    assert json.loads(json.dumps(stats)) == stats  # plain JSON-able
    bundle = stats["bundles"][request.bundle_key]
    assert bundle["warm"] == 2 and bundle["pinned"] == 2 and bundle["coldStarts"] == 2
    # Different secrets mean a different sandbox: never served by the pinned instances.
    other = await ex.execute(call(path, "hello", env={"TOKEN": "t2"}))
    assert other.metrics.cold_start is True and other.data["token"] == "t2"
    assert await ex.warm(request, 0) == 2  # unpinned; idle reclaim may now take them


async def test_idle_instances_are_reclaimed(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup, idle_timeout_s=0.3)
    path = state.bundle("idle", "main.ts", SOURCE)
    first = await ex.execute(call(path, "hello"))
    second = await ex.execute(call(path, "hello"))
    assert first.metrics.cold_start and not second.metrics.cold_start

    async def reclaimed() -> bool:
        stats = await ex.stats()
        return stats["instances"] == 0 and stats["runtimes"]["deno"].get("reclaimed", 0) == 1

    await eventually(reclaimed)
    third = await ex.execute(call(path, "hello"))
    assert third.success and third.metrics.cold_start


async def test_generic_prewarm_adopts_bundles(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup, prewarm={"deno": 1})
    path = state.bundle("adopt", "main.ts", SOURCE)

    async def generic_ready() -> bool:
        return (await ex.stats())["runtimes"]["deno"]["generic"] == 1

    await eventually(generic_ready)
    response = await ex.execute(call(path, "hello", {"name": "adopted"}, env={"TOKEN": "s"}))
    assert response.success, response.error
    assert response.data == {"hello": "adopted", "token": "s"}
    stats = await ex.stats()
    assert stats["runtimes"]["deno"]["adoptions"] == 1
    assert stats["bundles"][call(path, "hello").bundle_key]["coldStarts"] == 0
    warm = await ex.execute(call(path, "hello", env={"TOKEN": "s"}))
    assert warm.metrics.cold_start is False
    await eventually(generic_ready)  # the generic floor is refilled
    # Bundles needing network can't adopt a no-network generic host: they start their own.
    net = await ex.execute(call(path, "hello", permissions={"net": ["127.0.0.1:9"]}))
    assert net.success and (await ex.stats())["runtimes"]["deno"]["adoptions"] == 1


async def test_crashed_and_timed_out_instances_are_replaced(
    backend: Isolation, state: State, cleanup: list[Executor]
) -> None:
    ex = executor(backend, state, cleanup)
    path = state.bundle("crashy", "main.ts", SOURCE)
    assert (await ex.execute(call(path, "hello"))).success
    crashed = await ex.execute(call(path, "crash"))
    assert not crashed.success and crashed.error_kind == "error" and "exit 3" in (crashed.error or "")
    after_crash = await ex.execute(call(path, "hello"))
    assert after_crash.success and after_crash.metrics.cold_start  # a new instance, not the dead one
    timed_out = await ex.execute(call(path, "spin", timeout=0.5))
    assert timed_out.error_kind == "timeout"
    after_timeout = await ex.execute(call(path, "hello"))
    assert after_timeout.success and after_timeout.metrics.cold_start
    stats = (await ex.stats())["bundles"][call(path, "hello").bundle_key]
    assert stats["replaced"] == 2 and stats["warm"] == 1


async def test_per_bundle_cap_queues_calls(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup, max_per_bundle=1, max_instances=2)
    path = state.bundle("capped", "main.ts", SOURCE)
    start = time.monotonic()
    results = await asyncio.gather(*(ex.execute(call(path, "slow", {"ms": 200})) for _ in range(3)))
    assert all(r.success for r in results), [r.error for r in results]
    assert time.monotonic() - start >= 0.6  # one instance, one call at a time
    stats = await ex.stats()
    assert stats["bundles"][call(path, "slow").bundle_key]["coldStarts"] == 1
    # At the global cap, an idle instance of another bundle is evicted to make room.
    other = state.bundle("other", "main.ts", SOURCE)
    third = state.bundle("third", "main.ts", SOURCE)
    assert (await ex.execute(call(other, "hello"))).success
    assert (await ex.execute(call(third, "hello"))).success
    stats = await ex.stats()
    assert stats["instances"] <= 2 and stats["runtimes"]["deno"]["evicted"] >= 1


async def test_drain_finishes_inflight_work(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup)
    path = state.bundle("drain", "main.ts", SOURCE)
    assert (await ex.execute(call(path, "hello"))).success  # warm it so the slow call starts at once
    slow = asyncio.create_task(ex.execute(call(path, "slow", {"ms": 700})))
    await asyncio.sleep(0.2)
    drain = asyncio.create_task(ex.drain(timeout=5))
    await asyncio.sleep(0.05)
    refused = await ex.execute(call(path, "hello"))
    assert not refused.success and "draining" in (refused.error or "")
    result = await slow
    assert result.success and result.data == "slept"
    await asyncio.wait_for(drain, 5)
    stats = await ex.stats()
    assert stats["instances"] == 0 and stats["closing"]


async def test_drain_deadline_cuts_stragglers(backend: Isolation, state: State, cleanup: list[Executor]) -> None:
    ex = executor(backend, state, cleanup)
    path = state.bundle("straggler", "main.ts", SOURCE)
    slow = asyncio.create_task(ex.execute(call(path, "slow", {"ms": 10_000})))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    await ex.drain(timeout=0.3)
    assert time.monotonic() - start < 3
    result = await slow
    assert not result.success and result.error_kind == "error"
