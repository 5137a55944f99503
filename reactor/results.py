"""Building and signing `dev.atrun.result` records.

The signature covers the DAG-CBOR encoding of the record with `sig` removed and
`$type` included, so anyone holding the runner's `signingKey` (published in its
`dev.atrun.runner/self` record) can check that this runner produced it.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from reactor.keys import RunnerKeys
from reactor.records import RESULT_NSID, now_datetime, signing_payload

STATUSES = ("success", "error", "timeout", "denied", "limitExceeded", "invalid")
MAX_ERROR_CHARS = 2000
TRUNCATED_MARK = "$truncated"


@dataclass(frozen=True)
class Outcome:
    """What happened to one invocation, before it becomes a signed record."""

    status: str
    output: Any = None
    error: str | None = None
    duration_ms: int | None = None
    cold_start: bool | None = None
    queued_ms: int | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown result status {self.status!r}")


def _data_model(value: Any) -> Any:
    """The atproto data model has no floats: integral floats become ints, others strings."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _data_model(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_data_model(v) for v in value]
    return value


def shape_output(value: Any, max_bytes: int) -> dict[str, Any] | None:
    """Records hold objects: wrap any other value as {"value": …}; cut oversize output and say so."""
    if value is None:
        return None
    shaped = _data_model(value)
    if not isinstance(shaped, dict) or "$type" in shaped:
        shaped = {"value": shaped}
    text = json.dumps(shaped, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode())
    if size > max_bytes:
        head = text.encode()[: max(0, max_bytes - 200)].decode("utf-8", "ignore")
        return {TRUNCATED_MARK: True, "originalBytes": size, "head": head}
    return shaped


def build_result(
    *, invocation: dict[str, str], bundle: dict[str, str], runner: str, outcome: Outcome,
    keys: RunnerKeys, max_output_bytes: int,
) -> dict[str, Any]:
    """A signed result record in atproto JSON form, ready for createRecord/putRecord."""
    record: dict[str, Any] = {
        "$type": RESULT_NSID,
        "invocation": {"uri": invocation["uri"], "cid": invocation["cid"]},
        "bundle": {"uri": bundle["uri"], "cid": bundle["cid"]},
        "runner": runner,
        "status": outcome.status,
        "createdAt": now_datetime(),
    }
    output = shape_output(outcome.output, max_output_bytes) if outcome.status == "success" else None
    if output is not None:
        record["output"] = output
    if outcome.error:
        record["error"] = outcome.error[:MAX_ERROR_CHARS]
    metrics = {k: v for k, v in (("durationMs", outcome.duration_ms), ("coldStart", outcome.cold_start),
                                 ("queuedMs", outcome.queued_ms)) if v is not None}
    if metrics:
        record["metrics"] = metrics
    sig = keys.sign(signing_payload(record))
    record["sig"] = {"$bytes": base64.b64encode(sig).decode().rstrip("=")}
    return record
