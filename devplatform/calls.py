"""The requests of the devplatform clients, built once for both :mod:`devplatform.client` classes.

A :class:`Call` is a prepared request plus the function that reads its answer; :class:`CallBuilder` makes
one per client method. Also the values clients hand out: :class:`CreatedWorkspace`,
:class:`PlatformRequestError` and :func:`text_message`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import orjson

T = TypeVar("T")


class PlatformRequestError(Exception):
    """A devplatform call answered with a non-2xx status.

    Attributes:
        status_code: HTTP status.
        body: Decoded JSON body, or the raw text (≤ 200 chars) when it is not JSON; ``None`` when empty.
        retry_after: The ``Retry-After`` header, when any.
    """

    def __init__(self, operation: str, status_code: int, body: Any, retry_after: str | None) -> None:
        super().__init__(f"{operation}: HTTP {status_code} {str(body)[:200]}")
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class CreatedWorkspace:
    """A workspace made by ``POST /admin/workspaces``.

    Attributes:
        id: Workspace id.
        token: Its bearer token (``None`` for a bootstrap workspace). A secret: keep it out of logs.
    """

    id: str
    token: str | None = field(repr=False)


def text_message(text: str, *, context_id: str | None = None, message_id: str | None = None) -> dict[str, Any]:
    """A canonical ``message/send`` request with one text part (docs/protocol.md §5).

    Args:
        text: The text.
        context_id: Conversation id; omitted when ``None`` (the canvas then gets ``canvas-<target id>``).
        message_id: A2A messageId; a fresh UUID when ``None``.

    Returns:
        The JSON-RPC request body.
    """
    message: dict[str, Any] = {
        "role": "user",
        "messageId": message_id or str(uuid.uuid4()),
        "parts": [{"kind": "text", "text": text}],
    }
    if context_id is not None:
        message["contextId"] = context_id
    return {
        "jsonrpc": "2.0",
        "id": str(uuid.uuid4()),
        "method": "message/send",
        "params": {"message": message},
    }


def _identity(value: T) -> T:
    return value


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One prepared request and how to read its answer."""

    method: str
    path: str
    headers: dict[str, str]
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None

    @property
    def operation(self) -> str:
        """``METHOD /path``, for error messages."""
        return f"{self.method} {self.path}"

    def content(self) -> bytes | None:
        """The body, encoded with orjson (``None`` when there is none)."""
        return None if self.json is None else orjson.dumps(self.json)

    def result(self, response: httpx.Response) -> T:
        """The parsed answer.

        Raises:
            PlatformRequestError: The status is 4xx or 5xx.
        """
        if response.is_error:
            try:
                body: Any = orjson.loads(response.content) if response.content else None
            except orjson.JSONDecodeError:
                body = response.text[:200]
            raise PlatformRequestError(self.operation, response.status_code, body, response.headers.get("retry-after"))
        return self.parse(orjson.loads(response.content))


