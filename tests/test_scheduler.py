"""Fairness between authors and order within one author."""

from reactor.dispatch.scheduler import FairQueue


def test_round_robin_between_authors_fifo_within() -> None:
    queue: FairQueue[str] = FairQueue(global_limit=3, per_author_limit=1)
    for n in range(5):
        queue.push("alice", f"a{n}", f"a{n}")
    queue.push("bob", "b0", "b0")
    queue.push("carol", "c0", "c0")
    started = [key for _, key, _ in queue.pop_ready()]
    assert started == ["a0", "b0", "c0"]  # one each, alice's flood does not starve bob and carol
    assert queue.pop_ready() == []  # global limit reached
    queue.done("bob", "b0")
    assert [key for _, key, _ in queue.pop_ready()] == []  # alice is still at her per-author limit
    queue.done("alice", "a0")
    assert [key for _, key, _ in queue.pop_ready()] == ["a1"]


def test_duplicates_are_not_queued_twice() -> None:
    queue: FairQueue[str] = FairQueue(global_limit=4, per_author_limit=4)
    assert queue.push("alice", "x", "x")
    assert not queue.push("alice", "x", "x")
    [(_, key, _)] = queue.pop_ready()
    assert not queue.push("alice", "x", "x")  # still running
    queue.done("alice", "x")
    assert queue.push("alice", "x", "x")
