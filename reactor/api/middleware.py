"""Request ids, header-count limits and a last-resort error handler, as one pure ASGI layer."""

from __future__ import annotations

import secrets
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bound_contextvars

from reactor.api.errors import XrpcHttpError

log = structlog.get_logger(__name__)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id" and 8 <= len(value) <= 64 and value.replace(b"-", b"").isalnum():
            return value.decode()
    return secrets.token_hex(8)


class RequestContext:
    def __init__(self, app: ASGIApp, *, max_headers: int) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bound_contextvars(request_id=request_id):
            if len(scope.get("headers", [])) > self.max_headers:
                error = XrpcHttpError(431, "InvalidRequest", f"more than {self.max_headers} request headers")
                await error.response()(scope, receive, send_with_id)
                return
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:  # noqa: BLE001 - clients get a clean 500, the log gets the trace
                log.exception("http.unhandled", path=scope.get("path"))
                if not started:
                    response = XrpcHttpError(500, "InternalServerError", "internal error").response()
                    await response(scope, receive, send_with_id)


def client_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
