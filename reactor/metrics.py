"""Prometheus metrics. One registry per process; names are `atrund_*`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

frames_total = Counter("atrund_firehose_frames_total", "Firehose frames received", ["source"], registry=REGISTRY)
events_rejected = Counter(
    "atrund_events_rejected_total", "Events rejected during verification, by reason", ["reason"], registry=REGISTRY
)
events_processed = Counter(
    "atrund_events_processed_total", "Relevant records applied, by collection and action",
    ["collection", "action"], registry=REGISTRY,
)
invocations_intake = Counter(
    "atrund_invocations_intake_total", "Invocation records aimed at this runner, by outcome", ["outcome"],
    registry=REGISTRY,
)
bundle_errors = Counter("atrund_bundle_errors_total", "Bundles that could not be cached", ["reason"], registry=REGISTRY)
reconnects = Counter("atrund_firehose_reconnects_total", "Subscription reconnects", ["source"], registry=REGISTRY)
source_connected = Gauge("atrund_firehose_connected", "1 while a subscription is connected", ["source"],
                         registry=REGISTRY)
backfills = Counter("atrund_backfills_total", "Repo backfills, by outcome", ["outcome"], registry=REGISTRY)
executions = Counter("atrund_executions_total", "Executions by result status", ["status"], registry=REGISTRY)
execution_seconds = Histogram("atrund_execution_seconds", "Execution wall time", registry=REGISTRY)
results_written = Counter("atrund_results_written_total", "Result records written, by target", ["target"],
                          registry=REGISTRY)
outbox_failures = Counter("atrund_outbox_failures_total", "Failed result writes (retried)", registry=REGISTRY)


def value(counter: Counter, **labels: str) -> float:
    """Current value of one labelled counter (tests and health use this)."""
    return counter.labels(**labels)._value.get() if labels else counter._value.get()  # noqa: SLF001
