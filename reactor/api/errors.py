"""XRPC-style errors: `{error, message}` with the right HTTP status, never a stack trace."""

from __future__ import annotations

from starlette.responses import JSONResponse


class XrpcHttpError(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "message": self.message}, status_code=self.status,
                            headers=self.headers)


def invalid_request(message: str) -> XrpcHttpError:
    return XrpcHttpError(400, "InvalidRequest", message)


def auth_missing(message: str = "this endpoint needs an ATProto service-auth JWT (Authorization: Bearer)") \
        -> XrpcHttpError:
    return XrpcHttpError(401, "AuthMissing", message)


def invalid_token(message: str) -> XrpcHttpError:
    return XrpcHttpError(401, "InvalidToken", message)


def forbidden(message: str) -> XrpcHttpError:
    return XrpcHttpError(403, "Forbidden", message)


def bundle_not_found(message: str) -> XrpcHttpError:
    return XrpcHttpError(404, "BundleNotFound", message)


def payload_too_large(limit: int) -> XrpcHttpError:
    return XrpcHttpError(413, "PayloadTooLarge", f"request body exceeds {limit} bytes")


def rate_limited(message: str, retry_after_s: int) -> XrpcHttpError:
    return XrpcHttpError(429, "RateLimitExceeded", message, {"Retry-After": str(max(1, retry_after_s))})
