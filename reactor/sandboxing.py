"""The one place the reactor translates its config into sandbox settings."""

from __future__ import annotations

from sandboxes import DefaultLimits, PoolSettings, RuntimeInfo, SandboxSettings, list_runtimes

from reactor.config import Config


def sandbox_settings(config: Config, *, dev: bool = False) -> SandboxSettings:
    limits = config.limits
    return SandboxSettings(
        state_dir=config.home,
        isolation=config.isolation,
        dev=dev,
        runtimes_dir=config.runtimes_dir,
        limits=DefaultLimits(memory_mb=limits.memory_mb, pids=limits.pids, output_bytes=limits.output_bytes,
                             timeout_s=limits.timeout_ms / 1000),
        pool=PoolSettings(idle_timeout_s=config.pool.idle_timeout_s, max_instances=config.pool.max_instances,
                          max_per_bundle=config.pool.max_per_bundle, prewarm=dict(config.pool.prewarm)),
    )


def enabled_runtimes(config: Config, *, dev: bool = False) -> list[RuntimeInfo]:
    """Runtimes on this machine that the operator enabled in `[runtimes]` (operator TOMLs always count)."""
    rows = list_runtimes(sandbox_settings(config, dev=dev))
    return [r for r in rows if not r.builtin or r.name in config.runtimes]
