"""Dispatch: run queued invocations through the Executor and queue their signed results."""
