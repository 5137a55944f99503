"""Commit verification: valid commits pass; each forgery fails with its reason."""

from __future__ import annotations

import time

import pytest

from reactor.sync import (
    CommitFilter,
    RevError,
    SigningKey,
    VerifyError,
    check_rev,
    decode_frame,
    make_tid,
    parse_did_key,
    verify_commit,
    verify_repo_car,
    verify_sync_event,
)
from reactor.sync.cbor import Link, encode
from reactor.sync.cid import cid_for_cbor, cid_str
from reactor.sync.testing import BuiltCommit, RepoBuilder, Write, now_iso

BUNDLE = "dev.atrun.bundle"
INVOCATION = "dev.atrun.invocation"


def rec(coll: str, **extra) -> dict:
    return {"$type": coll, "createdAt": now_iso(), **extra}


def post(i: int) -> Write:
    return Write("create", f"app.bsky.feed.post/3kp{i:09d}", rec("app.bsky.feed.post", text=f"post {i}"))


@pytest.fixture(params=["secp256k1", "p256"])
def repo(request) -> RepoBuilder:
    b = RepoBuilder(curve=request.param)
    b.seed([post(i) for i in range(120)] + [Write("create", f"{BUNDLE}/old", rec(BUNDLE, name="old"))])
    return b


def verify(b: RepoBuilder, frame: bytes, **kw):
    return verify_commit(decode_frame(frame), parse_did_key(b.did_key()), **kw)


def reason(exc_info) -> str:
    return exc_info.value.reason


# ---- the happy path ---------------------------------------------------------


def test_valid_commit_verifies(repo) -> None:
    c = repo.commit(
        [
            Write("create", f"{BUNDLE}/hello", rec(BUNDLE, name="hello")),
            Write("create", f"{INVOCATION}/3kinv", rec(INVOCATION, endpoint="main")),
            Write("update", f"{BUNDLE}/old", rec(BUNDLE, name="old v2")),
            post(500),
            Write("delete", "app.bsky.feed.post/3kp000000007"),
        ]
    )
    out = verify(repo, c.frame)
    assert out.did == repo.did and out.rev == c.rev and out.data == c.data and out.inverted
    got = {(r.collection, r.rkey, r.action): r for r in out.records}
    assert set(got) == {(BUNDLE, "hello", "create"), (INVOCATION, "3kinv", "create"), (BUNDLE, "old", "update")}
    assert got[(BUNDLE, "old", "update")].record["name"] == "old v2"
    assert got[(BUNDLE, "hello", "create")].cid == cid_str(c.ops[0].cid)
    assert got[(BUNDLE, "hello", "create")].path == f"{BUNDLE}/hello"


def test_delete_verifies_as_absent(repo) -> None:
    c = repo.commit([Write("delete", f"{BUNDLE}/old")])
    out = verify(repo, c.frame)
    assert [(r.action, r.cid, r.record) for r in out.records] == [("delete", None, None)]


def test_all_collections_and_no_inversion(repo) -> None:
    c = repo.commit([post(600), Write("create", f"{BUNDLE}/x", rec(BUNDLE))])
    out = verify(repo, c.frame, collections=None, invert=False)
    assert len(out.records) == 2 and not out.inverted


def test_legacy_commit_without_prevdata_still_verifies(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/legacy", rec(BUNDLE))], proofs=False)
    out = verify(repo, c.reframe(prevData=None))
    assert not out.inverted and len(out.records) == 1


def test_many_commits_in_sequence(repo) -> None:
    """A long run of mixed commits (splits, merges, layer changes) all verify and invert."""
    import random

    rng = random.Random(5)
    live = [f"app.bsky.feed.post/3kp{i:09d}" for i in range(120)]
    for n in range(60):
        writes = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.5 or not live:
                path = f"{rng.choice([BUNDLE, INVOCATION, 'app.bsky.feed.like'])}/k{n}x{rng.getrandbits(40):x}"
                writes.append(Write("create", path, rec(path.split("/")[0])))
                live.append(path)
            elif r < 0.75:
                path = live.pop(rng.randrange(len(live)))
                writes.append(Write("delete", path))
            else:
                path = rng.choice(live)
                if any(w.path == path for w in writes):
                    continue
                writes.append(Write("update", path, rec(path.split("/")[0], n=n)))
        c = repo.commit(writes)
        assert verify(repo, c.frame).inverted


# ---- forgeries ---------------------------------------------------------------


def test_bad_signature(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))], signer=SigningKey.generate())
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.frame)
    assert reason(ei) == "bad_signature"


