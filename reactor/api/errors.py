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


def too_many_headers(limit: int) -> XrpcHttpError:
    return XrpcHttpError(431, "InvalidRequest", f"more than {limit} request headers")


def rate_limited(message: str, retry_after_s: int) -> XrpcHttpError:
    return XrpcHttpError(429, "RateLimitExceeded", message, {"Retry-After": str(max(1, retry_after_s))})


def internal_error() -> XrpcHttpError:
    return XrpcHttpError(500, "InternalServerError", "internal error")


# Starlette's own HTTP errors (no route, wrong method) in XRPC form.
_HTTP_ERROR_NAMES = {404: "NotFound", 405: "MethodNotAllowed"}


def from_http_status(status: int, detail: str, headers: dict[str, str] | None = None) -> XrpcHttpError:
    return XrpcHttpError(status, _HTTP_ERROR_NAMES.get(status, "InvalidRequest"), detail, headers)
