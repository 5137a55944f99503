"""Operator-facing knobs, as plain dataclasses the reactor fills from its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Isolation = Literal["auto", "none", "bwrap", "container", "gvisor", "microvm", "wasm"]


@dataclass(frozen=True)
class DefaultLimits:
    """Caps used when a request leaves a limit unset."""

    memory_mb: int = 128
    pids: int = 32
    output_bytes: int = 256 * 1024
    timeout_s: float = 10.0


@dataclass(frozen=True)
class PoolSettings:
    """Warm-instance pool sizing.

    `prewarm` keeps N generic hosts per runtime ready to adopt a bundle. `spares` keeps N tiny
    stub processes already inside fresh cgroups, so a cold start skips the cgroup join (an RCU
    grace period, ~10 ms) and the fork of the runner: they are not instances and hold no bundle.
    """

    idle_timeout_s: float = 300.0
    max_instances: int = 32
    max_per_bundle: int = 4
    prewarm: dict[str, int] = field(default_factory=dict)
    drain_timeout_s: float = 30.0
    spares: int = 1


@dataclass(frozen=True)
class SandboxSettings:
    """Everything `create_executor` needs.

    `state_dir` is the runner's home (keys, bundles, ...): no permission a bundle asks for may
    reach into it, except its own code directory. Sandbox scratch space lives in
    `state_dir/sandbox/`.
    """

    state_dir: Path
    isolation: Isolation = "auto"
    dev: bool = False
    runtimes_dir: Path | None = None
    limits: DefaultLimits = field(default_factory=DefaultLimits)
    pool: PoolSettings = field(default_factory=PoolSettings)

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "sandbox"
