"""The runner declaration follows the access mode: a SIGHUP reload that changes it re-publishes."""

from __future__ import annotations

from pathlib import Path

from reactor.config import AccessConfig
from tests.atnet import TestNetwork, XrpcError
from tests.runner_kit import eventually, runner_config, start_runner


async def test_access_mode_change_republishes_the_declaration(atnet: TestNetwork, tmp_path: Path) -> None:
    runner = await atnet.create_account("runner")
    config = runner_config(tmp_path, atnet, runner.did, isolation="none", atproto={
        "pds_url": atnet.pds_url, "identifier": runner.did, "password": await runner.app_password("decl")})
    services = await start_runner(config)

    async def declared_access() -> str | None:
        try:
            return (await runner.get_record("dev.atrun.runner", "self"))["value"]["access"]
        except XrpcError:
            return None

    try:
        assert await eventually(declared_access, what="first declaration") == "open"
        record = await runner.get_record("dev.atrun.runner", "self")
        assert record["value"]["signingKey"] == services.keys.signing_did_key
        assert record["value"]["encryptionKey"] == services.keys.encryption_did_key
        services.reload_access(AccessConfig(mode="allowlist", allowlist=[runner.did]))

        async def republished() -> bool:
            return await declared_access() == "allowlist"

        await eventually(republished, what="declaration with the new access mode")
    finally:
        await services.close()
