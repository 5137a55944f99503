"""Shared helpers for the sandbox tests (no tests here): state dirs, bundles, loopback servers."""

from __future__ import annotations

import asyncio
import os
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxes import ExecRequest, Permissions, available_backends

MIME = {".ts": "application/typescript", ".js": "application/javascript", ".py": "text/x-python"}
KEY_TEXT = "RUNNER-PRIVATE-KEY-DO-NOT-LEAK"


def backend_params() -> list[Any]:
    """none and bwrap; bwrap skips (with the reason printed as a warning too) where it can't run."""
    reasons = available_backends()
    params = []
    for name in ("none", "bwrap"):
        reason = reasons[name]
        if reason is not None:
            warnings.warn(f"sandbox tests for backend {name!r} skipped: {reason}", stacklevel=2)
        params.append(pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=f"{name}: {reason}")))
    return params


@dataclass
class State:
    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def key_file(self) -> Path:
        return self.keys / "signing.key"

    def bundle(self, name: str, filename: str, source: str) -> Path:
        directory = self.root / "bundles" / name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        path.write_text(textwrap.dedent(source))
        return path


def make_state(root: Path) -> State:
    state = State(root)
    state.keys.mkdir(parents=True, exist_ok=True)
    os.chmod(state.keys, 0o700)
    state.key_file.write_text(KEY_TEXT)
    os.chmod(state.key_file, 0o600)
    return state


def call(code_path: Path, endpoint: str, args: Any = None, **fields: Any) -> ExecRequest:
    fields.setdefault("bundleKey", f"at://did:plc:test/{code_path.parent.name}#v1")
    fields.setdefault("timeout", 10)
    if isinstance(fields.get("permissions"), dict):
        fields["permissions"] = Permissions(**fields["permissions"])
    fields.setdefault("mimeType", MIME.get(code_path.suffix, "application/octet-stream"))
    return ExecRequest(code_path=str(code_path), endpoint=endpoint, args=args, **fields)


FULL = {"net": ["*"], "read": ["/"], "write": ["/"], "env": ["*"]}


class Loopback:
    """A tiny HTTP server on 127.0.0.1 answering 200 with a fixed body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Loopback:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
