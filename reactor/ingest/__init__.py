"""Ingestion: subscriptions and backfill feed verified records into the bundle cache and invocation queue."""
