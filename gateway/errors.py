"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal the gateway makes is a ``GatewayError``; the app turns it into a JSON
response with the right status and headers, never a traceback.
"""

from __future__ import annotations

import orjson

#: OpenAI-style ``type`` for each status the gateway emits.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def describe(exc: BaseException) -> str:
    """An exception for a log line: its class and message (redis-py's ``repr`` gives
    only a category such as ``network:ConnectionError``, without the reason)."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class GatewayError(Exception):
    """A refusal or failure to report to the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type_: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: str | None = None,
        level: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or []
        #: Bounded machine reason for metrics (e.g. the limit that refused).
        self.reason = reason or code
        #: For limit refusals: the level ("key", "team", "org") whose limit refused.
        self.level = level

    def payload(self) -> dict[str, object]:
        return error_payload(self.message, self.type, self.param, self.code)

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


def error_payload(
    message: str, type_: str, param: str | None, code: str | None
) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def invalid_param(param: str, message: str, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def bad_request(message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code=code)
