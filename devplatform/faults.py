"""Fault injection: make the next matching requests fail or stall, for connector tests (docs/architecture.md §5).

A :class:`Fault` is added with ``POST /admin/faults`` and consumed by :class:`FaultMiddleware`, which wraps
every route except ``/admin``. Each request takes at most one fault, the oldest that matches; a fault is
dropped once its ``count`` is used up.

``phase`` chooses when a fault strikes. ``before`` (the default) fails the request without running it, like a
proxy error. ``after`` runs the request (its rows are stored) and then replaces the answer, like a response
lost on the way back: the way to prove that a retried reply is deduplicated by ``messageId`` (docs/protocol.md
§3.4).
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devplatform.ratelimit import is_admin_path
from devplatform.responses import ApiError


class Fault(BaseModel):
    """One injected fault, as posted to ``POST /admin/faults``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    path: str
    """Request path pattern. It matches when the whole path matches it as a glob (``*`` also crosses
    ``/``), or when it is found in the path as a regular expression (``re.search``)."""
    method: str | None = None
    """HTTP method to match (any when unset)."""
    status: int | None = Field(default=None, ge=100, le=599)
    """Answer with this status instead of the real one; unset means latency only."""
    latency_s: float = Field(default=0.0, ge=0)
    """Seconds to stall before answering (in ``after`` phase: after the request ran)."""
    count: int | None = Field(default=1, ge=1)
    """How many matching requests take the fault; ``null`` means every one until cleared."""
    retry_after: int | None = Field(default=None, ge=0)
    """``Retry-After`` header (seconds) sent with ``status``."""
    body: dict[str, Any] | None = None
    """JSON body sent with ``status``; default ``{"error": "injected fault"}``."""
    phase: Literal["before", "after"] = "before"
    """``before``: fail without running the request. ``after``: run it, then replace its answer."""

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and path takes this fault."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if fnmatch.fnmatchcase(path, self.path):
            return True
        try:
            return re.search(self.path, path) is not None
        except re.error:
            return False

    def error(self) -> ApiError:
        """The injected answer (requires ``status``)."""
        assert self.status is not None
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return ApiError(self.status, body=self.body or {"error": "injected fault"}, headers=headers)


class FaultInjector:
    """The list of pending faults of one app (in memory, process-local)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: list[tuple[int, Fault, list[int]]] = []

    def add(self, fault: Fault) -> int:
        """Queue a fault; returns its id."""
        fault_id = next(self._ids)
        self._pending.append((fault_id, fault, [0]))
        return fault_id

    def clear(self) -> int:
        """Drop every pending fault; returns how many there were."""
        dropped = len(self._pending)
        self._pending.clear()
        return dropped

    def describe(self) -> list[dict[str, Any]]:
        """Pending faults as JSON: the fault fields plus ``id`` and ``hits`` so far."""
        return [{"id": i, "hits": hits[0], **fault.model_dump()} for i, fault, hits in self._pending]

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the oldest fault matching the request, or return ``None``.

        Synchronous on purpose: on the event loop, matching and counting cannot interleave with another
        request.
        """
        for index, (_, fault, hits) in enumerate(self._pending):
            if fault.matches(method, path):
                hits[0] += 1
                if fault.count is not None and hits[0] >= fault.count:
                    del self._pending[index]
                return fault
        return None


class FaultMiddleware:
    """ASGI middleware applying :class:`FaultInjector` faults to non-admin HTTP requests.

    Args:
        app: The wrapped application.
        faults: Shared injector (also reached by the admin routes through ``app.state.faults``).
    """

    def __init__(self, app: ASGIApp, faults: FaultInjector) -> None:
        self._app = app
        self._faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stall, fail or pass through one request."""
        if scope["type"] != "http" or is_admin_path(scope["path"]):
            await self._app(scope, receive, send)
            return
        fault = self._faults.take(scope["method"], scope["path"])
        if fault is None:
            await self._app(scope, receive, send)
        elif fault.phase == "before":
            await asyncio.sleep(fault.latency_s)
            if fault.status is None:
                await self._app(scope, receive, send)
            else:
                await fault.error().to_response()(scope, receive, send)
        else:
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await self._app(scope, receive, hold)
            await asyncio.sleep(fault.latency_s)
            if fault.status is None:
                for message in held:
                    await send(message)
            else:
                await fault.error().to_response()(scope, receive, send)
