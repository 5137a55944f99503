"""The one interface the reactor depends on."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sandboxes.models import ExecRequest, ExecResponse


@runtime_checkable
class Executor(Protocol):
    """Runs bundle calls in sandboxes and keeps warm instances.

    `execute` never raises for anything a bundle or a request does: it answers with an
    ExecResponse whose `errorKind` says what went wrong.
    """

    @property
    def backend(self) -> str:
        """Name of the isolation backend in use (`none`, `bwrap`, ...)."""
        ...

    async def start(self) -> None:
        """Idempotent: prepare runtimes, spares and configured prewarm. `execute`/`warm` call it
        lazily; a daemon awaits it at startup so the first call does not pay for it."""
        ...

    async def execute(self, request: ExecRequest) -> ExecResponse:
        ...

    async def warm(self, target: ExecRequest | str, count: int = 1) -> int:
        """Keep `count` instances loaded for a bundle (an ExecRequest; endpoint/args unused), or
        `count` generic hosts for a runtime (its name). 0 unpins. Returns how many are warm."""
        ...

    async def stats(self) -> dict[str, Any]:
        """Plain JSON-able counters: warm, busy, idle, cold starts per runtime and per bundle."""
        ...

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking work, let in-flight calls finish within `timeout`, then shut down."""
        ...

    async def shutdown(self) -> None:
        """Kill every instance now; in-flight calls answer with an error."""
        ...
