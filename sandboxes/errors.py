"""Errors raised across the sandbox package."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for sandbox problems."""


class SandboxUnavailable(SandboxError):
    """The requested isolation backend cannot run here; the message says why."""


class RuntimeConfigError(SandboxError):
    """An operator runtime TOML is malformed; the message names the file and key."""


class Rejected(SandboxError):
    """A request the executor refuses before running anything (maps to errorKind `invalid`/`denied`)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind
