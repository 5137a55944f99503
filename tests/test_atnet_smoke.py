"""Smoke tests for the loopback ATProto test network (tests/atnet.py)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timezone
from typing import Any

import httpx
import libipld
import pytest
import websockets

from tests.atnet import Account, TestNetwork

pytestmark = pytest.mark.network

BUNDLE = "dev.atrun.bundle"
JS_CODE = b"export default function handler(event) {\n  return { hello: event.name };\n}\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bundle_record(name: str, code_blob: dict[str, Any]) -> dict[str, Any]:
    """A ``dev.atrun.bundle`` record as the daemon expects to find it."""
    return {
        "$type": BUNDLE,
        "name": name,
        "code": code_blob,
        "runtime": "deno",
        "permissions": {"net": [], "read": [], "write": [], "env": []},
        "limits": {"memoryMb": 128, "timeoutMs": 5000},
        "prewarm": False,
        "createdAt": _now(),
    }


async def test_bundle_record_and_blob_roundtrip(atnet: TestNetwork) -> None:
    alice = await atnet.create_account("alice")
    assert alice.did.startswith("did:plc:")
    assert alice.handle.startswith("alice-") and alice.handle.endswith(".test")

    blob = await alice.upload_blob(JS_CODE, "application/javascript")
    assert blob["$type"] == "blob"
    assert blob["mimeType"] == "application/javascript"
    assert blob["size"] == len(JS_CODE)

    ref = await alice.create_record(BUNDLE, bundle_record("hello", blob), rkey="hello", validate=False)
    assert ref.uri == f"at://{alice.did}/{BUNDLE}/hello"

    got = await alice.get_record(BUNDLE, "hello")
    assert got["cid"] == ref.cid
    assert got["value"]["name"] == "hello"
    assert got["value"]["code"]["ref"] == blob["ref"]
    assert got["value"]["permissions"] == {"net": [], "read": [], "write": [], "env": []}

    assert await alice.get_blob(got["value"]["code"]["ref"]["$link"]) == JS_CODE


async def test_sdk_client_and_app_password(atnet: TestNetwork) -> None:
    bob = await atnet.create_account("bob")
    app_pw = await bob.app_password()
    client = await bob.login(app_pw)
    try:
        assert client.me is None  # no appview: profile lookup skipped
        desc = await client.com.atproto.repo.describe_repo({"repo": bob.did})
        assert desc.handle == bob.handle
    finally:
        await client.request.close()


async def _next_commit_for(ws: Any, did: str, path: str) -> dict[str, Any]:
    """Read firehose frames until a ``#commit`` from ``did`` touching ``path``."""
    while True:
        frame = await ws.recv()
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("op") != 1 or header.get("t") != "#commit" or body["repo"] != did:
            continue
        if any(op["path"] == path for op in body["ops"]):
            return dict(body)


async def test_firehose_sees_commit(atnet: TestNetwork) -> None:
    carol = await atnet.create_account("carol")
    # cursor=0 replays history too, so the commit is seen however the
    # subscription races the write.
    async with websockets.connect(f"{atnet.firehose_url}?cursor=0") as ws:
        rkey = f"fh{secrets.token_hex(4)}"
        ref = await carol.create_record(BUNDLE, {"name": rkey, "createdAt": _now()}, rkey=rkey)
        commit = await asyncio.wait_for(_next_commit_for(ws, carol.did, f"{BUNDLE}/{rkey}"), 15)
    (op,) = [op for op in commit["ops"] if op["path"] == f"{BUNDLE}/{rkey}"]
    assert op["action"] == "create"
    assert libipld.encode_cid(op["cid"]) == ref.cid  # CID links decode as raw bytes
    assert commit["repo"] == carol.did


async def test_pds_restart_keeps_accounts(atnet: TestNetwork) -> None:
    dave: Account = await atnet.create_account("dave")
    before = await dave.create_record(BUNDLE, {"name": "before", "createdAt": _now()}, rkey="before")
    port = atnet.pds_port

    await atnet.stop_pds()
    try:
        assert not atnet.pds_running
        with pytest.raises(httpx.ConnectError):
            await dave.get_record(BUNDLE, "before")
        # The PLC (a separate process) keeps serving while the PDS is down.
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{atnet.plc_url}/{dave.did}")
        assert resp.status_code == 200
        assert resp.json()["id"] == dave.did
    finally:
        await atnet.start_pds()

    assert atnet.pds_port == port
    assert (await dave.get_record(BUNDLE, "before"))["cid"] == before.cid
    # The session token from before the restart still works (secrets persist) ...
    token = dave._access_jwt
    after = await dave.create_record(BUNDLE, {"name": "after", "createdAt": _now()}, rkey="after")
    assert after.uri.endswith("/after")
    assert dave._access_jwt == token  # no re-login was needed
    # ... and so does a fresh password login through the SDK.
    client = await dave.login()
    try:
        out = await client.com.atproto.repo.list_records({"repo": dave.did, "collection": BUNDLE})
        assert {r.uri.rsplit("/", 1)[1] for r in out.records} == {"before", "after"}
    finally:
        await client.request.close()
