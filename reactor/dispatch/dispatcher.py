"""The dispatcher: queued invocations → executions → signed results in the outbox.

Execution is at-least-once (a crash mid-run re-runs it after restart); the
result is exactly-once because the `running → done` transition and the outbox
row commit in one transaction, keyed by the invocation's at-uri.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog
from structlog.contextvars import bound_contextvars

from reactor.dispatch.execute import Call, CallRunner, ExecutorCrashed
from reactor.dispatch.scheduler import FairQueue
from reactor.intake import RESULT_COLLECTION
from reactor.keys import RunnerKeys
from reactor.results import Outcome, build_result
from reactor.store import Store, invocations, outbox
from reactor.store.invocations import Invocation

log = structlog.get_logger(__name__)

POLL_S = 1.0


class Dispatcher:
    def __init__(self, store: Store, runner: CallRunner, keys: RunnerKeys, runner_did: str, *,
                 max_output_bytes: int, global_limit: int = 8, per_author_limit: int = 2, max_attempts: int = 3,
                 on_result: Callable[[], None] | None = None) -> None:
        self._store = store
        self._runner = runner
        self._keys = keys
        self._runner_did = runner_did
        self._max_output = max_output_bytes
        self._max_attempts = max_attempts
        self._queue: FairQueue[Invocation] = FairQueue(global_limit, per_author_limit)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._on_result = on_result
        self._new_work = True

    def kick(self) -> None:
        """New work was queued: read the queue now instead of at the next poll."""
        self._new_work = True
        self._wake.set()

    async def run(self) -> None:
        async with self._store.transaction() as conn:
            requeued = await invocations.requeue_running(conn)
        if requeued:
            log.info("dispatch.requeued_after_restart", count=requeued)
        while self._accepting:
            if self._new_work:  # a freed slot alone needs no store read: its successors are in memory
                self._new_work = False
                await self._fill()
            for author, _, inv in self._queue.pop_ready():
                task = asyncio.create_task(self._run_one(inv), name=f"invoke:{inv.uri}")
                self._tasks.add(task)
                task.add_done_callback(lambda t, a=author, u=inv.uri: self._finished(t, a, u))
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up.
            try:
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                self._new_work = True  # the poll is the safety net for anything queued without a kick

    def _finished(self, task: asyncio.Task[None], author: str, uri: str) -> None:
        self._tasks.discard(task)
        self._queue.done(author, uri)
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch.task_failed", uri=uri, error=repr(task.exception()))
        self._wake.set()  # a slot is free

    async def _fill(self) -> None:
        room = 500 - self._queue.waiting
        if room <= 0:
            return
        async with self._store.read() as conn:
            queued = await invocations.list_by_state(conn, "queued", limit=room)
        for inv in queued:
            self._queue.push(inv.author, inv.uri, inv)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work and let in-flight invocations finish (or be re-run after restart)."""
        self._accepting = False
        self.kick()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _run_one(self, inv: Invocation) -> None:
        async with self._store.transaction() as conn:
            if not await invocations.transition(conn, inv.uri, from_states=["queued"], to="running"):
                return  # someone else took it, or it finished meanwhile
        queued_ms = int((time.time() - (inv.queued_at or inv.created_at)) * 1000)
        with bound_contextvars(invocation=inv.uri):
            call = Call(caller=inv.author, bundle_uri=inv.bundle_uri or "", bundle_cid=inv.bundle_cid,
                        endpoint=inv.endpoint or "", args=inv.args)
            try:
                result = await self._runner.run(call)
            except ExecutorCrashed as error:
                await self._crashed(inv, str(error), queued_ms)
                return
            outcome = _with_queue_time(result.outcome, queued_ms)
            await self._finish(inv, outcome, state="done")

    async def _crashed(self, inv: Invocation, error: str, queued_ms: int) -> None:
        async with self._store.read() as conn:
            current = await invocations.get(conn, inv.uri)
        attempts = current.attempts if current else self._max_attempts
        if attempts < self._max_attempts:
            log.warning("dispatch.retry", attempts=attempts, error=error)
            async with self._store.transaction() as conn:
                await invocations.transition(conn, inv.uri, from_states=["running"], to="queued", error=error)
            self.kick()
            return
        log.error("dispatch.gave_up", attempts=attempts, error=error)
        outcome = Outcome("error", error=f"the sandbox failed {attempts} times: {error}", queued_ms=queued_ms)
        await self._finish(inv, outcome, state="failed")

    async def _finish(self, inv: Invocation, outcome: Outcome, *, state: str) -> None:
        record = build_result(
            invocation={"uri": inv.uri, "cid": inv.cid},
            bundle={"uri": inv.bundle_uri or "", "cid": inv.bundle_cid or ""},
            runner=self._runner_did, outcome=outcome, keys=self._keys, max_output_bytes=self._max_output,
        )
        async with self._store.transaction() as conn:
            moved = await invocations.transition(conn, inv.uri, from_states=["running"], to=state,
                                                 status=outcome.status, error=outcome.error)
            if moved:
                await outbox.add(conn, invocation_uri=inv.uri, repo=inv.author, collection=RESULT_COLLECTION,
                                 rkey=inv.rkey, record=record)
        log.info("dispatch.finished", status=outcome.status, duration_ms=outcome.duration_ms,
                 cold_start=outcome.cold_start, queued_ms=outcome.queued_ms)
        if self._on_result is not None:
            self._on_result()


def _with_queue_time(outcome: Outcome, queued_ms: int) -> Outcome:
    return Outcome(outcome.status, outcome.output, outcome.error, outcome.duration_ms, outcome.cold_start, queued_ms)
