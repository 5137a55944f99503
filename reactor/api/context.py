"""What the HTTP handlers need from the rest of the runner, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

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
