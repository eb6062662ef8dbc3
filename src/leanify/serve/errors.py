"""A refusal with its HTTP status, in OpenAI's error shape: `{"error": {message, type, code}}`."""

from __future__ import annotations

from typing import Any


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, reason: str = "invalid"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers, self.reason = headers or {}, reason


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}