def test_wrong_key(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    with pytest.raises(VerifyError) as ei:
        verify_commit(decode_frame(c.frame), SigningKey.generate().public_key())
    assert reason(ei) == "bad_signature"


def test_record_block_cid_mismatch(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE, name="real"))])
    blocks = dict(c.blocks)
    blocks[c.ops[0].cid] = encode(rec(BUNDLE, name="forged"))
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(blocks=c.car(blocks)))
    assert reason(ei) == "cid_mismatch"


def test_mst_node_cid_mismatch(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    blocks = dict(c.blocks)
    raw = bytearray(blocks[c.data])
    raw[-3] ^= 0x01  # corrupt the root node (inside a CID digest: still decodable)
    blocks[c.data] = bytes(raw)
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(blocks=c.car(blocks)))
    assert reason(ei) == "cid_mismatch"


def test_fabricated_op_not_in_signed_tree(repo) -> None:
    """A relay can't smuggle a record in: the op must resolve in the signed MST."""
    c = repo.commit([post(700)])
    forged = encode(rec(BUNDLE, name="evil"))
    fcid = cid_for_cbor(forged)
    blocks = {**c.blocks, fcid: forged}
    ops = c.body["ops"] + [{"action": "create", "path": f"{BUNDLE}/evil", "cid": Link(fcid)}]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(blocks=c.car(blocks), ops=ops))
    # Either the proof path leaves the CAR or it proves the key absent.
    assert reason(ei) in {"op_mismatch", "missing_block"}
    # Same path as a real op, forged record: the signed tree holds another CID.
    forged_op = [{"action": "create", "path": c.ops[0].path, "cid": Link(fcid)}]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(blocks=c.car(blocks), ops=forged_op), collections=None)
    assert reason(ei) == "op_mismatch"


def test_op_cid_swapped(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE)), Write("create", f"{BUNDLE}/b", rec(BUNDLE, n=2))])
    ops = [dict(c.body["ops"][0], cid=c.body["ops"][1]["cid"]), c.body["ops"][1]]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(ops=ops))
    assert reason(ei) == "op_mismatch"


@pytest.mark.parametrize("field", ["rev", "repo"])
def test_commit_event_field_mismatch(repo, field) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    value = repo.next_rev() if field == "rev" else "did:plc:someoneelseentirely0000"
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(**{field: value}))
    assert reason(ei) == "commit_mismatch"


def test_commit_cid_not_car_root(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    other = repo.commit([Write("create", f"{BUNDLE}/b", rec(BUNDLE))])
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(commit=Link(other.commit_cid)))
    assert reason(ei) == "commit_mismatch"


def test_missing_record_block(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    blocks = {k: v for k, v in c.blocks.items() if k != c.ops[0].cid}
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(blocks=c.car(blocks)))
    assert reason(ei) == "missing_block"


def test_record_type_must_match_collection(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec("app.bsky.feed.post"))])
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.frame)
    assert reason(ei) == "bad_record"


def test_bad_car(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    for blocks in (b"", b"\x05abc", c.body["blocks"][:-7], b"\x02\xa0\x00"):
        with pytest.raises(VerifyError) as ei:
            verify(repo, c.reframe(blocks=blocks))
        assert reason(ei) in {"bad_car", "missing_block"}


def test_too_big_and_too_many_ops(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(tooBig=True))
    assert reason(ei) == "too_big"
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.frame, max_ops=0)
    assert reason(ei) == "too_many_ops"


