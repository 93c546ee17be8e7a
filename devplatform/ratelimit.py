"""The per-client-IP rate limit (docs/protocol.md §2: 600 requests/min → ``429`` with ``Retry-After``).

:class:`RateLimiter` is a sliding 60 s window per key; :class:`RateLimitMiddleware` applies it to every HTTP
request except ``/admin`` (the test harness must never be throttled by the platform it drives).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from devplatform.responses import ApiError

WINDOW_S = 60.0
"""Length of the sliding window; the limit is "per minute"."""


def is_admin_path(path: str) -> bool:
    """Whether ``path`` is under ``/admin`` (exempt from rate limits and injected faults)."""
    return path == "/admin" or path.startswith("/admin/")


class RateLimiter:
    """A sliding-window request counter per key.

    Args:
        per_window: Requests allowed in any window; ``0`` disables the limiter.
        window_s: Window length in seconds.
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(
        self, per_window: int, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = per_window
        self._window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit applies."""
        return self._limit > 0

    def hit(self, key: str) -> float | None:
        """Count one request for ``key`` if the window has room.

        Rejected requests are not counted, so a client that backs off for the advised time gets through.

        Returns:
            ``None`` when the request is allowed, else the seconds until the window has room again.
        """
        if not self.enabled:
            return None
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self._window_s:
            hits.popleft()
        if len(hits) >= self._limit:
            return max(hits[0] + self._window_s - now, 0.0)
        hits.append(now)
        return None


class RateLimitMiddleware:
    """ASGI middleware answering ``429 {"error":"rate limited"}`` with ``Retry-After`` (whole seconds, ≥ 1).

    Args:
        app: The wrapped application.
        limiter: Shared limiter, keyed by client IP.
    """

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self._app = app
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Reject over-limit HTTP requests, pass everything else through."""
        if scope["type"] != "http" or is_admin_path(scope["path"]) or not self._limiter.enabled:
            await self._app(scope, receive, send)
            return
        client = scope.get("client")
        wait_s = self._limiter.hit(client[0] if client else "unknown")
        if wait_s is None:
            await self._app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait_s))
        error = ApiError(
            429,
            body={"error": "rate limited", "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        await error.to_response()(scope, receive, send)
