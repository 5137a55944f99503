"""Wire models at the executor's edge: what the reactor sends and gets back.

JSON field names are fixed by the at-run-exec protocol (camelCase); Python code
uses snake_case attributes. Both names are accepted on input.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

ErrorKind = Literal["timeout", "limitExceeded", "denied", "error", "invalid"]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able dict with protocol (camelCase) names."""
        return self.model_dump(mode="json", by_alias=True)


class Permissions(_Wire):
    """What a bundle may touch. `"*"` in a list grants everything of that kind."""

    net: list[str] = Field(default_factory=list)
    read: list[str] = Field(default_factory=list)
    write: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)

    def is_full(self) -> bool:
        """True when the bundle asked for everything, so an unenforced runtime hides nothing from it."""
        everything = {"/", "*"}
        paths = bool(everything & set(self.read)) and bool(everything & set(self.write))
        return paths and "*" in self.net and "*" in self.env


class Limits(_Wire):
    """Per-call resource caps; None means "use the executor's default"."""

    memory_mb: int | None = Field(default=None, ge=16)
    pids: int | None = Field(default=None, ge=1)
    output_bytes: int | None = Field(default=None, ge=64)


class HttpRequest(_Wire):
    """An HTTP call routed to a bundle. `query` is the raw query string (a dict is encoded)."""

    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    is_base64: bool = False

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return urlencode(value, doseq=True)
        return "" if value is None else value


class ExecRequest(_Wire):
    """One call of one endpoint of one bundle.

    `bundleKey` identifies bundle and version (e.g. at-uri + cid): instances are pooled by it
    together with everything that shapes the sandbox (permissions, env, limits).
    `codePath` is the bundle's entry module; its directory is the bundle's root and is the only
    bundle directory the sandbox can read.
    """

    bundle_key: str = Field(min_length=1)
    mime_type: str = Field(min_length=1)
    code_path: str = Field(min_length=1)
    endpoint: str = ""
    args: Any = None
    permissions: Permissions = Field(default_factory=Permissions)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0)
    limits: Limits = Field(default_factory=Limits)
    request: HttpRequest | None = None


class HttpResponse(_Wire):
    status: int = 200
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    is_base64: bool = False


class Metrics(_Wire):
    execution_time_ms: float = 0.0
    cold_start: bool = False


class ExecResponse(_Wire):
    """The outcome of one call; `errorKind` lets the caller map to a result status."""

    model_config = ConfigDict(extra="ignore")

    success: bool
    data: Any = None
    response: HttpResponse | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    # Set by the executor (never read from a runtime's reply): the instance died or misbehaved
    # without hitting a limit, so the same call may well succeed on a fresh one.
    crashed: bool = Field(False, exclude=True)

    @classmethod
    def failure(cls, kind: ErrorKind, error: str, *, cold_start: bool = False, elapsed_ms: float = 0.0,
                crashed: bool = False) -> ExecResponse:
        return cls(
            success=False,
            error=error,
            error_kind=kind,
            crashed=crashed,
            metrics=Metrics(execution_time_ms=elapsed_ms, cold_start=cold_start),
        )
