"""``/workspaces/{id}``: status, the inbox, A2A delivery and canvas notify (docs/protocol.md §3.3–3.6).

Every route here is behind the tenant rule (:func:`devplatform.deps.require_tenant_headers`). A2A requests to
a poll workspace are never forwarded: they become ``a2a_receive`` rows in the target's inbox, deduplicated on
``params.message.messageId``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from activities.a2a import MalformedMessageError, normalize_request
from devplatform.db import Database
from devplatform.deps import (
    DbDep,
    OwnWorkspaceDep,
    ReadableWorkspaceDep,
    SenderDep,
    SettingsDep,
    decode_json,
    parse_body,
    read_body,
    require_tenant_headers,
    workspace_gone,
)
from devplatform.records import ACTIVITY_TYPES, InboxQuery, NewRow
from devplatform.responses import ApiError, OrjsonResponse

router = APIRouter(prefix="/workspaces", tags=["workspaces"], dependencies=[Depends(require_tenant_headers)])

DEFAULT_LIMIT = 100
"""Inbox page size when ``limit`` is absent or invalid."""
MAX_LIMIT = 500
"""Largest inbox page."""
MAX_SINCE_SECS = 30 * 24 * 3600
"""``since_secs`` cap: 30 days, the retention window."""


class ActivityReport(BaseModel):
    """Body of ``POST /workspaces/{id}/activity`` (docs/protocol.md §3.6)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    activity_type: str
    """One of :data:`devplatform.records.ACTIVITY_TYPES`."""
    source_id: str | None = None
    """Sender, when the row is about a message."""
    target_id: str | None = None
    """Receiver, when the row is about a message."""
    method: str | None = None
    """JSON-RPC method, when any."""
    summary: str | None = None
    """One human line."""
    status: str = "ok"
    """``ok`` or ``error``."""
    request_body: Any = None
    """Free JSON."""
    response_body: Any = None
    """Free JSON."""


