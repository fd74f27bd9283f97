"""Errors the protocol layer answers with: always a status and a JSON body naming the problem."""

from __future__ import annotations

from typing import Any


class CDSHooksError(Exception):
    """A refusal with an HTTP status and a specific, non-sensitive message."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        body = {"error": self.error, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


def bad_request(message: str, field: str | None = None) -> CDSHooksError:
    return CDSHooksError(400, "invalid_request", message, field)
