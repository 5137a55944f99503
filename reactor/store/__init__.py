"""SQLite state: cursors, identities, bundles, invocations and the results outbox.

Tables are reached through plain functions in one module per table; each takes
the connection of a transaction opened with `Store.transaction()`, so work that
must commit together (an event's cursor and the invocation it queued) does.
"""

from reactor.store import bundles, cursors, identities, invocations, outbox, repos
from reactor.store.db import Store, StoreError

__all__ = ["Store", "StoreError", "bundles", "cursors", "identities", "invocations", "outbox", "repos"]