class NotifyRequest(BaseModel):
    """Body of ``POST /workspaces/{id}/notify`` (docs/protocol.md §3.5)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    message: str = Field(min_length=1)
    """Text shown to the human on the canvas."""
    attachments: list[dict[str, Any]] | None = None
    """``[{"uri", "name", "mimeType"?, "size"?}]``."""


def parse_limit(raw: str | None) -> int:
    """``limit`` as the platform reads it: default 100, max 500, non-integer or ≤ 0 silently 100."""
    try:
        limit = int(raw) if raw is not None else DEFAULT_LIMIT
    except ValueError:
        return DEFAULT_LIMIT
    return DEFAULT_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)


def inbox_query(
    db: Database,
    workspace_id: str,
    *,
    activity_type: str | None,
    source: str | None,
    limit: str | None,
    since_secs: str | None,
    since_id: str | None,
) -> InboxQuery:
    """Validate the inbox parameters, in the platform's order (docs/protocol.md §3.3).

    Empty values count as absent.

    Raises:
        ApiError: ``400`` on a bad ``source`` or ``since_secs``; ``500 {"error":"cursor lookup failed"}`` on a
            ``since_id`` that is not a UUID; ``410`` when the cursor row is not in this workspace's inbox.
    """
    if source and source not in ("canvas", "agent"):
        raise ApiError(400, "source must be 'canvas' or 'agent'")
    since = None
    if since_secs:
        try:
            seconds = int(since_secs)
        except ValueError:
            seconds = 0
        if seconds <= 0:
            raise ApiError(400, "since_secs must be a positive integer")
        since = db.now() - timedelta(seconds=min(seconds, MAX_SINCE_SECS))
    after = None
    if since_id:
        try:
            cursor = str(uuid.UUID(since_id))
        except ValueError:
            # The real platform hands the string to Postgres as a uuid and fails the query.
            raise ApiError(500, "cursor lookup failed") from None
        after = db.get_row(workspace_id, cursor)
        if after is None:
            raise ApiError(
                410,
                f"since_id cursor not found ({since_id} is pruned, unknown or not in this workspace); "
                "omit since_id to reset",
            )
    return InboxQuery(
        activity_type=activity_type or None,
        source="canvas" if source == "canvas" else "agent" if source == "agent" else None,
        limit=parse_limit(limit),
        since=since,
        after=after,
    )


@router.get("/{workspace_id}")
async def get_workspace(workspace: ReadableWorkspaceDep) -> OrjsonResponse:
    """The workspace's status (own bearer or admin token).

    Returns:
        ``200 {"id","name","status","delivery_mode","last_heartbeat_at",...}``.

    Raises:
        ApiError: ``410 {"id","removed_at","hint"}`` once removed (docs/protocol.md §3.6); ``401``/``403``.
    """
    if workspace.removed:
        raise ApiError(
            410,
            body={
                "id": workspace.id,
                "removed_at": workspace.removed_at,
                "hint": "this workspace was removed; create a new workspace and connect to it",
            },
        )
    return OrjsonResponse(workspace.to_json())


@router.get("/{workspace_id}/activity")
async def list_activity(
    workspace: ReadableWorkspaceDep,
    db: DbDep,
    activity_type: Annotated[str | None, Query(alias="type")] = None,
    source: str | None = None,
    limit: str | None = None,
    since_secs: str | None = None,
    since_id: str | None = None,
) -> OrjsonResponse:
    """The inbox (docs/protocol.md §3.3): with ``since_id`` rows after the cursor oldest first, else newest first.

    Readable by the workspace's own bearer or the admin token.

    Returns:
        ``200`` with a JSON array of rows (docs/protocol.md §4), ``[]`` when empty.

    Raises:
        ApiError: See :func:`inbox_query`; ``401``/``403``; ``404`` once removed.
    """
    if workspace.removed:
        raise workspace_gone(workspace)
    query = inbox_query(
        db,
        workspace.id,
        activity_type=activity_type,
        source=source,
        limit=limit,
        since_secs=since_secs,
        since_id=since_id,
    )
    return OrjsonResponse([row.to_json() for row in db.list_rows(workspace.id, query)])


@router.post("/{workspace_id}/activity")
async def report_activity(workspace: OwnWorkspaceDep, request: Request, db: DbDep) -> OrjsonResponse:
    """Self-report an activity row (docs/protocol.md §3.6).

    Returns:
        ``200 {"status":"ok","id": <row id>}``.

    Raises:
        ApiError: ``400 invalid request body``; ``400`` on an ``activity_type`` outside the allowed list.
    """
    body = await parse_body(request, ActivityReport, "invalid request body")
    if body.activity_type not in ACTIVITY_TYPES:
        raise ApiError(400, f"invalid activity_type {body.activity_type!r}")
    row, _ = db.insert_row(
        NewRow(
            workspace_id=workspace.id,
            activity_type=body.activity_type,
            source_id=body.source_id,
            target_id=body.target_id,
            method=body.method,
            summary=body.summary,
            status=body.status,
            request_body=body.request_body,
            response_body=body.response_body,
        )
    )
    return OrjsonResponse({"status": "ok", "id": row.id})


@router.post("/{workspace_id}/a2a")
async def send_a2a(
    workspace_id: str, request: Request, sender: SenderDep, db: DbDep, settings: SettingsDep
) -> OrjsonResponse:
    """Deliver an A2A request to a poll workspace by queueing it in its inbox (docs/protocol.md §3.4, §5).

    Order: sender auth → target → body size → JSON → normalize → store. A canvas message (admin token) without
    ``contextId`` gets ``canvas-<target id>``. A ``messageId`` already in the target's inbox stores nothing
    new and gets the same answer.

    Returns:
        ``200 {"status":"queued","delivery_mode":"poll","method": <the body's method>}``.

    Raises:
        ApiError: ``401``/``403`` (sender auth); ``404`` unknown target; ``410`` removed target; ``413`` body
            over ``max_body_bytes``; ``400 invalid JSON`` or the normalizer's reason; ``501`` for a push
            target (the devplatform does not forward).
    """
    target = db.get_workspace(workspace_id)
    if target is None:
        raise ApiError(404, "workspace not found")
    if target.removed:
        raise ApiError(410, body={"error": "workspace removed", "id": target.id, "removed_at": target.removed_at})
    decoded = decode_json(await read_body(request, settings.max_body_bytes), "invalid JSON")
    try:
        envelope = normalize_request(decoded)
    except MalformedMessageError as err:
        raise ApiError(400, err.reason) from None
    params = envelope.get("params")
    message = params.get("message") if isinstance(params, dict) else None
    if isinstance(message, dict) and sender.workspace is None and not message.get("contextId"):
        message["contextId"] = f"canvas-{target.id}"
    delivery_mode = target.delivery_mode or ("poll" if target.runtime == "external" else "push")
    if delivery_mode != "poll":
        raise ApiError(501, "push delivery is not implemented by devplatform")
    method = envelope.get("method")
    message_id = message.get("messageId") if isinstance(message, dict) else None
    db.insert_row(
        NewRow(
            workspace_id=target.id,
            activity_type="a2a_receive",
            source_id=sender.source_id,
            target_id=target.id,
            method=method if isinstance(method, str) else None,
            summary=f"{method} → {target.name} (queued for poll)",
            message_id=None if message_id is None else str(message_id),
            request_body=envelope,
        )
    )
    return OrjsonResponse({"status": "queued", "delivery_mode": "poll", "method": method})


@router.post("/{workspace_id}/notify")
async def notify(workspace: OwnWorkspaceDep, request: Request, db: DbDep) -> OrjsonResponse:
    """Reply to the human on the canvas (docs/protocol.md §3.5).

    Side effect: an ``a2a_receive`` row with ``method: "notify"``, ``source_id: null`` and
    ``response_body: {"result": text}`` in the workspace's own inbox, which connectors must skip.

    Returns:
        ``200 {"status":"sent"}``.

    Raises:
        ApiError: ``400 {"error":"message is required"}``; ``401``/``403``; ``404`` once removed.
    """
    body = await parse_body(request, NotifyRequest, "message is required")
    request_body: dict[str, Any] = {"message": body.message}
    if body.attachments is not None:
        request_body["attachments"] = body.attachments
    db.insert_row(
        NewRow(
            workspace_id=workspace.id,
            activity_type="a2a_receive",
            source_id=None,
            target_id=workspace.id,
            method="notify",
            summary=f"notify → canvas ({workspace.name})",
            request_body=request_body,
            response_body={"result": body.message},
        )
    )
    return OrjsonResponse({"status": "sent"})
