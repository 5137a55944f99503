"""Isolation backends and runtime executors behind one Executor interface.

The reactor depends only on what is exported here.
"""

from sandboxes.errors import RuntimeConfigError, SandboxError, SandboxUnavailable
from sandboxes.executor import Executor
from sandboxes.factory import RuntimeInfo, available_backends, create_executor, list_runtimes
from sandboxes.models import (
    ErrorKind,
    ExecRequest,
    ExecResponse,
    HttpRequest,
    HttpResponse,
    Limits,
    Metrics,
    Permissions,
)
from sandboxes.settings import DefaultLimits, Isolation, PoolSettings, SandboxSettings

__all__ = [
    "DefaultLimits",
    "ErrorKind",
    "ExecRequest",
    "ExecResponse",
    "Executor",
    "HttpRequest",
    "HttpResponse",
    "Isolation",
    "Limits",
    "Metrics",
    "Permissions",
    "PoolSettings",
    "RuntimeConfigError",
    "RuntimeInfo",
    "SandboxError",
    "SandboxSettings",
    "SandboxUnavailable",
    "available_backends",
    "create_executor",
    "list_runtimes",
]
