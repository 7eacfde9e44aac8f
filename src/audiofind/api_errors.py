"""`ApiError`: a failure with its HTTP status, so the service can say 404 without a web framework."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with its HTTP status, rendered as `{"error": ..., "detail": ...}`."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers
