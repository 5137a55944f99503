"""Frame decoding: every event type, and hostile bytes rejected with a reason."""

from __future__ import annotations

import random

import libipld
import pytest

from reactor.sync import (
    AccountEvent,
    CommitEvent,
    ErrorFrame,
    FrameError,
    IdentityEvent,
    InfoEvent,
    SyncEvent,
    UnknownEvent,
    decode_frame,
    frame_seq,
)
from reactor.sync.cbor import Link, encode
from reactor.sync.frames import COMMIT_HEADER
from reactor.sync.testing import (
    RepoBuilder,
    Write,
    account_frame,
    encode_frame,
    error_frame,
    identity_frame,
    info_frame,
    now_iso,
)


def post(i: int) -> Write:
    return Write(
        "create",
        f"app.bsky.feed.post/3kpost{i:08d}",
        {"$type": "app.bsky.feed.post", "text": f"hello {i}", "createdAt": now_iso()},
    )


@pytest.fixture(scope="module")
def built():
    b = RepoBuilder()
    b.seed([post(i) for i in range(50)])
    return b, b.commit([post(100), Write("delete", "app.bsky.feed.post/3kpost00000003")], seq=42)


def test_commit_frame_decodes(built) -> None:
    b, c = built
    ev = decode_frame(c.frame)
    assert isinstance(ev, CommitEvent)
    assert (ev.seq, ev.repo, ev.rev, ev.commit, ev.prev_data) == (42, b.did, c.rev, c.commit_cid, c.prev_data)
    assert ev.since is not None and ev.since < ev.rev
    assert [(op.action, op.path) for op in ev.ops] == [
        ("create", "app.bsky.feed.post/3kpost00000100"),
        ("delete", "app.bsky.feed.post/3kpost00000003"),
    ]
    assert ev.ops[0].cid is not None and ev.ops[0].prev is None
    assert ev.ops[1].cid is None and ev.ops[1].prev is not None
    assert ev.ops[0].collection == "app.bsky.feed.post" and ev.ops[0].rkey == "3kpost00000100"
    assert ev.blocks == c.body["blocks"] and not ev.too_big
    assert frame_seq(c.frame) == 42


def test_header_constants_match_libipld() -> None:
    assert COMMIT_HEADER == libipld.encode_dag_cbor({"op": 1, "t": "#commit"})


def test_other_events() -> None:
    did = "did:plc:abcdefghijklmnopqrstuvwx"
    ident = decode_frame(identity_frame(did, seq=7, handle="alice.test"))
    assert ident == IdentityEvent(7, did, ident.time, "alice.test")
    acct = decode_frame(account_frame(did, False, status="takendown", seq=8))
    assert isinstance(acct, AccountEvent) and (acct.active, acct.status, acct.seq) == (False, "takendown", 8)
    assert decode_frame(info_frame("OutdatedCursor", "too old")) == InfoEvent("OutdatedCursor", "too old")
    assert decode_frame(error_frame("FutureCursor", "cursor in the future")) == ErrorFrame(
        "FutureCursor", "cursor in the future"
    )
    assert decode_frame(error_frame("ConsumerTooSlow")) == ErrorFrame("ConsumerTooSlow", None)
    sync = decode_frame(RepoBuilder(did).sync_frame(seq=9))
    assert isinstance(sync, SyncEvent) and sync.did == did and sync.seq == 9
    assert decode_frame(encode_frame("#labels", {"seq": 3})) == UnknownEvent("#labels", 3)


def test_truncated_frames_rejected(built) -> None:
    _, c = built
    frame = c.frame
    reasons = set()
    for cut in range(len(frame) - 1):
        with pytest.raises(FrameError) as ei:
            decode_frame(frame[:cut])
        reasons.add(ei.value.reason)
    assert reasons == {"truncated_frame"}


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff",  # break codes
        b"\x1c",  # reserved additional info
        b"\x01\x02",  # two ints: header is not a map
        encode({"op": 1, "t": "#commit"}) + encode({"seq": 1}) + b"\x00",  # trailing object
        b"\xa1\x61a\xd9\x01\x00\x01" + b"\xa0",  # unsupported tag
    ],
)
def test_garbage_frames_rejected(data: bytes) -> None:
    with pytest.raises(FrameError) as ei:
        decode_frame(data)
    assert ei.value.reason == "garbage_frame"


