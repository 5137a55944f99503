"""Pick a backend by name and build the executor; describe what this machine can run."""

from __future__ import annotations

import asyncio

import structlog
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from sandboxes import cgroups
from sandboxes.backends import IMPLEMENTED, PLANNED
from sandboxes.backends.base import Backend
from sandboxes.errors import RuntimeConfigError, SandboxUnavailable
from sandboxes.executor import Executor
from sandboxes.runtimes import BUILTIN_DIR, load_runtime, load_runtimes
from sandboxes.service import SandboxExecutor
from sandboxes.settings import SandboxSettings

log = structlog.get_logger(__name__)


def available_backends() -> dict[str, str | None]:
    """Every backend name -> None if usable here, else why not (may run a short bwrap probe)."""
    cgroup_reason = cgroups.check()
    result: dict[str, str | None] = {}
    for name, backend_type in IMPLEMENTED.items():
        reason = backend_type().unavailable_reason()
        if reason is None and cgroup_reason is not None:
            reason = f"cgroups unusable ({cgroup_reason}); only dev mode runs without memory/pids limits"
        result[name] = reason
    for name in PLANNED:
        result[name] = "not implemented yet"
    return result


def _pick_backend(name: str) -> Backend:
    if name in PLANNED:
        raise SandboxUnavailable(f"isolation backend {name!r} is not implemented yet; use 'bwrap' or 'none'")
    if name == "auto":
        bwrap = IMPLEMENTED["bwrap"]()
        reason = bwrap.unavailable_reason()
        if reason is None:
            return bwrap
        log.warning("sandbox.auto_fallback", backend="none", reason=reason)
        return IMPLEMENTED["none"]()
    if name not in IMPLEMENTED:
        raise SandboxUnavailable(f"unknown isolation backend {name!r}; choose auto, none, bwrap, {', '.join(PLANNED)}")
    backend = IMPLEMENTED[name]()
    reason = backend.unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"isolation backend {name!r} cannot run here: {reason}")
    return backend


def create_executor(settings: SandboxSettings) -> Executor:
    """Build the executor for `settings.isolation`.

    Synchronous so it can run at startup; it probes bwrap once (a few ms). If called inside a
    running event loop it also kicks off runtime preparation and prewarm in the background;
    otherwise that happens on first use (or `await executor.start()`).
    """
    backend = _pick_backend(settings.isolation)
    try:
        detected = cgroups.CgroupManager.detect()
        detected.sweep_stale()
        manager: cgroups.CgroupManager | None = detected
    except SandboxUnavailable as error:
        if not settings.dev:
            raise SandboxUnavailable(f"memory and pids limits need cgroups: {error}") from None
        log.warning("sandbox.no_cgroups", reason=str(error), consequence="no memory or pids limits (dev mode)")
        manager = None
    runtimes = load_runtimes(settings.runtimes_dir)
    if not backend.isolating:
        log.warning(
            "sandbox.no_isolation",
            backend=backend.name,
            detail="bundles run as plain processes of the runner's user: limits apply, isolation does not",
        )
    executor = SandboxExecutor(settings, backend, manager, runtimes)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        executor._started = asyncio.ensure_future(executor._start())
    return executor


class RuntimeInfo(BaseModel):
    """One row of `at-rund runtime list`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    mime_types: list[str]
    source: str
    builtin: bool
    binary: str | None
    warm: bool
    enforces_permissions: bool
    available: bool
    reason: str | None = None


def list_runtimes(settings: SandboxSettings) -> list[RuntimeInfo]:
    """Built-in and operator runtimes with their availability here; broken files are listed too."""
    rows: dict[str, RuntimeInfo] = {}
    files = [(p, True) for p in sorted(BUILTIN_DIR.glob("*.toml"))]
    if settings.runtimes_dir is not None and settings.runtimes_dir.is_dir():
        files += [(p, False) for p in sorted(settings.runtimes_dir.glob("*.toml"))]
    for path, builtin in files:
        try:
            runtime = load_runtime(path, builtin=builtin)
        except RuntimeConfigError as error:
            rows[path.stem] = RuntimeInfo(
                name=path.stem, mime_types=[], source=str(path), builtin=builtin, binary=None, warm=False,
                enforces_permissions=False, available=False, reason=str(error),
            )
            continue
        binary, _ = runtime.resolve_binary()
        reason = runtime.availability()
        rows[runtime.name] = RuntimeInfo(
            name=runtime.name, mime_types=list(runtime.mime_types), source="builtin" if builtin else str(path),
            builtin=builtin, binary=str(binary) if binary else None, warm=runtime.warm,
            enforces_permissions=runtime.enforces_permissions, available=reason is None, reason=reason,
        )
    return list(rows.values())


__all__ = ["RuntimeInfo", "available_backends", "create_executor", "list_runtimes"]
