"""Invocation intake: queue invocations aimed at this runner exactly once.

Runs inside the transaction of the event (or backfill page) that carried the
record, so the queue entry and the cursor commit together. Anything aimed at
another runner is dropped before any work; a denied or malformed invocation is
recorded as finished with a result saying why, so its author is never left
waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import aiosqlite
import structlog
from pydantic import ValidationError

from reactor.access import AccessPolicy
from reactor.keys import RunnerKeys
from reactor.records import Invocation
from reactor.results import Outcome, build_result
from reactor.store import invocations, outbox

log = structlog.get_logger(__name__)

RESULT_COLLECTION = "dev.atrun.result"


@dataclass(frozen=True)
class IntakeOutcome:
    """`queued`, `denied`, `invalid`, `duplicate` or `ignored` (another runner's)."""

    kind: str
    reason: str = ""


def aimed_at(record: Any, runner_did: str) -> bool:
    return isinstance(record, dict) and record.get("runner") == runner_did


class Intake:
    def __init__(self, runner_did: str, keys: RunnerKeys, policy: Callable[[], AccessPolicy],
                 *, max_output_bytes: int) -> None:
        self.runner_did = runner_did
        self._keys = keys
        self._policy = policy
        self._max_output = max_output_bytes

    async def accept(self, conn: aiosqlite.Connection, *, author: str, uri: str, cid: str,
                     record: Any) -> IntakeOutcome:
        if not aimed_at(record, self.runner_did):
            return IntakeOutcome("ignored")
        try:
            invocation = Invocation.model_validate(record)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            reason = f"invocation record is invalid at {where}: {first['msg']}"
            bundle = record.get("bundle") if isinstance(record.get("bundle"), dict) else None
            return await self._finish(conn, author, uri, cid, record, bundle, "invalid", reason)
        bundle_ref = {"uri": invocation.bundle.uri, "cid": invocation.bundle.cid}
        decision = self._policy().check(author)
        if not decision.allowed:
            return await self._finish(conn, author, uri, cid, record, bundle_ref, "denied", decision.reason)
        inserted = await invocations.insert(
            conn, uri=uri, cid=cid, author=author, runner=self.runner_did, bundle_uri=bundle_ref["uri"],
            bundle_cid=bundle_ref["cid"], endpoint=invocation.endpoint, args=invocation.args, state="queued",
        )
        if inserted:
            log.info("invocation.queued", uri=uri, author=author, bundle=bundle_ref["uri"])
        return IntakeOutcome("queued" if inserted else "duplicate")

    async def _finish(self, conn: aiosqlite.Connection, author: str, uri: str, cid: str, record: dict[str, Any],
                      bundle: dict[str, Any] | None, status: str, reason: str) -> IntakeOutcome:
        bundle_uri = bundle.get("uri") if bundle else None
        bundle_cid = bundle.get("cid") if bundle else None
        inserted = await invocations.insert(
            conn, uri=uri, cid=cid, author=author, runner=self.runner_did, bundle_uri=bundle_uri,
            bundle_cid=bundle_cid, endpoint=record.get("endpoint") if isinstance(record.get("endpoint"), str) else None,
            args=None, state="done", status=status, error=reason,
        )
        if not inserted:
            return IntakeOutcome("duplicate")
        log.info(f"invocation.{status}", uri=uri, author=author, reason=reason)
        if isinstance(bundle_uri, str) and isinstance(bundle_cid, str):
            result = build_result(
                invocation={"uri": uri, "cid": cid}, bundle={"uri": bundle_uri, "cid": bundle_cid},
                runner=self.runner_did, outcome=Outcome(status=status, error=reason), keys=self._keys,
                max_output_bytes=self._max_output,
            )
            await outbox.add(conn, invocation_uri=uri, repo=author, collection=RESULT_COLLECTION,
                             rkey=uri.rsplit("/", 1)[-1], record=result)
        else:
            log.warning("invocation.no_result", uri=uri, reason="invocation names no bundle strongRef to answer with")
        return IntakeOutcome(status, reason)