def test_bad_op_shape(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    ops = [dict(c.body["ops"][0], cid=None)]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(ops=ops))
    assert reason(ei) == "bad_op"
    ops = [dict(c.body["ops"][0], path=f"{BUNDLE}/bad key")]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(ops=ops))
    assert reason(ei) == "bad_path"


# ---- Sync 1.1 inversion -----------------------------------------------------


def test_omitted_op_breaks_inversion(repo) -> None:
    """Hiding an op from consumers is caught: the tree no longer inverts to prevData."""
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE)), Write("delete", "app.bsky.feed.post/3kp000000009")])
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(ops=c.body["ops"][:1]))
    assert reason(ei) == "prev_data_mismatch"


def test_wrong_prevdata(repo) -> None:
    c = repo.commit([Write("create", f"{BUNDLE}/a", rec(BUNDLE))])
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(prevData=Link(c.data)))
    assert reason(ei) == "prev_data_mismatch"


def test_wrong_op_prev(repo) -> None:
    c = repo.commit([Write("update", f"{BUNDLE}/old", rec(BUNDLE, name="v3"))])
    ops = [dict(c.body["ops"][0], prev=c.body["ops"][0]["cid"])]
    with pytest.raises(VerifyError) as ei:
        verify(repo, c.reframe(ops=ops))
    assert reason(ei) == "prev_data_mismatch"


def test_inversion_needs_proof_blocks(repo) -> None:
    """With only the new MST nodes (pre-1.1 CARs) record proofs still verify, but
    some deletions can't be inverted without the neighbour nodes a 1.1 PDS ships."""
    missing = 0
    for i in range(120):
        c = repo.commit([Write("delete", f"app.bsky.feed.post/3kp{i:09d}")], proofs=False)
        assert verify(repo, c.frame, collections=None, invert=False).records[0].action == "delete"
        try:
            verify(repo, c.frame, collections=None)
        except VerifyError as e:
            assert e.reason == "missing_block"
            missing += 1
    assert missing > 0


# ---- revs ---------------------------------------------------------------------


def test_rev_rules() -> None:
    now = time.time()
    rev = make_tid(int(now * 1e6))
    check_rev(rev, None, now=now)
    check_rev(rev, make_tid(int((now - 1) * 1e6)), now=now)
    with pytest.raises(RevError) as ei:
        check_rev(rev, rev, now=now)
    assert reason(ei) == "old_rev"
    with pytest.raises(RevError) as ei:
        check_rev(make_tid(int((now - 60) * 1e6)), rev, now=now)
    assert reason(ei) == "old_rev"
    check_rev(make_tid(int((now + 299) * 1e6)), rev, now=now)
    with pytest.raises(RevError) as ei:
        check_rev(make_tid(int((now + 301) * 1e6)), rev, now=now)
    assert reason(ei) == "future_rev"
    for bad in ("", "3kabc", "zzzzzzzzzzzzz", "3KABCDEFGHIJK", "3kabcdefghij1"):
        with pytest.raises(RevError) as ei:
            check_rev(bad, None, now=now)
        assert reason(ei) == "bad_rev"


def test_future_rev_commit_is_flagged_by_check_rev(repo) -> None:
    future = make_tid(int((time.time() + 3600) * 1e6))
    c = repo.commit([Write("create", f"{BUNDLE}/f", rec(BUNDLE))], rev=future)
    ev = decode_frame(c.frame)
    with pytest.raises(RevError) as ei:
        check_rev(ev.rev, ev.since)
    assert reason(ei) == "future_rev"
    assert verify(repo, c.frame).rev == future  # signature itself is fine


# ---- full repo (backfill) and #sync -------------------------------------------------