class CallBuilder:
    """Builds every request of both clients; calls with no ``token`` use the admin token."""

    def __init__(self, admin_token: str) -> None:
        self._admin = {"Authorization": f"Bearer {admin_token}"}

    def create_workspace(self, name: str, issue_token: bool, delivery_mode: str) -> Call[CreatedWorkspace]:
        """``POST /admin/workspaces``."""
        return Call(
            "POST",
            "/admin/workspaces",
            self._admin,
            lambda j: CreatedWorkspace(id=j["id"], token=j["token"]),
            json={"name": name, "issue_token": issue_token, "delivery_mode": delivery_mode},
        )

    def workspace(self, workspace_id: str) -> Call[dict[str, Any]]:
        """``GET /admin/workspaces/{id}``."""
        return Call("GET", f"/admin/workspaces/{workspace_id}", self._admin, _identity)

    def remove_workspace(self, workspace_id: str) -> Call[dict[str, Any]]:
        """``DELETE /admin/workspaces/{id}``."""
        return Call("DELETE", f"/admin/workspaces/{workspace_id}", self._admin, _identity)

    def set_token(self, workspace_id: str) -> Call[str]:
        """``POST /admin/workspaces/{id}/token``."""
        return Call("POST", f"/admin/workspaces/{workspace_id}/token", self._admin, lambda j: j["token"])

    def send_message(
        self, target_id: str, body: dict[str, Any], sender: CreatedWorkspace | None
    ) -> Call[dict[str, Any]]:
        """``POST /workspaces/{target}/a2a`` as ``sender`` (bearer + ``X-Workspace-ID``) or as the canvas."""
        if sender is None:
            headers = self._admin
        else:
            headers = {"Authorization": f"Bearer {sender.token}", "X-Workspace-ID": sender.id}
        return Call("POST", f"/workspaces/{target_id}/a2a", headers, _identity, json=body)

    def inbox(
        self,
        workspace_id: str,
        token: str | None,
        since_id: str | None,
        limit: int | None,
        activity_type: str | None,
        source: str | None,
        since_secs: int | None,
    ) -> Call[list[dict[str, Any]]]:
        """``GET /workspaces/{id}/activity`` with the workspace's bearer, or the admin token when ``None``."""
        params = {
            "since_id": since_id,
            "limit": limit,
            "type": activity_type,
            "source": source,
            "since_secs": since_secs,
        }
        headers = self._admin if token is None else {"Authorization": f"Bearer {token}"}
        return Call(
            "GET",
            f"/workspaces/{workspace_id}/activity",
            headers,
            _identity,
            params={k: v for k, v in params.items() if v is not None},
        )

    def liveness(self, workspace_id: str) -> Call[list[dict[str, Any]]]:
        """``GET /admin/workspaces/{id}/liveness``."""
        return Call("GET", f"/admin/workspaces/{workspace_id}/liveness", self._admin, _identity)

    def rows(self, workspace_id: str) -> Call[list[dict[str, Any]]]:
        """``GET /admin/workspaces/{id}/rows``."""
        return Call("GET", f"/admin/workspaces/{workspace_id}/rows", self._admin, _identity)

    def insert_raw_row(self, workspace_id: str, row: dict[str, Any]) -> Call[str]:
        """``POST /admin/workspaces/{id}/rows``."""
        return Call("POST", f"/admin/workspaces/{workspace_id}/rows", self._admin, lambda j: str(j["id"]), json=row)

    def prune(self, workspace_id: str | None, before_row_id: str | None, older_than_s: float | None) -> Call[int]:
        """``POST /admin/prune``."""
        body = {"workspace_id": workspace_id, "before_row_id": before_row_id, "older_than_s": older_than_s}
        return Call(
            "POST",
            "/admin/prune",
            self._admin,
            lambda j: int(j["deleted"]),
            json={k: v for k, v in body.items() if v is not None},
        )

    def sweep(self) -> Call[list[str]]:
        """``POST /admin/sweep``."""
        return Call("POST", "/admin/sweep", self._admin, lambda j: list(j["awaiting_agent"]))

    def add_fault(self, fault: dict[str, Any]) -> Call[int]:
        """``POST /admin/faults``."""
        return Call("POST", "/admin/faults", self._admin, lambda j: int(j["id"]), json=fault)

    def clear_faults(self) -> Call[int]:
        """``DELETE /admin/faults``."""
        return Call("DELETE", "/admin/faults", self._admin, lambda j: int(j["cleared"]))

    def faults(self) -> Call[list[dict[str, Any]]]:
        """``GET /admin/faults``."""
        return Call("GET", "/admin/faults", self._admin, _identity)


def fault_body(
    path_pattern: str,
    status: int | None,
    latency_s: float,
    count: int | None,
    method: str | None,
    retry_after: int | None,
    body: dict[str, Any] | None,
    phase: str,
) -> dict[str, Any]:
    """The JSON of ``POST /admin/faults`` (see :class:`devplatform.faults.Fault`)."""
    fault = {
        "path": path_pattern,
        "status": status,
        "latency_s": latency_s,
        "count": count,
        "method": method,
        "retry_after": retry_after,
        "body": body,
        "phase": phase,
    }
    # ``count: null`` is meaningful (unlimited), so it is always sent.
    return {k: v for k, v in fault.items() if v is not None or k == "count"}


def raw_row_body(
    request_body_json: str,
    row_id: str | None,
    method: str | None,
    source_id: str | None,
    target_id: str | None,
    status: str,
    activity_type: str,
    summary: str | None,
    created_at: datetime | None,
) -> dict[str, Any]:
    """The JSON of ``POST /admin/workspaces/{id}/rows`` (see :class:`devplatform.routes.admin.RawRowRequest`)."""
    body = {
        "request_body_json": request_body_json,
        "id": row_id,
        "method": method,
        "source_id": source_id,
        "target_id": target_id,
        "status": status,
        "activity_type": activity_type,
        "summary": summary,
        "created_at": None if created_at is None else created_at.isoformat(),
    }
    # ``method: null`` is meaningful (a row without a method), so it is always sent.
    return {k: v for k, v in body.items() if v is not None or k == "method"}


def default_headers(base_url: str) -> dict[str, str]:
    """Headers of every client request; ``Origin`` satisfies the tenant rule (docs/protocol.md §2)."""
    return {"Origin": base_url.rstrip("/"), "Accept": "application/json", "Content-Type": "application/json"}
