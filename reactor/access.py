"""Who may use this runner: open, allowlist, blocklist, or the operator's follows.

The policy is an immutable snapshot; reloading (SIGHUP, a follow event) swaps
the whole snapshot so a check never sees a half-updated list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import structlog

from reactor.config import AccessConfig

log = structlog.get_logger(__name__)

Source = Literal["follows", "allowlist", "blocklist"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    mode: str
    allowlist: frozenset[str] = frozenset()
    blocklist: frozenset[str] = frozenset()
    follows: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, config: AccessConfig, follows: frozenset[str] = frozenset()) -> "AccessPolicy":
        return cls(config.mode, frozenset(config.allowlist), frozenset(config.blocklist), follows)

    def with_follows(self, follows: frozenset[str]) -> "AccessPolicy":
        return AccessPolicy(self.mode, self.allowlist, self.blocklist, follows)

    def check(self, did: str) -> Decision:
        if did in self.blocklist:
            return Decision(False, f"{did} is on this runner's blocklist")
        if self.mode in ("open", "blocklist"):
            return Decision(True, "open")
        if did in self.allowlist:
            return Decision(True, "allowlist")
        if self.mode == "follows" and did in self.follows:
            return Decision(True, "follows")
        what = "allowlist" if self.mode == "allowlist" else "follows or allowlist"
        return Decision(False, f"{did} is not on this runner's {what}")

    def allows(self, did: str) -> bool:
        return self.check(did).allowed

    def entries(self) -> list[tuple[str, Source]]:
        """The effective set and where each entry came from (for `at-rund access list`)."""
        rows: list[tuple[str, Source]] = []
        if self.mode == "follows":
            rows += [(did, "follows") for did in sorted(self.follows - self.blocklist - self.allowlist)]
        if self.mode in ("allowlist", "follows"):
            rows += [(did, "allowlist") for did in sorted(self.allowlist - self.blocklist)]
        rows += [(did, "blocklist") for did in sorted(self.blocklist)]
        return rows

    @property
    def size(self) -> int:
        if self.mode in ("open", "blocklist"):
            return len(self.blocklist)
        return len((self.allowlist | (self.follows if self.mode == "follows" else frozenset())) - self.blocklist)


class PolicyBox:
    """The runner's current policy. Readers call `get()`; a reload or follow change `set()`s a whole
    new snapshot, so one check never sees half an update."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    def get(self) -> AccessPolicy:
        return self._policy

    def set(self, policy: AccessPolicy) -> None:
        self._policy = policy
        log.info("access.policy", mode=policy.mode, size=policy.size)
