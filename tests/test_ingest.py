"""Verified ingestion against the real local PDS and its firehose."""

from __future__ import annotations

import asyncio
from pathlib import Path

from reactor import metrics
from reactor.store import bundles, cursors, invocations, outbox
from tests.atnet import TestNetwork
from tests.runner_kit import HELLO_JS, eventually, post_invocation, publish_bundle, runner_config, start_runner


async def test_bundle_cached_with_verified_blob(atnet: TestNetwork, tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    alice = await atnet.create_account("alice")
    services = await start_runner(runner_config(tmp_path, atnet, runner.did))
    try:
        uri, cid = await publish_bundle(alice, prewarm=False)

        async def cached():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await bundles.get(conn, uri, cid)

        bundle = await eventually(cached, what="bundle cached")
        assert bundle.author == alice.did and bundle.name == "hello"
        async with services.store.read() as conn:
            mime, data = await bundles.get_blob(conn, bundle.code_cid)  # type: ignore[misc]
        assert data == HELLO_JS and mime == "application/javascript"
        ready = await services.bundles.ready(uri, cid)
        assert ready is not None and ready.code_path.read_bytes() == HELLO_JS

        await alice.delete_record("dev.atrun.bundle", "hello")

        async def gone():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await bundles.latest(conn, uri) is None

        await eventually(gone, what="bundle marked deleted")
    finally:
        await services.close()


async def test_invocation_queued_once_across_reconnect_and_restart(atnet: TestNetwork, tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    other_runner = await atnet.create_account("other")
    alice = await atnet.create_account("alice")
    config = runner_config(tmp_path, atnet, runner.did)
    services = await start_runner(config)
    try:
        bundle = await publish_bundle(alice)
        inv_uri, _ = await post_invocation(alice, runner.did, bundle, args={"name": "bob"})
        foreign_uri, _ = await post_invocation(alice, other_runner.did, bundle)

        async def queued():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await invocations.get(conn, inv_uri)

        inv = await eventually(queued, what="invocation queued")
        assert inv.state in ("queued", "running", "done") and inv.endpoint == "hello"
        assert inv.args == {"name": "bob"} and inv.author == alice.did
        assert inv.bundle_uri == bundle[0] and inv.bundle_cid == bundle[1]
        # The foreign invocation came after ours on the same stream: once ours is in, wait for the cursor.
        await services.ingestion.processor.flush(atnet.pds_url)
    finally:
        await services.close()

    # Restart with the cursor rewound to 0: every event is replayed (a reconnect that resumes from
    # an older cursor), yet nothing is queued twice and the foreign invocation is still ignored.
    services = await start_runner(config)
    try:
        async with services.store.transaction() as conn:
            await cursors.put(conn, atnet.pds_url, 0)
        await services.ingestion.stop()
        await services.ingestion.start()
        for sub in services.ingestion.subscriptions.values():
            await asyncio.wait_for(sub.connected.wait(), 15)
        marker = await post_invocation(alice, runner.did, bundle, args={"marker": True})

        async def marker_seen():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await invocations.get(conn, marker[0])

        await eventually(marker_seen, what="replay caught up")
        async with services.store.read() as conn:
            counts = await invocations.count_by_state(conn)
            assert await invocations.get(conn, foreign_uri) is None
            cursor = await cursors.get(conn, atnet.pds_url)
        assert sum(counts.values()) == 2  # the first invocation and the marker, each once
        assert cursor and cursor > 0
    finally:
        await services.close()


async def test_denied_author_is_recorded_with_a_result(atnet: TestNetwork, tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    mallory = await atnet.create_account("mallory")
    config = runner_config(tmp_path, atnet, runner.did, access={"mode": "blocklist", "blocklist": [mallory.did]})
    services = await start_runner(config)
    try:
        bundle = await publish_bundle(mallory)
        inv_uri, inv_cid = await post_invocation(mallory, runner.did, bundle)

        async def recorded():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await invocations.get(conn, inv_uri)

        inv = await eventually(recorded, what="denied invocation recorded")
        assert inv.state == "done" and inv.status == "denied" and "blocklist" in (inv.error or "")
        async with services.store.read() as conn:
            [item] = await outbox.due(conn)
        assert item.invocation_uri == inv_uri and item.repo == mallory.did and item.rkey == inv_uri.rsplit("/", 1)[1]
        assert item.record["status"] == "denied" and item.record["invocation"] == {"uri": inv_uri, "cid": inv_cid}
        assert "sig" in item.record
    finally:
        await services.close()


async def test_followed_repo_backfilled_on_start(atnet: TestNetwork, tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    alice = await atnet.create_account("alice")
    # Written while the runner is down.
    bundle = await publish_bundle(alice, name="offline")
    inv_uri, _ = await post_invocation(alice, runner.did, bundle)
    config = runner_config(tmp_path, atnet, runner.did, atproto={"firehose": None, "follow": [alice.did]})
    before = metrics.value(metrics.backfills, outcome="done")
    services = await start_runner(config)
    try:
        async def backfilled():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await invocations.get(conn, inv_uri) and await bundles.get(conn, *bundle)

        await eventually(backfilled, what="backfill of the followed repo")
        assert metrics.value(metrics.backfills, outcome="done") == before + 1
        # And live events from the followed repo's PDS keep flowing afterwards.
        live_uri, _ = await post_invocation(alice, runner.did, bundle, args={"live": 1})

        async def live():  # type: ignore[no-untyped-def]
            async with services.store.read() as conn:
                return await invocations.get(conn, live_uri)

        await eventually(live, what="live event after backfill")
    finally:
        await services.close()
