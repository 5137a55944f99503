"""What the HTTP handlers need from the rest of the runner, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reactor.api.auth import ServiceAuth
from reactor.api.quotas import Quotas
from reactor.config import Config
from reactor.dispatch.execute import CallRunner
from reactor.identity import IdentityResolver


@dataclass
class ApiContext:
    config: Config
    runner_did: str
    identity: IdentityResolver
    calls: CallRunner
    auth: ServiceAuth
    quotas: Quotas
    health: Callable[[], Awaitable[dict[str, Any]]]
    describe: Callable[[], dict[str, Any]]
    # handle → (when, why) for handles that did not resolve (see reactor.api.authority)
    unresolvable: dict[str, tuple[float, str]] = field(default_factory=dict)
