"""HTTP API latency and throughput next to the bare Executor, measured in the same run.

Boots a loopback PLC + PDS (tests.atnet), publishes a hello bundle, runs a real
`at-rund serve --dev` subprocess on a free port (isolation `none` by default) and drives it
from this process with a small keep-alive HTTP/1.1 client (httpx would cost more CPU per
request than the server does, on the same 2 cores):

  * invoke: `POST /xrpc/dev.atrun.invoke`, each request with its own service-auth token.
    Tokens are minted up front by the PDS (`com.atproto.server.getServiceAuth`, distinct
    `jti`, exp = now + 280 s) because minting one costs more than the call; verifying it
    (claims, cached DID key, signature, jti) is part of what is measured.
  * b: `GET /b/{did}/{bundle}/hello`: public, no token, the bundle gets ctx.request.
  * bare: the same bundle and endpoint through `sandboxes.create_executor` directly (same
    isolation, warmed), once shaped like an invoke call and once like a /b/ call.

Each series runs at concurrency 1 (latency p50/p95) and 32 (throughput; one connection per
worker); warm-up requests are not counted. Overhead = p50 through HTTP - p50 bare. Each line
also shows CPU time per request of the server process, its sandbox processes and this client
(all share the machine's cores, so the server's CPU per request bounds the req/s).
Targets: <= 2 ms added at p50, >= 1,000 req/s at concurrency 32 on a 2-core machine.
The last line is one JSON object; its main keys are for invoke, `b_*` for the /b/ route:

    {"p50_ms", "p95_ms", "bare_ms", "overhead_ms", "rps_c32", "rps_c1", "ratio", "b_p50_ms", ...}

Usage: python bench/http.py [--requests N] [--c32-requests N] [--isolation none|bwrap]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: its directory must not shadow the standard library's `http`.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from sandboxes import (
    ExecRequest,
    HttpRequest,
    Limits,
    PoolSettings,
    SandboxSettings,
    create_executor,
)
from tests.atnet import TestNetwork, ensure_installed
from tests.http_kit import ServeProcess, service_token
from tests.runner_kit import publish_bundle

BUNDLE = b"""export async function hello(args, ctx) {
  return { greeting: `hello ${args?.name ?? "world"}` };
}
"""
CONCURRENCY = 32
BIG = 10**9


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def show(label: str, samples: list[float], rps: float | None = None, cpu: dict[str, float] | None = None) \
        -> dict[str, float]:
    stats = {"p50": round(statistics.median(samples), 3), "p95": round(pct(samples, 0.95), 3)}
    extra = f"  {rps:>6.0f} req/s" if rps is not None else ""
    if cpu:
        extra += "  cpu/req: " + " ".join(f"{k} {v:.3f}" for k, v in cpu.items()) + " ms"
    print(f"{label:<26} n={len(samples):<6} p50={stats['p50']:>7.3f} ms  p95={stats['p95']:>7.3f} ms{extra}",
          flush=True)
    return stats


class Connection:
    """One keep-alive HTTP/1.1 connection; enough protocol for uvicorn's Content-Length replies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


Request = Callable[[Connection], Awaitable[None]]
_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(server: int) -> dict[str, float]:
    """CPU time (ms) used so far by the live server process and by its descendants (the sandboxes)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # ppid (fields counted after "pid (comm)")
        used[pid] = (int(fields[11]) + int(fields[12])) * _TICK_MS  # utime + stime
    totals = {"server": used.get(server, 0.0), "sandboxes": 0.0}
    for pid, cpu in used.items():
        ancestor = parents.get(pid, 0)
        while ancestor > 1 and ancestor != server:
            ancestor = parents.get(ancestor, 0)
        if ancestor == server and pid != server:
            totals["sandboxes"] += cpu
    return totals


async def run_series(port: int, one: Request, count: int, concurrency: int, warmup: int,
                     server: int | None = None) -> tuple[list[float], float, dict[str, float]]:
    """`count` requests by `concurrency` workers (one connection each): latencies (ms), req/s and the
    CPU time per request (ms) of the server, its sandboxes and this client."""
    conns = [await Connection("127.0.0.1", port).open() for _ in range(concurrency)]
    try:
        for i in range(warmup):
            await one(conns[i % concurrency])
        latencies: list[float] = []
        remaining = count

        async def worker(conn: Connection) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                await one(conn)
                latencies.append((time.perf_counter() - start) * 1000)

        before = cpu_ms(server) if server else {}
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - started
        cpu = {k: (v - before.get(k, 0.0)) / count for k, v in (cpu_ms(server) if server else {}).items()}
        cpu["client"] = (time.process_time() - client_before) * 1000 / count
        return latencies, count / elapsed, cpu
    finally:
        for conn in conns:
            await conn.close()


async def mint_tokens(account: Any, aud: str, count: int) -> list[str]:
    """`count` service-auth tokens from the PDS, 16 requests at a time."""
    exp = int(time.time()) + 280
    tokens: list[str] = []
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            tokens.append(await service_token(account, aud, exp=exp))

    await asyncio.gather(*(one() for _ in range(count)))
    assert len(set(tokens)) == count
    return tokens


async def bare_series(isolation: str, count: int, warmup: int) -> dict[str, list[float]]:
    """The same bundle through the Executor directly: invoke-shaped and /b/-shaped calls."""
    with tempfile.TemporaryDirectory(prefix="bench-http-bare-") as tmp:
        root = Path(tmp)
        code = root / "bundles" / "bench" / "bundle.js"
        code.parent.mkdir(parents=True)
        code.write_bytes(BUNDLE)
        settings = SandboxSettings(state_dir=root / "home", isolation=isolation, dev=True,  # type: ignore[arg-type]
                                   pool=PoolSettings(prewarm={}))
        executor = create_executor(settings)
        await executor.start()
        base: dict[str, Any] = {
            "bundle_key": "at://bench/dev.atrun.bundle/hello#cid", "mime_type": "application/javascript",
            "code_path": str(code), "endpoint": "hello", "timeout": 10.0,
            "limits": Limits(memory_mb=128, pids=32, output_bytes=256 * 1024),
        }
        shapes = {
            "invoke": ExecRequest(**base, args={"name": "bench"}),
            "b": ExecRequest(**base, args={}, request=HttpRequest(
                method="GET", path="/", headers={"user-agent": "bench", "accept": "*/*"})),
        }
        out: dict[str, list[float]] = {}
        try:
            await executor.warm(shapes["invoke"], 1)
            for name, request in shapes.items():
                for _ in range(warmup):
                    assert (await executor.execute(request)).success
                samples = []
                for _ in range(count):
                    start = time.perf_counter()
                    response = await executor.execute(request)
                    samples.append((time.perf_counter() - start) * 1000)
                    assert response.success and not response.metrics.cold_start, response
                out[name] = samples
        finally:
            await executor.shutdown()
        return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests at concurrency 1")
    parser.add_argument("--c32-requests", type=int, default=4000, help="measured requests at concurrency 32")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--isolation", default="none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    ensure_installed()
    async with TestNetwork() as net:
        runner = await net.create_account("runner")
        author = await net.create_account("author")  # author of the bundle and the invoking caller
        uri, _ = await publish_bundle(author, "hello", BUNDLE)
        with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
            unlimited = {"concurrent": 1000, "per_minute": BIG}
            serve = ServeProcess(Path(tmp) / "home", {
                "did": runner.did, "isolation": args.isolation,
                "atproto": {"plc_url": net.plc_url, "firehose": net.pds_url},
                "quotas": {"per_did": {author.did: unlimited}},
                "observability": {"log_level": "warning"},
            })
            await serve.start()
            try:
                assert serve.proc is not None
                results = await measure(serve.port, serve.proc.pid, runner.did, author, uri, args)
            finally:
                code = await serve.stop()
            if code != 0:
                print(serve.logs()[-3000:], file=sys.stderr)
    bare = await bare_series(args.isolation, args.requests, args.warmup)
    report(results, bare)


async def measure(port: int, server: int, runner_did: str, author: Any, uri: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    body = json.dumps({"bundle": uri, "endpoint": "hello", "args": {"name": "bench"}}).encode()

    for concurrency, count in ((1, args.requests), (CONCURRENCY, args.c32_requests)):
        started = time.perf_counter()
        minted = iter(await mint_tokens(author, runner_did, count + args.warmup))
        print(f"minted {count + args.warmup} tokens in {time.perf_counter() - started:.1f} s", flush=True)

        async def invoke(conn: Connection, tokens: Any = minted) -> None:
            status, reply = await conn.request("POST", "/xrpc/dev.atrun.invoke", {
                "authorization": f"Bearer {next(tokens)}", "content-type": "application/json"}, body)
            assert status == 200, reply

        results[f"invoke_c{concurrency}"] = await run_series(port, invoke, count, concurrency, args.warmup, server)

    path = f"/b/{author.did}/hello/hello"

    async def route(conn: Connection) -> None:
        status, reply = await conn.request("GET", path, {"user-agent": "bench", "accept": "*/*"})
        assert status == 200, reply

    for concurrency, count in ((1, args.requests), (CONCURRENCY, args.c32_requests)):
        results[f"b_c{concurrency}"] = await run_series(port, route, count, concurrency, args.warmup, server)
    return results


def report(results: dict[str, Any], bare: dict[str, list[float]]) -> None:
    print()
    stats: dict[str, Any] = {}
    for name in ("invoke", "b"):
        c1, rps1, cpu1 = results[f"{name}_c1"]
        c32, rps32, cpu32 = results[f"{name}_c32"]
        one = show(f"{name} c=1", c1, rps1, cpu1)
        show(f"{name} c={CONCURRENCY}", c32, rps32, cpu32)
        raw = show(f"bare executor ({name})", bare[name])
        stats[name] = {
            "p50_ms": one["p50"], "p95_ms": one["p95"], "bare_ms": raw["p50"],
            "overhead_ms": round(one["p50"] - raw["p50"], 3), "ratio": round(one["p50"] / raw["p50"], 2),
            "rps_c1": round(rps1), "rps_c32": round(rps32), "server_cpu_ms_c32": round(cpu32.get("server", 0), 3),
        }
    inv, b = stats["invoke"], stats["b"]
    print(f"\ninvoke adds {inv['overhead_ms']:.3f} ms at p50 ({inv['ratio']}x bare), {inv['rps_c32']} req/s at c=32; "
          f"/b/ adds {b['overhead_ms']:.3f} ms ({b['ratio']}x), {b['rps_c32']} req/s "
          f"(targets: <= 2 ms, >= 1000 req/s)")
    summary = {k: inv[k] for k in ("p50_ms", "p95_ms", "bare_ms", "overhead_ms", "rps_c32", "rps_c1", "ratio",
                                    "server_cpu_ms_c32")}
    summary.update({f"b_{k}": v for k, v in b.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
