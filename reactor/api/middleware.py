"""Request ids, header-count limits, one log line per request and a last-resort error handler,
as one pure ASGI layer (no BaseHTTPMiddleware: it would cost a task and a queue per request)."""

from __future__ import annotations

import secrets
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bound_contextvars

from reactor.api.errors import internal_error, too_many_headers

log = structlog.get_logger(__name__)

REQUEST_ID = b"x-request-id"


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane token (8-64 of [A-Za-z0-9-]), else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID and 8 <= len(value) <= 64 and value.replace(b"-", b"").isalnum() \
                and value.isascii():
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
        rid = request_id.encode()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID]
                headers.append((REQUEST_ID, rid))
                message = {**message, "headers": headers}
            await send(message)

        with bound_contextvars(request_id=request_id):
            try:
                if len(scope.get("headers", ())) > self.max_headers:
                    await too_many_headers(self.max_headers).response()(scope, receive, send_with_id)
                else:
                    await self.app(scope, receive, send_with_id)
            except Exception:  # clients get a clean 500, the log gets the trace
                log.exception("http.unhandled", method=scope.get("method"), path=scope.get("path"))
                if not status:
                    await internal_error().response()(scope, receive, send_with_id)
            finally:
                log.debug("http.request", method=scope.get("method"), path=scope.get("path"), status=status,
                          ms=round((time.perf_counter() - started) * 1000, 3))
