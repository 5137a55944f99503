"""Access policy: each mode, and the blocklist always winning."""

from reactor.access import AccessPolicy
from reactor.config import AccessConfig

A, B, C = "did:plc:alice", "did:plc:bob", "did:plc:carol"


def test_open_allows_all_but_blocked() -> None:
    policy = AccessPolicy.from_config(AccessConfig(mode="open", blocklist=[B]))
    assert policy.allows(A) and not policy.allows(B)


def test_allowlist_allows_only_listed() -> None:
    policy = AccessPolicy.from_config(AccessConfig(mode="allowlist", allowlist=[A]))
    assert policy.allows(A)
    decision = policy.check(B)
    assert not decision.allowed and "allowlist" in decision.reason


def test_follows_plus_allowlist_minus_blocklist() -> None:
    config = AccessConfig(mode="follows", allowlist=[C], blocklist=[B])
    policy = AccessPolicy.from_config(config, follows=frozenset({A, B}))
    assert policy.allows(A) and policy.allows(C) and not policy.allows(B)
    assert policy.entries() == [(A, "follows"), (C, "allowlist"), (B, "blocklist")]
    assert policy.size == 2
    assert not policy.with_follows(frozenset()).allows(A)
