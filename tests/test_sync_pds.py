"""Frames from the reference TypeScript PDS (tests/atnet.py) through reactor.sync.

Network-marked: the unit tests in test_sync_*.py never need this. It checks the
things a synthetic builder can't: the real PDS's encoding takes our no-decode
fast path, its signatures verify with the key its DID document publishes, its
Sync 1.1 CARs invert to ``prevData``, and its getRepo export verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import websockets

from reactor.sync import (
    CommitEvent,
    CommitFilter,
    SyncEvent,
    check_rev,
    decode_frame,
    parse_verification_method,
    verify_commit,
    verify_repo_car,
    verify_sync_event,
)
from reactor.sync.filter import peek_single_path
from tests.atnet import TestNetwork

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(shutil.which("node") is None, reason="the loopback PDS needs node"),
]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _collect(ws: Any, frames: list[bytes]) -> None:
    while True:
        frames.append(await ws.recv())


async def test_real_pds_frames_verify(atnet: TestNetwork) -> None:
    acct = await atnet.create_account("sync")
    frames: list[bytes] = []
    async with websockets.connect(f"{atnet.firehose_url}?cursor=0", max_size=None) as ws:
        reader = asyncio.create_task(_collect(ws, frames))
        for i in range(12):
            await acct.create_record("app.bsky.feed.post", {"text": f"post {i}", "createdAt": _now()}, validate=False)
        for i in range(4):
            await acct.create_record("dev.atrun.bundle", {"name": f"b{i}", "createdAt": _now()}, rkey=f"b{i}")
        await acct.put_record("dev.atrun.bundle", "b1", {"name": "b1 v2", "createdAt": _now()})
        await acct.delete_record("dev.atrun.bundle", "b2")
        writes = [
            {
                "$type": "com.atproto.repo.applyWrites#create",
                "collection": "dev.atrun.invocation",
                "rkey": f"i{j}",
                "value": {"$type": "dev.atrun.invocation", "endpoint": "main", "createdAt": _now()},
            }
            for j in range(3)
        ]
        writes.append({"$type": "com.atproto.repo.applyWrites#delete", "collection": "dev.atrun.bundle", "rkey": "b3"})
        await acct.call("com.atproto.repo.applyWrites", json={"repo": acct.did, "writes": writes, "validate": False})
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            evs = [decode_frame(f) for f in frames]
            if any(isinstance(e, CommitEvent) and e.repo == acct.did and len(e.ops) == 4 for e in evs):
                break
            await asyncio.sleep(0.1)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"{atnet.plc_url}/{acct.did}")).json()
        car = (await http.get(f"{atnet.pds_url}/xrpc/com.atproto.sync.getRepo", params={"did": acct.did})).content
    (vm,) = [m for m in doc["verificationMethod"] if m["id"].endswith("#atproto")]
    key = parse_verification_method(vm["type"], vm["publicKeyMultibase"])

    filt = CommitFilter()
    last_rev = None
    relevant: list[tuple[str, str]] = []
    commits = inverted = 0
    for frame in frames:
        ev = decode_frame(frame)
        if isinstance(ev, SyncEvent) and ev.did == acct.did:
            assert verify_sync_event(ev, key).did == acct.did
        if not isinstance(ev, CommitEvent) or ev.repo != acct.did:
            continue
        commits += 1
        check_rev(ev.rev, last_rev)
        last_rev = ev.rev
        if len(ev.ops) == 1:  # the real encoder's layout takes the no-decode path
            assert peek_single_path(frame) == ev.ops[0].path.encode()
        out = verify_commit(ev, key, collections=None)
        inverted += out.inverted
        selected = filt.select(frame)
        if selected is not None:
            relevant += [(r.action, r.path) for r in verify_commit(selected, key).records]
    assert commits >= 20 and inverted == commits - 1  # all but the genesis commit (no prevData)
    assert ("update", "dev.atrun.bundle/b1") in relevant and ("delete", "dev.atrun.bundle/b3") in relevant
    assert [p for a, p in relevant if p.startswith("dev.atrun.invocation")] == [
        f"dev.atrun.invocation/i{j}" for j in range(3)
    ]

    rev, records = verify_repo_car(car, acct.did, key, ["dev.atrun.bundle", "dev.atrun.invocation"])
    assert rev == last_rev
    assert sorted(r.path for r in records) == [
        "dev.atrun.bundle/b0",
        "dev.atrun.bundle/b1",
        "dev.atrun.invocation/i0",
        "dev.atrun.invocation/i1",
        "dev.atrun.invocation/i2",
    ]
