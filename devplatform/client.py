"""Clients of a running devplatform, for tests, the demo and benchmarks.

:class:`PlatformAdmin` (sync) and :class:`AsyncPlatformAdmin` (async) have the same methods.

Both build their requests with :class:`devplatform.calls.CallBuilder`, so the two differ only in how they
send. Most calls use the admin token; :meth:`PlatformAdmin.inbox` and :meth:`PlatformAdmin.send_message` can
act as a workspace instead. Every request carries ``Origin: <base url>``, so the tenant rule (docs/protocol.md §2)
is satisfied. Non-2xx answers raise :class:`PlatformRequestError`.

This is a harness, not the connector: the connector's own HTTP client lives in ``activities/``.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from devplatform.calls import (
    Call,
    CallBuilder,
    CreatedWorkspace,
    PlatformRequestError,
    default_headers,
    fault_body,
    raw_row_body,
    text_message,
)

__all__ = ["AsyncPlatformAdmin", "CreatedWorkspace", "PlatformAdmin", "PlatformRequestError", "text_message"]

T = TypeVar("T")


class PlatformAdmin:
    """Synchronous devplatform client (one pooled ``httpx.Client``; close it or use ``with``).

    Args:
        base_url: Platform base URL, e.g. ``RunningPlatform.url``.
        admin_token: The platform's admin token.
        timeout_s: Per-phase HTTP timeout.
        transport: Optional httpx transport (e.g. ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        admin_token: str = "dev-admin",
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._calls = CallBuilder(admin_token)
        self._http = httpx.Client(
            base_url=base_url,
            headers=default_headers(base_url),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )

    def _run(self, call: Call[T]) -> T:
        response = self._http.request(
            call.method, call.path, content=call.content(), params=call.params, headers=call.headers
        )
        return call.result(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def create_workspace(
        self, name: str, *, issue_token: bool = True, delivery_mode: Literal["poll", "push"] = "poll"
    ) -> CreatedWorkspace:
        """Create an external workspace (``POST /admin/workspaces``); ``issue_token=False`` for bootstrap."""
        return self._run(self._calls.create_workspace(name, issue_token, delivery_mode))

    def workspace(self, workspace_id: str) -> dict[str, Any]:
        """Status JSON of any workspace, removed ones included (``GET /admin/workspaces/{id}``)."""
        return self._run(self._calls.workspace(workspace_id))

    def remove_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Remove a workspace for good (``DELETE /admin/workspaces/{id}``).

        Returns:
            ``{"id", "status": "removed", "removed_at"}``.
        """
        return self._run(self._calls.remove_workspace(workspace_id))

    def set_token(self, workspace_id: str) -> str:
        """Rotate a workspace's token; the old one becomes invalid. Returns the new token."""
        return self._run(self._calls.set_token(workspace_id))

    def send_message(
        self, target_id: str, body: dict[str, Any], *, sender: CreatedWorkspace | None = None
    ) -> dict[str, Any]:
        """Post an A2A request to ``target_id`` (``POST /workspaces/{id}/a2a``, docs/protocol.md §3.4).

        Args:
            target_id: Receiving workspace.
            body: JSON-RPC request (normalized by the platform).
            sender: Sending workspace (its bearer and ``X-Workspace-ID``); ``None`` sends as the canvas.

        Returns:
            The platform's answer, ``{"status":"queued","delivery_mode":"poll","method": ...}``.
        """
        return self._run(self._calls.send_message(target_id, body, sender))

    def send_text(
        self,
        target_id: str,
        text: str,
        *,
        sender: CreatedWorkspace | None = None,
        context_id: str | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`send_message` of :func:`text_message` ``(text, context_id=..., message_id=...)``."""
        return self.send_message(
            target_id, text_message(text, context_id=context_id, message_id=message_id), sender=sender
        )

    def inbox(
        self,
        workspace_id: str,
        token: str | None = None,
        since_id: str | None = None,
        limit: int | None = None,
        type: str | None = None,
        *,
        source: str | None = None,
        since_secs: int | None = None,
    ) -> list[dict[str, Any]]:
        """Read an inbox exactly as a connector does (``GET /workspaces/{id}/activity``, docs/protocol.md §3.3).

        Args:
            workspace_id: Whose inbox.
            token: The workspace's bearer; ``None`` reads with the admin token.
            since_id: Cursor; rows after it oldest first. Without it, newest first.
            limit: Page size.
            type: ``activity_type`` filter, e.g. ``a2a_receive``.
            source: ``canvas`` or ``agent``.
            since_secs: Only rows from the last N seconds.
        """
        return self._run(self._calls.inbox(workspace_id, token, since_id, limit, type, source, since_secs))

    def liveness(self, workspace_id: str) -> list[dict[str, Any]]:
        """A workspace's liveness log, oldest first (``GET /admin/workspaces/{id}/liveness``).

        Returns:
            ``[{"event": "register" | "heartbeat" | "stale", "status", "at"}]``: every accepted register and
            heartbeat, and every stale sweep that sent it back to ``awaiting_agent``.
        """
        return self._run(self._calls.liveness(workspace_id))

    def rows(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every row of an inbox, oldest first, with ``message_id`` and ``duplicates``.

        A row made by :meth:`insert_raw_row` has ``request_body_json`` (the stored text) instead of ``request_body``.
        """
        return self._run(self._calls.rows(workspace_id))

    def insert_raw_row(
        self,
        workspace_id: str,
        *,
        request_body_json: str,
        id: str | None = None,
        method: str | None = "message/send",
        source_id: str | None = None,
        target_id: str | None = None,
        status: str = "ok",
        activity_type: str = "a2a_receive",
        summary: str | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Put a hostile row in an inbox (``POST /admin/workspaces/{id}/rows``); returns its id.

        For tests of rows a real platform could return but ``send_message`` cannot make: a body nested
        1,500 deep, a lone surrogate escape, a row id that is not a UUID.

        Args:
            workspace_id: Whose inbox.
            request_body_json: ``request_body`` as JSON text, served byte for byte by the inbox (unchecked).
            id: Row id, any string; a fresh UUID when ``None``.
            method: JSON-RPC method.
            source_id: Sender workspace; ``None`` is the canvas.
            target_id: Receiver; ``None`` is ``workspace_id``.
            status: Row status.
            activity_type: Row type.
            summary: One human line.
            created_at: Row time (timezone-aware); now when ``None``.

        Raises:
            PlatformRequestError: ``404`` unknown workspace, ``409`` ``id`` already taken.
        """
        body = raw_row_body(
            request_body_json, id, method, source_id, target_id, status, activity_type, summary, created_at
        )
        return self._run(self._calls.insert_raw_row(workspace_id, body))

    def prune(
        self,
        workspace_id: str | None = None,
        before_row_id: str | None = None,
        older_than_s: float | None = None,
    ) -> int:
        """Delete rows (all in scope, or before a row, or older than N s); returns how many."""
        return self._run(self._calls.prune(workspace_id, before_row_id, older_than_s))

    def sweep(self) -> list[str]:
        """Run the stale sweep now; returns the ids moved to ``awaiting_agent``."""
        return self._run(self._calls.sweep())

    def add_fault(
        self,
        path_pattern: str,
        status: int | None = None,
        latency_s: float = 0.0,
        count: int | None = 1,
        method: str | None = None,
        retry_after: int | None = None,
        *,
        body: dict[str, Any] | None = None,
        phase: Literal["before", "after"] = "before",
    ) -> int:
        """Inject a fault for the next ``count`` matching requests (``None``: until cleared); returns its id.

        See :class:`devplatform.faults.Fault` for the matching rules and phases.
        """
        fault = fault_body(path_pattern, status, latency_s, count, method, retry_after, body, phase)
        return self._run(self._calls.add_fault(fault))

    def clear_faults(self) -> int:
        """Drop every pending fault; returns how many."""
        return self._run(self._calls.clear_faults())

    def faults(self) -> list[dict[str, Any]]:
        """Pending faults with their ``hits``."""
        return self._run(self._calls.faults())


class AsyncPlatformAdmin:
    """Asynchronous twin of :class:`PlatformAdmin`.

    One pooled ``httpx.AsyncClient``; ``aclose`` it or use ``async with``.

    Args:
        base_url: Platform base URL; with an ``ASGITransport`` any ``http://`` URL works.
        admin_token: The platform's admin token.
        timeout_s: Per-phase HTTP timeout.
        transport: Optional transport, e.g. ``httpx.ASGITransport(app)`` to call an app in-process.
    """

    def __init__(
        self,
        base_url: str,
        admin_token: str = "dev-admin",
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._calls = CallBuilder(admin_token)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=default_headers(base_url),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )

    async def _run(self, call: Call[T]) -> T:
        response = await self._http.request(
            call.method, call.path, content=call.content(), params=call.params, headers=call.headers
        )
        return call.result(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def create_workspace(
        self, name: str, *, issue_token: bool = True, delivery_mode: Literal["poll", "push"] = "poll"
    ) -> CreatedWorkspace:
        """See :meth:`PlatformAdmin.create_workspace`."""
        return await self._run(self._calls.create_workspace(name, issue_token, delivery_mode))

    async def workspace(self, workspace_id: str) -> dict[str, Any]:
        """See :meth:`PlatformAdmin.workspace`."""
        return await self._run(self._calls.workspace(workspace_id))

    async def remove_workspace(self, workspace_id: str) -> dict[str, Any]:
        """See :meth:`PlatformAdmin.remove_workspace`."""
        return await self._run(self._calls.remove_workspace(workspace_id))

    async def set_token(self, workspace_id: str) -> str:
        """See :meth:`PlatformAdmin.set_token`."""
        return await self._run(self._calls.set_token(workspace_id))

    async def send_message(
        self, target_id: str, body: dict[str, Any], *, sender: CreatedWorkspace | None = None
    ) -> dict[str, Any]:
        """See :meth:`PlatformAdmin.send_message`."""
        return await self._run(self._calls.send_message(target_id, body, sender))

    async def send_text(
        self,
        target_id: str,
        text: str,
        *,
        sender: CreatedWorkspace | None = None,
        context_id: str | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`PlatformAdmin.send_text`."""
        return await self.send_message(
            target_id, text_message(text, context_id=context_id, message_id=message_id), sender=sender
        )

    async def inbox(
        self,
        workspace_id: str,
        token: str | None = None,
        since_id: str | None = None,
        limit: int | None = None,
        type: str | None = None,
        *,
        source: str | None = None,
        since_secs: int | None = None,
    ) -> list[dict[str, Any]]:
        """See :meth:`PlatformAdmin.inbox`."""
        return await self._run(self._calls.inbox(workspace_id, token, since_id, limit, type, source, since_secs))

    async def liveness(self, workspace_id: str) -> list[dict[str, Any]]:
        """See :meth:`PlatformAdmin.liveness`."""
        return await self._run(self._calls.liveness(workspace_id))

    async def rows(self, workspace_id: str) -> list[dict[str, Any]]:
        """See :meth:`PlatformAdmin.rows`."""
        return await self._run(self._calls.rows(workspace_id))

    async def insert_raw_row(
        self,
        workspace_id: str,
        *,
        request_body_json: str,
        id: str | None = None,
        method: str | None = "message/send",
        source_id: str | None = None,
        target_id: str | None = None,
        status: str = "ok",
        activity_type: str = "a2a_receive",
        summary: str | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """See :meth:`PlatformAdmin.insert_raw_row`."""
        body = raw_row_body(
            request_body_json, id, method, source_id, target_id, status, activity_type, summary, created_at
        )
        return await self._run(self._calls.insert_raw_row(workspace_id, body))

    async def prune(
        self,
        workspace_id: str | None = None,
        before_row_id: str | None = None,
        older_than_s: float | None = None,
    ) -> int:
        """See :meth:`PlatformAdmin.prune`."""
        return await self._run(self._calls.prune(workspace_id, before_row_id, older_than_s))

    async def sweep(self) -> list[str]:
        """See :meth:`PlatformAdmin.sweep`."""
        return await self._run(self._calls.sweep())

    async def add_fault(
        self,
        path_pattern: str,
        status: int | None = None,
        latency_s: float = 0.0,
        count: int | None = 1,
        method: str | None = None,
        retry_after: int | None = None,
        *,
        body: dict[str, Any] | None = None,
        phase: Literal["before", "after"] = "before",
    ) -> int:
        """See :meth:`PlatformAdmin.add_fault`."""
        fault = fault_body(path_pattern, status, latency_s, count, method, retry_after, body, phase)
        return await self._run(self._calls.add_fault(fault))

    async def clear_faults(self) -> int:
        """See :meth:`PlatformAdmin.clear_faults`."""
        return await self._run(self._calls.clear_faults())

    async def faults(self) -> list[dict[str, Any]]:
        """See :meth:`PlatformAdmin.faults`."""
        return await self._run(self._calls.faults())
