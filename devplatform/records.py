"""What the devplatform stores, as frozen records: workspaces, activity rows, inbox queries (docs/protocol.md §4).

:mod:`devplatform.db` reads and writes them; ``to_json`` gives the wire shape. No SQL here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

ACTIVITY_TYPES = frozenset(
    {"a2a_send", "a2a_receive", "task_update", "agent_log", "skill_promotion", "memory_write", "error"}
)
"""Activity types a workspace may self-report (docs/protocol.md §3.6)."""


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    """One workspace row.

    Attributes:
        id: Workspace UUID.
        name: Display name (used in row summaries).
        runtime: ``external`` for connector-attached workspaces.
        delivery_mode: ``poll`` or ``push``; ``None`` until set.
        url: Agent URL of a push workspace.
        status: A docs/protocol.md §6 status (``awaiting_agent``, ``online``, ``degraded``, ``removed``...).
        token_hash: SHA-256 (hex) of the live bearer token; ``None`` before bootstrap.
        agent_card: Card sent at register.
        last_heartbeat_at: Last register or heartbeat, ISO-8601.
        active_tasks: From the last heartbeat.
        current_task: From the last heartbeat.
        uptime_seconds: From the last heartbeat.
        error_rate: From the last heartbeat.
        runtime_state: From the last heartbeat (``""`` unless wedged).
        created_at: Creation time, ISO-8601.
        removed_at: Removal time, ISO-8601; ``None`` while live.
    """

    id: str
    name: str
    runtime: str
    delivery_mode: str | None
    url: str | None
    status: str
    token_hash: str | None
    agent_card: dict[str, Any] | None
    last_heartbeat_at: str | None
    active_tasks: int | None
    current_task: str | None
    uptime_seconds: int | None
    error_rate: float | None
    runtime_state: str | None
    created_at: str
    removed_at: str | None

    @property
    def removed(self) -> bool:
        """Whether the workspace was removed (it is never resurrected)."""
        return self.removed_at is not None

    def to_json(self) -> dict[str, Any]:
        """The ``GET /workspaces/{id}`` body: every field except the token hash."""
        return {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "status": self.status,
            "delivery_mode": self.delivery_mode,
            "url": self.url,
            "last_heartbeat_at": self.last_heartbeat_at,
            "active_tasks": self.active_tasks,
            "current_task": self.current_task,
            "uptime_seconds": self.uptime_seconds,
            "error_rate": self.error_rate,
            "runtime_state": self.runtime_state,
            "agent_card": self.agent_card,
            "created_at": self.created_at,
            "removed_at": self.removed_at,
        }


@dataclass(frozen=True, slots=True)
class RawJson:
    r"""A ``request_body`` kept as the JSON text an admin stored, never parsed (hostile rows).

    Attributes:
        text: The JSON text, served byte for byte (e.g. nested 1,500 deep, or holding ``"\ud800"``).
    """

    text: str

    def fragment(self) -> orjson.Fragment:
        """The text as an orjson fragment: ``orjson.dumps`` copies it into its output unchanged."""
        return orjson.Fragment(self.text)


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One activity row, the unit of the inbox (docs/protocol.md §4).

    Attributes:
        id: Row UUID, the inbox cursor (not the A2A messageId).
        seq: Global insertion counter; breaks ``created_at`` ties.
        workspace_id: Whose inbox the row is in.
        activity_type: E.g. ``a2a_receive``.
        source_id: Sending workspace; ``None`` for the canvas.
        target_id: Receiving workspace.
        method: JSON-RPC method, or ``notify`` for canvas replies.
        summary: One human line.
        status: ``ok`` or ``error``.
        message_id: ``params.message.messageId`` of a stored A2A request, the deduplication key.
        duplicates: How many later requests repeated ``message_id`` and were not stored (lets tests see that a
            sender retried, which deduplication otherwise hides).
        request_body: Normalized JSON-RPC request, when any; a :class:`RawJson` for an admin's hostile row.
        response_body: Response, when any (notify rows carry ``{"result": text}``).
        created_at: ISO-8601 with microseconds and ``Z``.
    """

    id: str
    seq: int
    workspace_id: str
    activity_type: str
    source_id: str | None
    target_id: str | None
    method: str | None
    summary: str | None
    status: str
    message_id: str | None
    duplicates: int
    request_body: Any
    response_body: Any
    created_at: str

    def to_json(self, *, admin: bool = False) -> dict[str, Any]:
        """The wire shape: ``request_body``/``response_body`` omitted when null (docs/protocol.md §4).

        Args:
            admin: Add ``message_id`` and ``duplicates`` (the admin view; they are not part of the protocol), and
                give a :class:`RawJson` body as the string ``request_body_json`` instead of verbatim JSON.
        """
        body: dict[str, Any] = {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "activity_type": self.activity_type,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "method": self.method,
            "summary": self.summary,
            "status": self.status,
            "created_at": self.created_at,
            "seq": self.seq,
        }
        if self.request_body is not None:
            request_body = self.request_body
            if type(request_body) is not RawJson:
                body["request_body"] = request_body
            elif admin:
                body["request_body_json"] = request_body.text  # readable by any client, however hostile the text
            else:
                body["request_body"] = request_body.fragment()
        if self.response_body is not None:
            body["response_body"] = self.response_body
        if admin:
            body["message_id"] = self.message_id
            body["duplicates"] = self.duplicates
        return body


@dataclass(frozen=True, slots=True)
class NewRow:
    """A row to insert; ``id``, ``seq`` and ``created_at`` are assigned by the database."""

    workspace_id: str
    activity_type: str
    source_id: str | None = None
    target_id: str | None = None
    method: str | None = None
    summary: str | None = None
    status: str = "ok"
    message_id: str | None = None
    request_body: Any = None
    response_body: Any = None


@dataclass(frozen=True, slots=True)
class InboxQuery:
    """A parsed ``GET /workspaces/{id}/activity`` (docs/protocol.md §3.3).

    Attributes:
        activity_type: Exact ``activity_type`` filter.
        source: ``canvas`` (``source_id`` null) or ``agent`` (set).
        limit: Rows at most (already clamped to 1..500).
        since: Only rows with ``created_at >=`` this moment.
        after: The cursor row; when set, rows strictly after it oldest first, else newest first.
    """

    activity_type: str | None = None
    source: Literal["canvas", "agent"] | None = None
    limit: int = 100
    since: datetime | None = None
    after: ActivityRow | None = None
