"""The runner declaration, `dev.atrun.runner/self`: where to reach this runner and its public keys.

Authors seal secrets and grants to the `encryptionKey` found here and check
results against the `signingKey`, so it is rewritten whenever it changes, and
left alone (no new commit on every start) when it does not.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import ValidationError

from reactor.config import Config
from reactor.identity import IdentityResolver
from reactor.keys import RunnerKeys
from reactor.records import RUNNER_NSID, RunnerDeclaration, now_datetime
from reactor.writers.repo import RecordView, get_record
from reactor.xrpc import XrpcClient

RKEY = RunnerDeclaration.RKEY
_VOLATILE = frozenset({"createdAt"})


class DeclarationError(Exception):
    """A runner's declaration is missing or unusable."""


class RepoSession(Protocol):
    """What publishing needs from a logged-in session on the runner's repo (RunnerRepoWriter has it)."""

    async def get_record(self, collection: str, rkey: str) -> RecordView | None: ...

    async def put_record(self, collection: str, rkey: str, record: dict[str, Any]) -> str: ...


def endpoint_url(config: Config) -> str:
    if config.public_url:
        return config.public_url.rstrip("/")
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def build_declaration(config: Config, keys: RunnerKeys, runtimes: list[str], sandbox_classes: list[str],
                      *, isolation: str | None = None) -> dict[str, Any]:
    """The record, validated against the lexicon. `isolation` overrides config (whose "auto" is omitted)."""
    isolation = isolation or (config.isolation if config.isolation != "auto" else None)
    record = RunnerDeclaration(
        endpoint=endpoint_url(config),
        runtimes=sorted(set(runtimes)),
        isolation=isolation,
        sandbox_classes=sorted(set(sandbox_classes)) or None,
        access=config.access.mode,
        encryption_key=keys.encryption_did_key,
        signing_key=keys.signing_did_key,
        created_at=now_datetime(),
    )
    return record.to_record_json()


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _VOLATILE}


async def publish(repo: RepoSession, record: dict[str, Any]) -> bool:
    """putRecord `dev.atrun.runner/self` unless the stored one is the same apart from createdAt."""
    existing = await repo.get_record(RUNNER_NSID, RKEY)
    if existing is not None and _comparable(existing.value) == _comparable(record):
        return False
    await repo.put_record(RUNNER_NSID, RKEY, record)
    return True


async def fetch_declaration(xrpc: XrpcClient, identity: IdentityResolver, runner_did: str) -> RunnerDeclaration:
    """The declaration a runner publishes in its own repo (hostile input: validated)."""
    pds = (await identity.resolve(runner_did)).pds
    if not pds:
        raise DeclarationError(f"{runner_did} has no PDS endpoint")
    found = await get_record(xrpc, pds, runner_did, RUNNER_NSID, RKEY)
    if found is None:
        raise DeclarationError(f"{runner_did} publishes no {RUNNER_NSID}/{RKEY} record")
    try:
        return RunnerDeclaration.model_validate(found.value)
    except ValidationError:
        raise DeclarationError(f"{found.uri} is not a valid {RUNNER_NSID} record") from None
