"""JSON responses and the one error type of the devplatform.

Every body is encoded with orjson. FastAPI 0.165 deprecates its own ``ORJSONResponse``, so
:class:`OrjsonResponse` is a three-line subclass of Starlette's ``JSONResponse``. Routes, dependencies and
middleware fail by raising :class:`ApiError`; :func:`api_error_handler` renders it (docs/protocol.md §2:
``{"error": "..."}`` bodies).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import JSONResponse, Response


class OrjsonResponse(JSONResponse):
    """A ``JSONResponse`` rendered by orjson (UTF-8, no spaces)."""

    def render(self, content: Any) -> bytes:
        """Encode ``content`` with orjson."""
        return orjson.dumps(content)


class ApiError(Exception):
    """An HTTP error answer, raised anywhere in request handling.

    Attributes:
        status_code: HTTP status.
        body: JSON body, usually ``{"error": "..."}``; ``None`` sends an empty body (the tenant rule's 404).
        headers: Extra response headers, e.g. ``Retry-After``.
    """

    def __init__(
        self,
        status_code: int,
        error: str | None = None,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if body is None and error is not None:
            body = {"error": error}
        super().__init__(f"HTTP {status_code}: {body}")
        self.status_code = status_code
        self.body = body
        self.headers = headers or {}

    def to_response(self) -> Response:
        """Render this error as a response."""
        if self.body is None:
            return Response(status_code=self.status_code, headers=self.headers)
        return OrjsonResponse(self.body, status_code=self.status_code, headers=self.headers)


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    """FastAPI exception handler for :class:`ApiError`."""
    assert isinstance(exc, ApiError)
    return exc.to_response()
