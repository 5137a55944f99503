"""Crafted frames through the real processor: bad input is rejected and counted, never fatal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import AsyncIterator

import libipld
import pytest

from reactor import metrics
from reactor.ingest.processor import EventProcessor, SourceError
from reactor.records import now_datetime
from reactor.store import Store, cursors, invocations
from reactor.sync.keys import SigningKey
from reactor.sync.testing import RepoBuilder, Write, error_frame, info_frame
from reactor.sync.tid import make_tid
from tests.runner_kit import offline_processor, trust

RUNNER = "did:plc:runnerrunnerrunnerrunner"
SOURCE = "wss://relay.test"


class Rig:
    def __init__(self, store: Store, processor: EventProcessor) -> None:
        self.store = store
        self.processor = processor

    async def trust(self, repo: RepoBuilder) -> None:
        await trust(self.store, repo.did, repo.did_key())

    async def queued(self) -> int:
        async with self.store.read() as conn:
            return (await invocations.count_by_state(conn))["queued"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with offline_processor(tmp_path, RUNNER) as (store, processor):
        yield Rig(store, processor)


def invocation(n: int, runner: str = RUNNER) -> Write:
    record = {"$type": "dev.atrun.invocation", "runner": runner, "endpoint": "hello", "args": {"n": n},
              "bundle": {"uri": "at://did:plc:x/dev.atrun.bundle/hello",
                         "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"},
              "createdAt": now_datetime()}
    return Write("create", f"dev.atrun.invocation/{make_tid(int(time.time() * 1e6) + n, 0)}", record)


def rejected(reason: str) -> float:
    return metrics.value(metrics.events_rejected, reason=reason)


async def test_valid_commit_is_queued_and_cursor_saved(rig: Rig) -> None:
    repo = RepoBuilder()
    await rig.trust(repo)
    built = repo.commit([invocation(1)], seq=41)
    await rig.processor.handle_frame(SOURCE, built.frame)
    assert await rig.queued() == 1
    async with rig.store.read() as conn:
        assert await cursors.get(conn, SOURCE) == 41


@pytest.mark.parametrize("case", ["bad_signature", "cid_mismatch", "old_rev", "future_rev",
                                  "truncated_frame", "garbage_frame"])
async def test_bad_input_is_rejected_counted_and_the_stream_goes_on(rig: Rig, case: str) -> None:
    repo = RepoBuilder()
    await rig.trust(repo)
    if case == "bad_signature":
        frame = repo.commit([invocation(1)], signer=SigningKey.generate()).frame
    elif case == "cid_mismatch":
        built = repo.commit([invocation(1)])
        op_cid = built.ops[0].cid
        assert op_cid is not None
        blocks = dict(built.blocks)
        blocks[op_cid] = libipld.encode_dag_cbor({"$type": "dev.atrun.invocation", "runner": RUNNER, "evil": 1})
        frame = built.reframe(blocks=built.car(blocks))
    elif case == "old_rev":
        first = repo.commit([invocation(1)])
        await rig.processor.handle_frame(SOURCE, first.frame)
        assert await rig.queued() == 1
        frame = first.frame  # replayed
    elif case == "future_rev":
        frame = repo.commit([invocation(1)], rev=make_tid(int((time.time() + 3600) * 1e6), 0)).frame
    elif case == "truncated_frame":
        frame = repo.commit([invocation(1)]).frame[:-5]  # ops intact, tail cut
    else:
        frame = b"\xa2\x01garbage" * 7
    before = rejected(case)
    queued_before = await rig.queued()
    await rig.processor.handle_frame(SOURCE, frame)  # must not raise
    assert rejected(case) == before + 1
    assert await rig.queued() == queued_before

    # The same processor still takes the next good event.
    await rig.processor.handle_frame(SOURCE, repo.commit([invocation(2)]).frame)
    assert await rig.queued() == queued_before + 1


async def test_other_runners_invocations_are_ignored(rig: Rig) -> None:
    repo = RepoBuilder()
    await rig.trust(repo)
    await rig.processor.handle_frame(SOURCE, repo.commit([invocation(1, runner="did:plc:someoneelse")]).frame)
    assert await rig.queued() == 0


async def test_irrelevant_commits_skip_without_identity_lookups(rig: Rig) -> None:
    repo = RepoBuilder()  # never trusted: any lookup would fail against the unreachable PLC
    post = Write("create", "app.bsky.feed.post/3kabc", {"$type": "app.bsky.feed.post", "text": "hi",
                                                          "createdAt": now_datetime()})
    before = rejected("unresolvable_identity")
    await rig.processor.handle_frame(SOURCE, repo.commit([post], seq=7).frame)
    await rig.processor.flush(SOURCE)
    assert rejected("unresolvable_identity") == before
    async with rig.store.read() as conn:
        assert await cursors.get(conn, SOURCE) == 7


async def test_info_and_error_frames(rig: Rig) -> None:
    gaps: list[str] = []

    async def on_gap(source: str) -> None:
        gaps.append(source)

    rig.processor.on_gap = on_gap
    await rig.processor.handle_frame(SOURCE, info_frame("OutdatedCursor", "too old"))
    assert gaps == [SOURCE]
    with pytest.raises(SourceError) as error:
        await rig.processor.handle_frame(SOURCE, error_frame("FutureCursor", "ahead"))
    assert error.value.error == "FutureCursor"


async def test_too_big_commit_resyncs_the_repo(rig: Rig) -> None:
    repo = RepoBuilder()
    await rig.trust(repo)
    resynced: list[tuple[str, str]] = []

    async def resync(did: str, why: str) -> None:
        resynced.append((did, why))

    rig.processor.resync = resync
    built = repo.commit([invocation(1)])
    await rig.processor.handle_frame(SOURCE, built.reframe(tooBig=True, blocks=b""))
    assert resynced == [(repo.did, "tooBig commit")]
    assert await rig.queued() == 0  # nothing was taken from an unverifiable frame


async def test_live_events_wait_for_a_running_backfill_then_apply_in_order(rig: Rig) -> None:
    repo = RepoBuilder()
    await rig.trust(repo)
    first, second = repo.commit([invocation(1)]), repo.commit([invocation(2)])
    rig.processor.begin_backfill(repo.did)
    await rig.processor.handle_frame(SOURCE, first.frame)
    await rig.processor.handle_frame(SOURCE, second.frame)
    assert await rig.queued() == 0  # held while the repo is being backfilled
    await rig.processor.handle_frame(SOURCE, first.frame)  # a replay lands in the buffer too
    await rig.processor.end_backfill(repo.did)
    assert await rig.queued() == 2  # both applied, in order; the replayed first one is an old rev
    third = repo.commit([invocation(3)])
    await rig.processor.handle_frame(SOURCE, third.frame)  # no buffer any more: applied at once
    assert await rig.queued() == 3
