"""Firehose ingest benchmark: our filter+verify path vs. naive full decoding.

Synthesizes realistic ``subscribeRepos`` traffic with real signed commits and
real CARs (MST proof nodes, records) from many repos with distinct keys:
mostly app.bsky posts/likes/follows/reposts/deletes, ~1% dev.atrun ops, and a
sprinkle of #identity/#account frames. Then times, on one core:

* ingest   - ``CommitFilter.select`` (no-decode peek at single-op commits, else
             header+body decode and op-path check), and for relevant commits ``check_rev`` +
             ``verify_commit`` (cached key, signature, MST proofs, record CIDs,
             Sync 1.1 inversion);
* decode-all - the same path without the no-decode peek: header+body are
             always decoded by libipld (shows what the peek buys);
* baseline - decode every frame and every CAR with libipld, nothing else.

The last line printed is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libipld

from reactor.sync import (
    ATRUN_COLLECTIONS,
    CommitEvent,
    CommitFilter,
    Event,
    KeyCache,
    SyncError,
    check_rev,
    verify_commit,
)
from reactor.sync.cid import cid_str
from reactor.sync.frames import commit_from_body, event_from_parts, split_frame
from reactor.sync.testing import RepoBuilder, Write, account_frame, identity_frame, now_iso, random_did
from reactor.sync.tid import make_tid

_VOCAB = (
    "the a to and of in is it you that for on this was with my just so but be have not are at like what "
    "about all one get when out up can your from if do no more how time now people day good new think "
    "today love know really going see got still some back want much them would make atproto firehose "
    "relay bluesky sandbox bundle deploy code run rust python coffee cat dog weather music art"
)
WORDS = tuple(_VOCAB.split())


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))


class Traffic:
    """Generates frames from a population of repos."""

    def __init__(self, n_dids: int, seed_records: int, rng: random.Random) -> None:
        self.rng = rng
        self.repos: list[RepoBuilder] = []
        self.live: list[list[str]] = []
        self.fake_cids = [cid_str(bytes((1, 0x71, 0x12, 0x20)) + rng.randbytes(32)) for _ in range(64)]
        self.other_dids = [random_did(rng) for _ in range(200)]
        self.n = 0
        self.base_us = int(time.time() * 1e6) - 86_400_000_000
        for i in range(n_dids):
            b = RepoBuilder(random_did(rng), curve="p256" if i % 20 == 0 else "secp256k1")
            writes = [
                self._write(b, "app.bsky.feed.like" if j % 2 else "app.bsky.feed.post") for j in range(seed_records)
            ]
            b.seed(writes)
            self.repos.append(b)
            self.live.append([w.path for w in writes])
        # Zipf-ish activity: a few very active accounts, a long tail.
        self.weights = [1.0 / (k + 1) ** 0.8 for k in range(n_dids)]

    def _rkey(self) -> str:
        """Unique TID record key, as clients mint them."""
        self.n += 1
        return make_tid(self.base_us + self.n, self.n % 1024)

    def _write(self, b: RepoBuilder, coll: str) -> Write:
        rng, now = self.rng, now_iso()
        if coll == "app.bsky.feed.post":
            rec = {"$type": coll, "text": _text(rng), "createdAt": now, "langs": ["en"]}
        elif coll in ("app.bsky.feed.like", "app.bsky.feed.repost"):
            rec = {
                "$type": coll,
                "subject": {
                    "uri": f"at://{rng.choice(self.other_dids)}/app.bsky.feed.post/{self._rkey()}",
                    "cid": rng.choice(self.fake_cids),
                },
                "createdAt": now,
            }
        elif coll == "app.bsky.graph.follow":
            rec = {"$type": coll, "subject": rng.choice(self.other_dids), "createdAt": now}
        elif coll == "dev.atrun.bundle":
            rec = {
                "$type": coll,
                "name": f"fn-{rng.getrandbits(24):x}",
                "code": {"$type": "blob", "mimeType": "application/javascript", "size": 1234},
                "runtime": "deno",
                "endpoints": ["main"],
                "createdAt": now,
            }
        else:  # dev.atrun.invocation
            rec = {
                "$type": coll,
                "runner": rng.choice(self.other_dids),
                "bundle": {"uri": f"at://{b.did}/dev.atrun.bundle/x", "cid": rng.choice(self.fake_cids)},
                "endpoint": "main",
                "args": {"n": rng.randint(0, 99)},
                "createdAt": now,
            }
        return Write("create", f"{coll}/{self._rkey()}", rec)

    def frame(self, relevant: bool) -> tuple[bytes, bool]:
        rng = self.rng
        idx = rng.choices(range(len(self.repos)), self.weights)[0]
        b, live = self.repos[idx], self.live[idx]
        if relevant:
            w = self._write(b, rng.choice(sorted(ATRUN_COLLECTIONS)))
        else:
            r = rng.random()
            if r < 0.06 and len(live) > 10:
                w = Write("delete", live.pop(rng.randrange(len(live))))
            else:
                coll = (
                    "app.bsky.feed.like"
                    if r < 0.55
                    else "app.bsky.feed.post"
                    if r < 0.78
                    else "app.bsky.graph.follow"
                    if r < 0.93
                    else "app.bsky.feed.repost"
                )
                w = self._write(b, coll)
        if w.action == "create":
            live.append(w.path)
        return b.commit([w]).frame, relevant

    def other_frame(self) -> bytes:
        b = self.rng.choice(self.repos)
        if self.rng.random() < 0.5:
            return identity_frame(b.did, handle=f"u{self.rng.getrandbits(20)}.test")
        return account_frame(b.did, True)


def generate(
    n: int, n_dids: int, relevant_frac: float, seed_records: int, seed: int
) -> tuple[list[bytes], dict[str, str]]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    traffic = Traffic(n_dids, seed_records, rng)
    print(f"seeded {n_dids} repos x {seed_records} records in {time.perf_counter() - t0:.1f}s", flush=True)
    frames: list[bytes] = []
    for i in range(n):
        if rng.random() < 0.003:
            frames.append(traffic.other_frame())
        else:
            frames.append(traffic.frame(rng.random() < relevant_frac)[0])
        if (i + 1) % 20000 == 0:
            print(f"  {i + 1} frames, {time.perf_counter() - t0:.1f}s", flush=True)
    keys = {b.did: b.did_key() for b in traffic.repos}
    return frames, keys


def ingest_path(frames: list[bytes], did_keys: dict[str, str], peek: bool = True) -> dict[str, int]:
    """decode -> filter -> (relevant) rev check + verify; returns counters."""
    filt = CommitFilter(ATRUN_COLLECTIONS)
    keys = KeyCache(4096)
    revs: dict[str, str] = {}
    select = filt.select
    collections = filt.collections
    stats = {"skipped": 0, "verified": 0, "records": 0, "other": 0, "rejected": 0}
    for frame in frames:
        try:
            ev = select(frame) if peek else _select_decoding(filt, frame)
            if ev is None:
                stats["skipped"] += 1
                continue
            if type(ev) is CommitEvent:
                check_rev(ev.rev, revs.get(ev.repo))
                out = verify_commit(ev, keys.get(did_keys[ev.repo]), collections)
                revs[ev.repo] = ev.rev
                stats["verified"] += 1
                stats["records"] += len(out.records)
            else:
                stats["other"] += 1
        except SyncError:
            stats["rejected"] += 1
    return stats


def _select_decoding(filt: CommitFilter, frame: bytes) -> Event | None:
    header, body = split_frame(frame)
    if header.get("t") == "#commit":
        cols = filt.collections
        for op in body["ops"]:
            if op["path"].partition("/")[0] in cols:
                return commit_from_body(body)
        return None
    return event_from_parts(header, body)


def baseline(frames: list[bytes]) -> dict[str, int]:
    """Naive: fully decode every frame and every CAR."""
    blocks = 0
    for frame in frames:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("t") == "#commit":
            _, decoded = libipld.decode_car(body["blocks"])
            blocks += len(decoded)
    return {"blocks": blocks}


def timed(fn: Callable[[], dict[str, int]], n: int, repeat: int) -> tuple[float, dict[str, int]]:
    rates, out = [], {}
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        gc.enable()
        rates.append(n / dt)
    return statistics.median(rates), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--dids", type=int, default=1000)
    ap.add_argument("--relevant", type=float, default=0.01, help="fraction of dev.atrun commits")
    ap.add_argument("--seed-records", type=int, default=150, help="records per repo before the run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    frames, did_keys = generate(args.frames, args.dids, args.relevant, args.seed_records, args.seed)
    gen_s = time.perf_counter() - t0
    total = sum(map(len, frames))
    print(f"generated {len(frames)} frames ({total / len(frames):.0f} B avg, {total / 1e6:.1f} MB) in {gen_s:.1f}s")

    n = len(frames)
    rate, stats = timed(lambda: ingest_path(frames, did_keys), n, args.repeat)
    print(f"ingest (peek/decode, filter, verify):   {rate:,.0f} frames/s  {stats}", flush=True)
    if stats["rejected"]:
        raise SystemExit("unexpected rejections in synthetic traffic")
    rate_np, stats_np = timed(lambda: ingest_path(frames, did_keys, peek=False), n, args.repeat)
    print(f"ingest, always decoding header+body:   {rate_np:,.0f} frames/s  {stats_np}", flush=True)
    base, bstats = timed(lambda: baseline(frames), n, args.repeat)
    print(f"baseline (libipld full frame + CAR):   {base:,.0f} frames/s  {bstats}", flush=True)
    ratio = rate / base
    print(f"ratio ingest/baseline: {ratio:.2f}x (always decoding: {rate_np / base:.2f}x)", flush=True)
    print(json.dumps({"frames_per_s": round(rate), "baseline_frames_per_s": round(base), "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
