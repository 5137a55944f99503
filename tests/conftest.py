"""Shared pytest fixtures for at-rund."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.atnet import TestNetwork, TestNetworkError, ensure_installed


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def atnet() -> AsyncIterator[TestNetwork]:
    """A loopback PLC directory + PDS shared by the whole session.

    Installs testnet/node_modules on first use; fails (never skips) if the
    network cannot start, showing node's stderr.
    """
    try:
        ensure_installed()
        net = TestNetwork()
        await net.start()
    except TestNetworkError as err:
        pytest.fail(f"ATProto test network failed to start:\n{err}", pytrace=False)
    try:
        yield net
    finally:
        await net.stop()