def test_random_garbage_never_crashes(built) -> None:
    _, c = built
    rng = random.Random(7)
    for i in range(3000):
        if i % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        else:  # bit flips in a real frame
            buf = bytearray(c.frame)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            data = bytes(buf)
        try:
            decode_frame(data)
        except FrameError as e:
            assert e.reason in {"truncated_frame", "garbage_frame", "bad_header", "bad_event"}


@pytest.mark.parametrize(
    "header, body, reason",
    [
        ({"op": 2, "t": "#commit"}, {}, "bad_header"),
        ({"op": 1}, {"seq": 1}, "bad_header"),
        ({"op": 1, "t": "#commit"}, {"seq": "1"}, "bad_event"),
        ({"op": 1, "t": "#identity"}, {"seq": 1, "did": "not-a-did"}, "bad_event"),
        ({"op": 1, "t": "#account"}, {"seq": 1, "did": "did:plc:x", "active": "yes"}, "bad_event"),
        ({"op": -1}, {"message": "no error name"}, "bad_event"),
    ],
)
def test_bad_fields_rejected(header, body, reason) -> None:
    with pytest.raises(FrameError) as ei:
        decode_frame(encode(header) + encode(body))
    assert ei.value.reason == reason


def test_bad_commit_fields_rejected(built) -> None:
    _, c = built
    for change in (
        {"blocks": "not bytes"},
        {"commit": "bafy-as-string"},
        {"ops": [{"action": "explode", "path": "a.b.c/x", "cid": None}]},
        {"ops": [{"action": "create", "path": 5, "cid": None}]},
        {"tooBig": 1},
        {"prevData": "x"},
        {"repo": "did:bad"},
    ):
        with pytest.raises(FrameError) as ei:
            decode_frame(c.reframe(**change))
        assert ei.value.reason == "bad_event", change


def test_binary_like_and_text_input() -> None:
    frame = identity_frame("did:plc:abcdefghijklmnopqrstuvwx", seq=5)
    assert decode_frame(memoryview(frame)) == decode_frame(bytearray(frame)) == decode_frame(frame)
    with pytest.raises(FrameError) as ei:
        decode_frame("not binary")  # type: ignore[arg-type]
    assert ei.value.reason == "garbage_frame"


def test_header_only_is_truncated() -> None:
    with pytest.raises(FrameError) as ei:
        decode_frame(encode({"op": 1, "t": "#commit"}))
    assert ei.value.reason == "truncated_frame"


def test_builder_frames_parse_with_atproto_sdk(built) -> None:
    """Independent check that our frames match the lexicon: the MarshalX SDK parses them."""
    from atproto_core.car import CAR
    from atproto_firehose import parse_subscribe_repos_message
    from atproto_subscription.frames import Frame

    b, c = built
    msg = parse_subscribe_repos_message(Frame.from_bytes(c.frame))
    assert msg.repo == b.did and msg.rev == c.rev and msg.seq == 42
    assert str(msg.prev_data) == libipld.encode_cid(c.prev_data)
    assert len(CAR.from_bytes(msg.blocks).blocks) == len(c.blocks)


def test_legacy_commit_without_prevdata_decodes(built) -> None:
    _, c = built
    body = {k: v for k, v in c.body.items() if k != "prevData"}
    body["ops"] = [{k: v for k, v in op.items() if k != "prev"} for op in body["ops"]]
    ev = decode_frame(encode_frame("#commit", body))
    assert isinstance(ev, CommitEvent) and ev.prev_data is None and all(op.prev is None for op in ev.ops)


def test_links_are_binary_cids(built) -> None:
    _, c = built
    ev = decode_frame(c.frame)
    assert isinstance(c.body["commit"], Link) and ev.commit == bytes(c.body["commit"])
    assert ev.commit[:4] == b"\x01\x71\x12\x20"
