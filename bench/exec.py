"""Executor latency next to bare Deno, measured in the same run.

For each available backend: cold start (fresh executor, first call) and warm call latency of a
hello-world bundle, next to a bare `deno run` and a bare warm-import call (a Deno process that
imported the module once and answers JSON lines over the same kind of pipes). Prints min, median
and p95 per series, then one JSON line of medians and ratios:

    {"bare": {"cold_ms", "warm_ms"}, "backends": {"<name>": {"cold_ms", "warm_ms", "cold_ratio", "warm_overhead_ms"}}}

Targets: cold/bare <= 1.2x for none, <= 1.5x for bwrap; warm call adds <= 1 ms over bare warm.
Usage: python bench/exec.py [--cold N] [--warm N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandboxes import (  # noqa: E402
    ExecRequest,
    Executor,
    PoolSettings,
    SandboxSettings,
    available_backends,
    create_executor,
)
from sandboxes.runtimes import load_runtimes  # noqa: E402

HELLO = 'export async function hello(args, ctx) { return { hello: args?.name ?? "world" }; }\n'
BARE_MAIN = (
    'import { hello } from "./hello.js";\n'
    'console.log(JSON.stringify(await hello({ name: "bench" }, { env: {} })));\n'
)
BARE_WARM = """
import { hello } from "./hello.js";
const out = Deno.stdout;
const enc = new TextEncoder();
const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let buf = "";
for (;;) {
  const { value, done } = await reader.read();
  if (done) break;
  buf += value;
  let i;
  while ((i = buf.indexOf("\\n")) >= 0) {
    const msg = JSON.parse(buf.slice(0, i));
    buf = buf.slice(i + 1);
    const data = await hello(msg.args, { env: {} });
    const line = enc.encode(JSON.stringify({ id: msg.id, success: true, data }) + "\\n");
    let n = 0;
    while (n < line.length) n += await out.write(line.subarray(n));
  }
}
"""


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"min": round(ordered[0], 3), "median": round(statistics.median(ordered), 3), "p95": round(p95, 3)}


def show(label: str, samples: list[float]) -> dict[str, float]:
    stats = summary(samples)
    print(
        f"{label:<30} n={len(samples):<4} min={stats['min']:>8.3f} ms  "
        f"median={stats['median']:>8.3f} ms  p95={stats['p95']:>8.3f} ms"
    )
    return stats


class BareDeno:
    """`deno run` of a main module importing the bundle, and a warm process calling it over pipes."""

    def __init__(self, deno: str, work: Path, cache: Path) -> None:
        self.deno, self.work = deno, work
        self.env = {"PATH": "/usr/bin:/bin", "DENO_DIR": str(cache), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
        self.flags = ["run", "--quiet", "--no-prompt", "--no-config", "--no-lock", f"--allow-read={work}"]
        self.proc: asyncio.subprocess.Process | None = None
        self.ids = iter(range(1, 1 << 30))

    async def cold(self) -> float:
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            self.deno, *self.flags, str(self.work / "main.js"),
            env=self.env, cwd=self.work, stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        elapsed = (time.perf_counter() - start) * 1000
        assert proc.returncode == 0 and b"bench" in out, out
        return elapsed

    async def start_warm(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.deno, *self.flags, str(self.work / "warm.js"), env=self.env, cwd=self.work,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )

    async def warm(self) -> float:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        start = time.perf_counter()
        self.proc.stdin.write(json.dumps({"id": next(self.ids), "args": {"name": "bench"}}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = json.loads(await self.proc.stdout.readline())
        elapsed = (time.perf_counter() - start) * 1000
        assert reply["success"], reply
        return elapsed

    async def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            await self.proc.wait()


async def cold_call(settings: SandboxSettings, request: ExecRequest) -> float:
    """A fresh, started executor (spares ready, as in a running daemon) and its first call."""
    executor = create_executor(settings)
    try:
        await executor.start()
        start = time.perf_counter()
        response = await executor.execute(request)
        elapsed = (time.perf_counter() - start) * 1000
        assert response.success and response.metrics.cold_start, response
        return elapsed
    finally:
        await executor.shutdown()


async def warm_call(executor: Executor, request: ExecRequest) -> float:
    start = time.perf_counter()
    response = await executor.execute(request)
    elapsed = (time.perf_counter() - start) * 1000
    assert response.success and not response.metrics.cold_start, response
    return elapsed


async def measure(deno: str, root: Path, cold_n: int, warm_n: int) -> dict[str, object]:
    work = root / "bare"
    work.mkdir()
    (work / "hello.js").write_text(HELLO)
    (work / "main.js").write_text(BARE_MAIN)
    (work / "warm.js").write_text(BARE_WARM)
    state = root / "state"
    bundle = state / "bundles" / "hello"
    bundle.mkdir(parents=True)
    (bundle / "hello.js").write_text(HELLO)
    request = ExecRequest(
        bundle_key="at://did:plc:bench/app.atrun.bundle/hello#v1", mime_type="application/javascript",
        code_path=str(bundle / "hello.js"), endpoint="hello", args={"name": "bench"},
    )
    names = []
    for name, why in available_backends().items():
        if name in ("none", "bwrap"):
            if why is None:
                names.append(name)
            else:
                print(f"{name:<30} skipped: {why}")
    settings = {n: SandboxSettings(state_dir=state, isolation=n) for n in names}  # type: ignore[arg-type]
    no_spare = {
        n: SandboxSettings(state_dir=state, isolation=n, pool=PoolSettings(spares=0))  # type: ignore[arg-type]
        for n in names
    }
    bare = BareDeno(deno, work, root / "bare-cache")

    cold: dict[str, list[float]] = {k: [] for k in ["bare", *names, *(f"{n}/nospare" for n in names)]}
    await bare.cold()  # fill the module cache, as a running runner's would be
    for name in names:
        await cold_call(settings[name], request)
    for _ in range(cold_n):  # interleaved: load from elsewhere on the machine hits every series alike
        cold["bare"].append(await bare.cold())
        for name in names:
            cold[name].append(await cold_call(settings[name], request))
            cold[f"{name}/nospare"].append(await cold_call(no_spare[name], request))

    await bare.start_warm()
    executors = {n: create_executor(settings[n]) for n in names}
    warm: dict[str, list[float]] = {k: [] for k in ["bare", *names]}
    try:
        for _ in range(20):
            await bare.warm()
            for name in names:
                await executors[name].execute(request)
        for _ in range(warm_n):
            warm["bare"].append(await bare.warm())
            for name in names:
                warm[name].append(await warm_call(executors[name], request))
    finally:
        await bare.stop()
        for executor in executors.values():
            await executor.shutdown()

    bare_cold = show("bare deno run (cold)", cold["bare"])["median"]
    bare_warm = show("bare warm import (call)", warm["bare"])["median"]
    backends: dict[str, dict[str, float]] = {}
    for name in names:
        cold_stats = show(f"{name} cold start", cold[name])
        show(f"{name} cold start, no spare", cold[f"{name}/nospare"])
        warm_stats = show(f"{name} warm call", warm[name])
        backends[name] = {
            "cold_ms": cold_stats["median"],
            "warm_ms": warm_stats["median"],
            "cold_ratio": round(cold_stats["median"] / bare_cold, 3),
            "warm_overhead_ms": round(warm_stats["median"] - bare_warm, 3),
        }
    return {"bare": {"cold_ms": bare_cold, "warm_ms": bare_warm}, "backends": backends}


async def main() -> int:
    parser = argparse.ArgumentParser(description="executor latency next to bare Deno")
    parser.add_argument("--cold", type=int, default=30)
    parser.add_argument("--warm", type=int, default=200)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    deno, reason = load_runtimes(None)["deno"].resolve_binary()
    if deno is None:
        print(f"deno unavailable: {reason}")
        return 1
    print(f"deno {deno}; hello-world bundle (JS); cold n={args.cold}, warm n={args.warm}; series interleaved")
    root = Path(tempfile.mkdtemp(prefix="at-rund-bench-"))
    try:
        result = await measure(str(deno), root, args.cold, args.warm)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
