"""Operator-only routes for `at-rund pool …`, guarded by a token file only the operator can read.

The token lives in `<home>/admin.token` (0600), created on the first `serve`;
requests must come from loopback and carry it as a Bearer token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from reactor.api.errors import XrpcHttpError, forbidden, invalid_request

TOKEN_FILE = "admin.token"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def ensure_admin_token(home: Path) -> str:
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def read_admin_token(home: Path) -> str:
    return (home / TOKEN_FILE).read_text().strip()


PoolAction = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def admin_routes(token: str, actions: dict[str, PoolAction]) -> list[Route]:
    def authorise(request: Request) -> None:
        client = request.client.host if request.client else ""
        if client not in LOOPBACK:
            raise forbidden("admin routes answer only on loopback")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise XrpcHttpError(401, "InvalidToken", f"admin token mismatch (see {TOKEN_FILE})")

    def route(name: str, action: PoolAction) -> Route:
        async def handler(request: Request) -> JSONResponse:
            authorise(request)
            try:
                body = await request.json() if request.method == "POST" else {}
            except ValueError:
                raise invalid_request("body must be JSON") from None
            return JSONResponse(await action(body if isinstance(body, dict) else {}))

        return Route(f"/admin/pool/{name}", handler, methods=["GET"] if name == "status" else ["POST"])

    return [route(name, action) for name, action in actions.items()]