def test_verify_repo_car(repo) -> None:
    repo.commit([Write("create", f"{INVOCATION}/i1", rec(INVOCATION)), Write("create", f"{BUNDLE}/b1", rec(BUNDLE))])
    car = repo.repo_car()
    rev, records = verify_repo_car(car, repo.did, parse_did_key(repo.did_key()), [BUNDLE, INVOCATION])
    assert rev == repo.rev
    assert sorted(r.path for r in records) == [f"{BUNDLE}/b1", f"{BUNDLE}/old", f"{INVOCATION}/i1"]
    assert all(r.action == "create" and r.record["$type"] == r.collection for r in records)
    _, everything = verify_repo_car(car, repo.did, parse_did_key(repo.did_key()))
    assert len(everything) == 123


def test_verify_repo_car_rejections(repo) -> None:
    car = repo.repo_car()
    key = parse_did_key(repo.did_key())
    with pytest.raises(VerifyError) as ei:
        verify_repo_car(car, "did:plc:notthisrepoatall00000000", key)
    assert reason(ei) == "commit_mismatch"
    with pytest.raises(VerifyError) as ei:
        verify_repo_car(car, repo.did, SigningKey.generate().public_key())
    assert reason(ei) == "bad_signature"
    with pytest.raises(VerifyError) as ei:
        verify_repo_car(car[: len(car) // 2], repo.did, key)
    assert reason(ei) == "bad_car"


def test_empty_repo_car() -> None:
    b = RepoBuilder()
    rev, records = verify_repo_car(b.repo_car(), b.did, parse_did_key(b.did_key()))
    assert records == [] and rev == b.rev


def test_sync_event(repo) -> None:
    ev = decode_frame(repo.sync_frame())
    commit = verify_sync_event(ev, parse_did_key(repo.did_key()))
    assert commit.did == repo.did and commit.data == repo.data
    with pytest.raises(VerifyError) as ei:
        verify_sync_event(ev, SigningKey.generate().public_key())
    assert reason(ei) == "bad_signature"


def test_filter_then_verify_pipeline(repo) -> None:
    f = CommitFilter()
    irrelevant = repo.commit([post(900)])
    relevant = repo.commit([Write("create", f"{INVOCATION}/go", rec(INVOCATION))])
    assert f.select(irrelevant.frame) is None
    ev = f.select_commit(relevant.frame)
    assert ev is not None
    check_rev(ev.rev, irrelevant.rev)
    out = verify_commit(ev, parse_did_key(repo.did_key()), f.collections)
    assert [r.path for r in out.records] == [f"{INVOCATION}/go"]


def test_builtcommit_is_self_consistent(repo) -> None:
    c: BuiltCommit = repo.commit([post(901)])
    assert cid_for_cbor(c.commit_block) == c.commit_cid and c.blocks[c.commit_cid] == c.commit_block


def test_fuzzed_cars_only_raise_typed_errors(repo) -> None:
    """Bit flips anywhere in the CAR: either still valid (untouched bytes) or a SyncError."""
    import random

    from reactor.sync import SyncError

    rng = random.Random(11)
    c = repo.commit([Write("create", f"{BUNDLE}/fz", rec(BUNDLE)), Write("delete", "app.bsky.feed.post/3kp000000011")])
    car = c.body["blocks"]
    outcomes: set[str] = set()
    for _ in range(400):
        buf = bytearray(car)
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        try:
            verify(repo, c.reframe(blocks=bytes(buf)))
            outcomes.add("ok")
        except SyncError as e:
            outcomes.add(e.reason)
    assert "cid_mismatch" in outcomes and outcomes <= {
        "ok",
        "bad_car",
        "bad_cid",
        "cid_mismatch",
        "missing_block",
        "commit_mismatch",
        "bad_commit",
        "mst_invalid",
    }


def test_fuzzed_repo_cars_only_raise_typed_errors(repo) -> None:
    import random

    from reactor.sync import SyncError

    rng = random.Random(12)
    car = repo.repo_car()
    key = parse_did_key(repo.did_key())
    for _ in range(150):
        buf = bytearray(car)
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        try:
            verify_repo_car(bytes(buf), repo.did, key, [BUNDLE])
        except SyncError:
            pass
