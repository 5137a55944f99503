"""A small async XRPC client over httpx: just the calls the runner makes.

Responses from other servers are hostile: sizes are capped while streaming and
errors become `XrpcError` with the server's `{error, message}` when it sent one.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx

from reactor.capped import OverLimit, collect_capped

USER_AGENT = "at-rund"


class XrpcError(Exception):
    def __init__(self, status: int, error: str, message: str = "") -> None:
        super().__init__(f"{error} ({status}): {message}" if message else f"{error} ({status})")
        self.status = status
        self.error = error
        self.message = message


class TooLarge(XrpcError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "PayloadTooLarge", f"response exceeds {limit} bytes")


def _raise_for(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    error, message = "XrpcError", ""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict):
            error = str(payload.get("error") or error)[:100]
            message = str(payload.get("message") or "")[:500]
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    raise XrpcError(response.status_code, error, message)


class XrpcClient:
    """One shared httpx pool; every call names the service base URL explicitly."""

    def __init__(self, *, timeout_s: float = 15.0, max_json_bytes: int = 8 * 1024 * 1024) -> None:
        self._http = httpx.AsyncClient(timeout=timeout_s, headers={"user-agent": USER_AGENT},
                                       follow_redirects=False)
        self._max_json = max_json_bytes

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _bytes(self, method: str, url: str, limit: int, **kwargs: Any) -> tuple[httpx.Response, bytes]:
        async with self._http.stream(method, url, **kwargs) as response:
            try:
                body = await collect_capped(response.aiter_bytes(), limit, response.headers.get("content-length"))
            except OverLimit:
                raise TooLarge(limit) from None
        _raise_for(response, body)
        return response, body

    async def query(self, service: str, nsid: str, params: dict[str, Any] | None = None,
                    *, token: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response, body = await self._bytes("GET", f"{service.rstrip('/')}/xrpc/{nsid}", self._max_json,
                                           params=_clean(params), headers=headers)
        return _json(body, nsid)

    async def procedure(self, service: str, nsid: str, body: Any = None, *, token: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response, raw = await self._bytes("POST", f"{service.rstrip('/')}/xrpc/{nsid}", self._max_json,
                                          json=body, headers=headers)
        return _json(raw, nsid)

    async def get_blob(self, service: str, did: str, cid: str, *, limit: int) -> tuple[str, bytes]:
        response, body = await self._bytes(
            "GET", f"{service.rstrip('/')}/xrpc/com.atproto.sync.getBlob", limit, params={"did": did, "cid": cid}
        )
        return response.headers.get("content-type", "application/octet-stream"), body

    async def get_repo(self, service: str, did: str, *, limit: int) -> bytes:
        _, body = await self._bytes(
            "GET", f"{service.rstrip('/')}/xrpc/com.atproto.sync.getRepo", limit, params={"did": did}
        )
        return body

    async def get_record_proof(self, service: str, did: str, collection: str, rkey: str,
                               *, limit: int = 2 * 1024 * 1024) -> bytes:
        _, body = await self._bytes(
            "GET", f"{service.rstrip('/')}/xrpc/com.atproto.sync.getRecord", limit,
            params={"did": did, "collection": collection, "rkey": rkey},
        )
        return body

    async def list_records(self, service: str, repo: str, collection: str,
                           *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = await self.query(service, "com.atproto.repo.listRecords",
                                    {"repo": repo, "collection": collection, "limit": page_size, "cursor": cursor})
            records = page.get("records", []) if isinstance(page, dict) else []
            for record in records:
                yield record
            cursor = page.get("cursor") if isinstance(page, dict) else None
            if not cursor or not records:
                return


def _json(body: bytes, nsid: str) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise XrpcError(502, "BadResponse", f"{nsid} returned invalid JSON") from None


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in params.items() if v is not None} if params else None
