"""`ApiError`: a failure with its HTTP status, so the service can say 404 without knowing the web framework;
`error_response`: the one JSON error shape every endpoint, middleware and handler answers with."""

from __future__ import annotations

from typing import Any

from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error with its HTTP status, rendered as `{"error": ..., "detail": ...}`."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape every endpoint, middleware and handler uses."""
    return JSONResponse(
        {"error": error, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers
    )
