"""Event → result latency through a real runner, against one bare createRecord round trip.

Boots the loopback PLC + PDS, starts `at-rund serve` (isolation none, a warm
bundle, a grant so results go to the author's repo), then posts invocations one
at a time. Latency runs from the moment the invocation's commit appears on the
PDS firehose (the event the runner reacts to) to the moment the result's commit
appears there. The baseline is a createRecord round trip to the same PDS,
measured in the same run. Last line: {"p50_ms", "p95_ms", "create_record_ms", "ratio"}.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: its directory must not shadow the standard library's `http` (httpx needs it).
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import tempfile
import time

import httpx
import libipld
import websockets

from reactor.records import now_datetime  # noqa: E402
from reactor.sealed import seal  # noqa: E402
from tests.atnet import TestNetwork  # noqa: E402
from tests.helpers import cli_env, free_port, run_cli  # noqa: E402

HELLO = b"export async function hello(args, ctx) { return { n: args.n }; }\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class FirehoseWatch:
    """Timestamps the first sighting of each record path we wait for."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
        self.seen: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            self.ready.set()
            async for frame in ws:
                now = time.perf_counter()
                header, body = libipld.decode_dag_cbor_multi(frame)
                if header.get("t") != "#commit":
                    continue
                for op in body.get("ops", []):
                    key = f"{body['repo']}/{op['path']}"
                    self.seen[key] = now
                    waiter = self.waiters.pop(key, None)
                    if waiter and not waiter.done():
                        waiter.set_result(now)

    async def wait(self, key: str, timeout: float = 30) -> float:
        if key in self.seen:
            return self.seen[key]
        future = asyncio.get_running_loop().create_future()
        self.waiters[key] = future
        return await asyncio.wait_for(future, timeout)


async def bare_create_records(pds: str, did: str, password: str, count: int) -> list[float]:
    """createRecord round trips on one kept-alive connection with one session: what the runner's writer does."""
    async with httpx.AsyncClient(base_url=pds, timeout=30) as http:
        session = (await http.post("/xrpc/com.atproto.server.createSession",
                                   json={"identifier": did, "password": password})).json()
        headers = {"authorization": f"Bearer {session['accessJwt']}"}
        times = []
        for n in range(count + 5):
            body = {"repo": did, "collection": "app.bsky.feed.post",
                    "record": {"$type": "app.bsky.feed.post", "text": f"baseline {n}", "createdAt": now_datetime()}}
            started = time.perf_counter()
            response = await http.post("/xrpc/com.atproto.repo.createRecord", json=body, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if n >= 5:  # the first few warm the connection
                times.append(elapsed)
        return times


async def main(count: int) -> dict[str, float]:
    async with TestNetwork() as net:
        runner = await net.create_account("runner")
        alice = await net.create_account("alice")
        home = Path(tempfile.mkdtemp(prefix="at-rund-bench-"))
        print(f"runner home: {home}", file=sys.stderr)
        assert run_cli(home, "init").returncode == 0
        port = free_port()
        (home / "config.toml").write_text(
            f'did = "{runner.did}"\nport = {port}\nisolation = "none"\n'
            f'[atproto]\nplc_url = "{net.plc_url}"\nfirehose = "{net.pds_url}"\n'
            f'[observability]\nlog_level = "warning"\n'
        )
        env = cli_env(home)
        keys = json.loads(run_cli(home, "keys", "--json").stdout)
        box = seal(keys["encryptionKey"], json.dumps(
            {"identifier": alice.did, "password": await alice.app_password("bench")}).encode())
        await alice.put_record("dev.atrun.grant", runner.did, {
            "$type": "dev.atrun.grant", "runner": runner.did,
            "box": {"$bytes": base64.b64encode(box).decode().rstrip("=")}, "createdAt": now_datetime()})

        watch = FirehoseWatch(net.pds_url)
        watcher = asyncio.create_task(watch.run())
        await watch.ready.wait()
        proc = subprocess.Popen([sys.executable, "-m", "reactor.cli", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=(home / "runner.log").open("wb"))
        try:
            blob = await alice.upload_blob(HELLO, "application/javascript")
            bundle = await alice.put_record("dev.atrun.bundle", "hello", {
                "$type": "dev.atrun.bundle", "name": "hello", "code": blob, "prewarm": True,
                "createdAt": now_datetime()})

            async def invoke(n: int) -> float:
                ref = await alice.create_record("dev.atrun.invocation", {
                    "$type": "dev.atrun.invocation", "runner": runner.did,
                    "bundle": {"uri": bundle.uri, "cid": bundle.cid}, "endpoint": "hello", "args": {"n": n},
                    "createdAt": now_datetime()})
                event = await watch.wait(f"{alice.did}/dev.atrun.invocation/{ref.rkey}")
                result = await watch.wait(f"{alice.did}/dev.atrun.result/{ref.rkey}")
                return (result - event) * 1000

            await asyncio.sleep(1.0)
            for n in range(5):  # warm-up: runner connected, bundle cached and warm, grant session open
                await invoke(-n - 1)
            latencies = [await invoke(n) for n in range(count)]

            creates = await bare_create_records(net.pds_url, alice.did, alice.password, count)
        finally:
            proc.terminate()
            proc.wait(30)
            watcher.cancel()

    create_ms = statistics.median(creates)
    p50 = statistics.median(latencies)
    figures = {"p50_ms": round(p50, 2), "p95_ms": round(pct(latencies, 0.95), 2),
               "create_record_ms": round(create_ms, 2), "ratio": round(p50 / create_ms, 2)}
    print(f"invocations: {count}; event→result p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
          f"min {min(latencies):.2f} ms")
    print(f"bare createRecord round trip (median of {count}): {figures['create_record_ms']} ms")
    print(f"ratio p50 / createRecord: {figures['ratio']} (target ≤ 2)")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=60)
    print(json.dumps(asyncio.run(main(parser.parse_args().count))))
