"""at-run-exec host for Python bundles: JSON lines on stdin, one reply line per message on stdout.

Same protocol as the Deno host (`load` / `call` messages matched by `id`). Bundle contract:
`def hello(args, ctx)` (sync or async); `ctx.env` is a dict of the bundle's secrets and permitted
env vars; for HTTP calls `ctx.request` is an `at_run.Request` (method, path, query, headers,
body bytes, .text(), .json()). Return JSON, or `at_run.Response(status, headers, body)`.

Python has no permission system: whatever the process can reach, the bundle can. Containment is
the backend's job (namespaces, cgroups).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import json
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any

MAIN_PID = os.getpid()
_protocol = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)  # bundle prints go to stderr, never into the protocol stream
sys.stdout = sys.stderr


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""


@dataclass
class Context:
    env: dict[str, str]
    request: Request | None = None


_api = types.ModuleType("at_run")
_api.Request, _api.Response, _api.Context = Request, Response, Context  # type: ignore[attr-defined]
sys.modules["at_run"] = _api

_modules: dict[str, types.ModuleType] = {}
_loop = asyncio.new_event_loop()


def _load(code_path: str) -> types.ModuleType:
    module = _modules.get(code_path)
    if module is None:
        root = os.path.dirname(code_path)
        if root not in sys.path:
            sys.path.insert(0, root)
        spec = importlib.util.spec_from_file_location("bundle", code_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {code_path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bundle"] = module
        spec.loader.exec_module(module)
        _modules[code_path] = module
    return module


def _to_request(raw: dict[str, Any]) -> Request:
    body = raw.get("body") or ""
    data = base64.b64decode(body) if raw.get("isBase64") else body.encode("utf-8")
    return Request(
        method=(raw.get("method") or "GET").upper(),
        path=raw.get("path") or "/",
        query=raw.get("query") or "",
        headers=dict(raw.get("headers") or {}),
        body=data,
    )


def _from_response(res: Response) -> dict[str, Any]:
    body = res.body.encode("utf-8") if isinstance(res.body, str) else bytes(res.body)
    try:
        return {"status": res.status, "headers": dict(res.headers), "body": body.decode("utf-8"), "isBase64": False}
    except UnicodeDecodeError:
        encoded = base64.b64encode(body).decode()
        return {"status": res.status, "headers": dict(res.headers), "body": encoded, "isBase64": True}


def _failure(ident: Any, kind: str, error: str) -> dict[str, Any]:
    return {"id": ident, "success": False, "errorKind": kind, "error": error}


def _kind(error: BaseException) -> str:
    return "denied" if isinstance(error, PermissionError) else "error"


def _handle(msg: dict[str, Any]) -> dict[str, Any]:
    ident = msg.get("id", 0)
    try:
        if msg.get("op") == "load":
            os.environ.update(msg.get("env") or {})
            _load(msg["codePath"])
            return {"id": ident, "success": True}
        module = _load(msg["codePath"])
        endpoint = msg.get("endpoint") or ""
        fn = getattr(module, endpoint, None) if not endpoint.startswith("_") else None
        if not callable(fn):
            return _failure(ident, "invalid", f"bundle exports no endpoint {endpoint!r}")
        raw_request = msg.get("request")
        ctx = Context(env=dict(msg.get("env") or {}), request=_to_request(raw_request) if raw_request else None)
        result = fn(msg.get("args"), ctx)
        if inspect.isawaitable(result):
            result = _loop.run_until_complete(result)
        if isinstance(result, Response):
            return {"id": ident, "success": True, "response": _from_response(result)}
        return {"id": ident, "success": True, "data": result}
    except BaseException as error:  # noqa: BLE001 - everything the bundle does is reported, not fatal
        if os.getpid() != MAIN_PID:
            os._exit(1)  # a forked child of the bundle must never answer on the protocol stream
        if isinstance(error, KeyboardInterrupt):
            raise
        return {"id": ident, "success": False, "errorKind": _kind(error), "error": f"{type(error).__name__}: {error}"}


def _encode(reply: dict[str, Any], cap: int | None) -> bytes:
    try:
        line = json.dumps(reply, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        line = json.dumps(_failure(reply.get("id", 0), "error", f"result is not JSON: {error}"))
    data = (line + "\n").encode("utf-8")
    if cap and len(data) > cap:
        message = f"output of {len(data)} bytes exceeds the {cap}-byte cap (cut)"
        data = (json.dumps(_failure(reply.get("id", 0), "limitExceeded", message)) + "\n").encode()
    return data


def main() -> None:
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            cap = (msg.get("limits") or {}).get("outputBytes")
            reply = _handle(msg)
        except ValueError as error:
            reply, cap = {"id": 0, "success": False, "errorKind": "invalid", "error": f"bad message: {error}"}, None
        if os.getpid() != MAIN_PID:
            os._exit(0)  # a child that returned from a fork inside the bundle
        data = memoryview(_encode(reply, cap))
        while data:
            data = data[_protocol.write(data) or 0:]


if __name__ == "__main__":
    main()
