"""Commit filter: skip irrelevant commits without decoding, never miss a relevant one."""

from __future__ import annotations

import random

import pytest

from reactor.sync import (
    ATRUN_COLLECTIONS,
    AccountEvent,
    CommitEvent,
    CommitFilter,
    ErrorFrame,
    FrameError,
    IdentityEvent,
)
from reactor.sync.cbor import encode
from reactor.sync.filter import peek_single_path
from reactor.sync.testing import RepoBuilder, Write, account_frame, error_frame, identity_frame, now_iso


def post(rkey: str, text: str = "hi") -> Write:
    return Write(
        "create", f"app.bsky.feed.post/{rkey}", {"$type": "app.bsky.feed.post", "text": text, "createdAt": now_iso()}
    )


def bundle(rkey: str) -> Write:
    return Write(
        "create", f"dev.atrun.bundle/{rkey}", {"$type": "dev.atrun.bundle", "name": rkey, "createdAt": now_iso()}
    )


@pytest.fixture(scope="module")
def repo() -> RepoBuilder:
    b = RepoBuilder()
    b.seed([post(f"3kseed{i:04d}") for i in range(20)])
    return b


def test_irrelevant_commit_skipped(repo) -> None:
    f = CommitFilter()
    c = repo.commit([post("3kaaa0001")])
    assert peek_single_path(c.frame) == b"app.bsky.feed.post/3kaaa0001"
    assert f.select(c.frame) is None


def test_relevant_commit_selected(repo) -> None:
    f = CommitFilter()
    c = repo.commit([post("3kaaa0002"), bundle("hello")])
    ev = f.select(c.frame)
    assert isinstance(ev, CommitEvent) and ev.rev == c.rev
    assert [op.path for op in f.relevant_ops(ev.ops)] == ["dev.atrun.bundle/hello"]
    assert f.select_commit(c.frame) is not None


def test_collection_name_in_record_text_does_not_match(repo) -> None:
    f = CommitFilter()
    c = repo.commit([post("3kaaa0003", text="see dev.atrun.bundle/foo for details")])
    assert f.select(c.frame) is None


def test_peek_agrees_with_decoder(repo) -> None:
    """The no-decode peek returns exactly the decoded path, or None for other layouts."""
    single = repo.commit([Write("delete", "app.bsky.feed.post/3kseed0001")])
    assert peek_single_path(single.frame) == b"app.bsky.feed.post/3kseed0001"
    multi = repo.commit([post("3km1"), post("3km2")])
    assert peek_single_path(multi.frame) is None
    long_path = "app.bsky.feed.post/" + "x" * 300
    assert peek_single_path(repo.commit([post(long_path.split("/")[1])]).frame) is None
    assert peek_single_path(repo.commit([post("y" * 100)]).frame) == b"app.bsky.feed.post/" + b"y" * 100
    for cut in range(len(single.frame)):
        peek_single_path(single.frame[:cut])  # never raises
    assert CommitFilter().select(multi.frame) is None


def test_multi_op_commit_with_one_relevant_op(repo) -> None:
    f = CommitFilter()
    c = repo.commit([post("3kmo1"), bundle("mo"), post("3kmo2")])
    ev = f.select(c.frame)
    assert isinstance(ev, CommitEvent) and len(ev.ops) == 3


def test_similar_collection_names_do_not_match(repo) -> None:
    f = CommitFilter()
    c = repo.commit([Write("create", "dev.atrun.bundles/x", {"$type": "dev.atrun.bundles", "createdAt": now_iso()})])
    assert f.select(c.frame) is None


def test_custom_collections(repo) -> None:
    f = CommitFilter({"app.bsky.feed.post"})
    assert f.select(repo.commit([post("3kaaa0004")]).frame) is not None
    assert CommitFilter(ATRUN_COLLECTIONS).collections == frozenset({"dev.atrun.bundle", "dev.atrun.invocation"})
    with pytest.raises(ValueError):
        CommitFilter({"not an nsid"})


def test_non_commit_events_always_pass() -> None:
    f = CommitFilter()
    did = "did:plc:abcdefghijklmnopqrstuvwx"
    assert isinstance(f.select(identity_frame(did)), IdentityEvent)
    assert isinstance(f.select(account_frame(did, True)), AccountEvent)
    assert isinstance(f.select(error_frame("ConsumerTooSlow")), ErrorFrame)


def test_unsorted_header_is_not_skipped_but_rejected(repo) -> None:
    """Only canonical headers take the no-decode path; non-canonical CBOR is garbage."""
    f = CommitFilter()
    c = repo.commit([post("3kaaa0005")])
    with pytest.raises(FrameError) as ei:
        f.select(b"\xa2\x62op\x01\x61t\x67#commit" + encode(c.body))
    assert ei.value.reason == "garbage_frame"


def test_no_false_negatives_randomized() -> None:
    """The no-decode fast path agrees with the exact decode on mixed traffic."""
    rng = random.Random(3)
    f = CommitFilter()
    b = RepoBuilder()
    mine: list[str] = []
    for i in range(300):
        writes = [post(f"3kr{i:05d}")] if rng.random() < 0.6 else []
        relevant = rng.random() < 0.4 or not writes
        if relevant:
            if mine and rng.random() < 0.3:
                writes.append(Write("delete", mine.pop()))
            else:
                coll = rng.choice(sorted(ATRUN_COLLECTIONS))
                writes.append(Write("create", f"{coll}/r{i}", {"$type": coll, "createdAt": now_iso()}))
                mine.append(writes[-1].path)
        rng.shuffle(writes)
        frame = b.commit(writes, proofs=False).frame
        assert (f.select(frame) is not None) == relevant


def test_garbage_not_skipped_raises() -> None:
    f = CommitFilter()
    with pytest.raises(FrameError):
        f.select(b"\xa2\x61t\x67#commit\x62op\x01" + b"\xa1dev.atrun.bundle/")
    with pytest.raises(FrameError):
        f.select(b"\xff\x00")
    with pytest.raises(FrameError) as ei:
        f.select("a text websocket frame")  # type: ignore[arg-type]
    assert ei.value.reason == "garbage_frame"
    assert f.select(bytearray(identity_frame("did:plc:abcdefghijklmnopqrstuvwx"))) is not None
