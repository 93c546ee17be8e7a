"""``/admin``: what tests, the demo and benchmarks need beyond the protocol (docs/architecture.md §5).

Workspaces (create → id + token, status, token rotation, removal, liveness log), inbox inspection, hostile rows (stored
and served verbatim, for connector tests of rows a real platform could return but the a2a route refuses),
pruning (the source of cursor ``410``s), an on-demand stale sweep and fault injection. Every route needs the
admin token; none is rate limited or faulted. Errors use FastAPI's usual ``422`` for invalid bodies; this router
is not part of the wire contract.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from devplatform.db import Database, hash_token
from devplatform.deps import DbDep, FaultsDep, SettingsDep, require_admin
from devplatform.faults import Fault
from devplatform.records import NewRow, WorkspaceRecord
from devplatform.responses import ApiError, OrjsonResponse
from devplatform.sweeper import sweep_stale

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class CreateWorkspaceRequest(BaseModel):
    """Body of ``POST /admin/workspaces``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Display name."""
    issue_token: bool = True
    """``false`` creates a token-less workspace whose first register bootstraps one (``auth_token``)."""
    delivery_mode: Literal["poll", "push"] = "poll"
    """Stored delivery mode."""


class RawRowRequest(BaseModel):
    """Body of ``POST /admin/workspaces/{id}/rows``: one inbox row, its ``request_body`` as raw JSON text."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request_body_json: str = Field(min_length=1)
    """``request_body`` as JSON text, stored unchecked and served verbatim by the inbox."""
    id: str | None = Field(default=None, min_length=1)
    """Row id, any string (``"row-7"``); default a fresh UUID."""
    activity_type: str = "a2a_receive"
    """Row type."""
    method: str | None = "message/send"
    """JSON-RPC method."""
    source_id: str | None = None
    """Sender; ``null`` is the canvas."""
    target_id: str | None = None
    """Receiver; default the workspace."""
    summary: str | None = None
    """One human line."""
    status: str = "ok"
    """Row status."""
    created_at: AwareDatetime | None = None
    """Row time; default now (never earlier than the newest row)."""


class PruneRequest(BaseModel):
    """Body of ``POST /admin/prune``; with neither bound, every row in scope is deleted."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    workspace_id: str | None = None
    """Only this inbox (default: the ``before_row_id`` row's inbox, else all)."""
    before_row_id: str | None = None
    """Delete rows strictly older than this row (by ``created_at``, ``seq``)."""
    older_than_s: float | None = Field(default=None, ge=0)
    """Delete rows created more than this many seconds ago (``0``: everything so far)."""


def _workspace(db: Database, workspace_id: str) -> WorkspaceRecord:
    record = db.get_workspace(workspace_id)
    if record is None:
        raise ApiError(404, "workspace not found")
    return record


@router.post("/workspaces", status_code=201)
async def create_workspace(body: CreateWorkspaceRequest, db: DbDep) -> OrjsonResponse:
    """Create an external workspace in ``awaiting_agent`` (docs/protocol.md §1.1).

    Returns:
        ``201 {"id", "token"}``; ``token`` is ``null`` when ``issue_token`` is false.
    """
    token = secrets.token_urlsafe(32) if body.issue_token else None
    record = db.create_workspace(
        body.name, None if token is None else hash_token(token), delivery_mode=body.delivery_mode
    )
    return OrjsonResponse({"id": record.id, "token": token}, status_code=201)


@router.get("/workspaces/{workspace_id}")
async def get_workspace(workspace_id: str, db: DbDep) -> OrjsonResponse:
    """Any workspace's status, removed ones included (``status: "removed"``, ``removed_at``).

    Raises:
        ApiError: ``404`` for an unknown id.
    """
    return OrjsonResponse(_workspace(db, workspace_id).to_json())


@router.post("/workspaces/{workspace_id}/token")
async def rotate_token(workspace_id: str, db: DbDep) -> OrjsonResponse:
    """Issue a new bearer token; the old one answers ``401 invalid workspace auth token`` from now on.

    Returns:
        ``{"token": <new token>}``.

    Raises:
        ApiError: ``404`` for an unknown id.
    """
    _workspace(db, workspace_id)
    token = secrets.token_urlsafe(32)
    db.set_token_hash(workspace_id, hash_token(token))
    return OrjsonResponse({"token": token})


@router.delete("/workspaces/{workspace_id}")
async def remove_workspace(workspace_id: str, db: DbDep) -> OrjsonResponse:
    """Remove a workspace for good (it is never resurrected).

    Afterwards ``GET /workspaces/{id}`` answers ``410``, its own calls ``404`` and sends to it ``410``.

    Returns:
        ``{"id", "status": "removed", "removed_at"}``.

    Raises:
        ApiError: ``404`` for an unknown id.
    """
    _workspace(db, workspace_id)
    record = db.remove_workspace(workspace_id)
    assert record is not None
    return OrjsonResponse({"id": record.id, "status": record.status, "removed_at": record.removed_at})


@router.get("/workspaces/{workspace_id}/liveness")
async def liveness(workspace_id: str, db: DbDep) -> OrjsonResponse:
    """A workspace's liveness log, oldest first: accepted registers and heartbeats, and stale sweeps.

    What failover tests read: the gaps between accepted heartbeats (a register refreshes ``last_heartbeat_at``
    too) and whether the workspace ever went ``awaiting_agent`` (docs/protocol.md §1.6, §3.1–3.2).

    Returns:
        ``[{"event": "register" | "heartbeat" | "stale", "status": <status after it>, "at": <ISO-8601>}]``.

    Raises:
        ApiError: ``404`` for an unknown id.
    """
    _workspace(db, workspace_id)
    return OrjsonResponse(db.liveness(workspace_id))


@router.get("/workspaces/{workspace_id}/rows")
async def list_rows(workspace_id: str, db: DbDep) -> OrjsonResponse:
    """Every row of a workspace's inbox, oldest first, with ``message_id`` and ``duplicates`` added.

    A hostile row's body comes as the string ``request_body_json`` (its stored text), so this view always parses.

    Raises:
        ApiError: ``404`` for an unknown id.
    """
    _workspace(db, workspace_id)
    return OrjsonResponse([row.to_json(admin=True) for row in db.all_rows(workspace_id)])


@router.post("/workspaces/{workspace_id}/rows", status_code=201)
async def insert_raw_row(workspace_id: str, body: RawRowRequest, db: DbDep) -> OrjsonResponse:
    """Put a hostile row in a workspace's inbox, as a real platform could (see :meth:`Database.insert_raw_row`).

    The inbox (``GET /workspaces/{id}/activity``) serves ``request_body_json`` byte for byte; cursors around
    the row work as for any row, and ``since_id=<a non-UUID id>`` answers ``500 cursor lookup failed``
    (docs/protocol.md §3.3).

    Returns:
        ``201 {"id": <row id>}``.

    Raises:
        ApiError: ``404`` for an unknown workspace; ``409`` when ``id`` is already taken.
    """
    _workspace(db, workspace_id)
    row = db.insert_raw_row(
        NewRow(
            workspace_id=workspace_id,
            activity_type=body.activity_type,
            source_id=body.source_id,
            target_id=body.target_id or workspace_id,
            method=body.method,
            summary=body.summary,
            status=body.status,
        ),
        body.request_body_json,
        row_id=body.id,
        created_at=body.created_at,
    )
    if row is None:
        raise ApiError(409, f"row id {body.id!r} is already taken")
    return OrjsonResponse({"id": row.id}, status_code=201)


@router.post("/prune")
async def prune(body: PruneRequest, db: DbDep) -> OrjsonResponse:
    """Delete rows as retention would, so that cursors to them answer ``410`` (docs/protocol.md §3.3, §6).

    Returns:
        ``{"deleted": n}``.

    Raises:
        ApiError: ``400`` when both bounds are given; ``404`` for an unknown ``before_row_id``.
    """
    if body.before_row_id is not None and body.older_than_s is not None:
        raise ApiError(400, "give before_row_id or older_than_s, not both")
    before = None
    workspace_id = body.workspace_id
    if body.before_row_id is not None:
        before = db.find_row(body.before_row_id)
        if before is None or (workspace_id is not None and before.workspace_id != workspace_id):
            raise ApiError(404, "before_row_id not found")
        workspace_id = before.workspace_id
    older_than = None if body.older_than_s is None else db.now() - timedelta(seconds=body.older_than_s)
    deleted = db.prune(workspace_id=workspace_id, before=before, older_than=older_than)
    return OrjsonResponse({"deleted": deleted})


@router.post("/sweep")
async def sweep(db: DbDep, settings: SettingsDep) -> OrjsonResponse:
    """Run the stale sweep now with the configured window, instead of waiting for the next period.

    Returns:
        ``{"awaiting_agent": [ids that went stale]}``.
    """
    return OrjsonResponse({"awaiting_agent": sweep_stale(db, settings.stale_after_s)})


@router.get("/faults")
async def list_faults(faults: FaultsDep) -> OrjsonResponse:
    """Pending faults, oldest first, each with ``id`` and ``hits``."""
    return OrjsonResponse(faults.describe())


@router.post("/faults", status_code=201)
async def add_fault(fault: Fault, faults: FaultsDep) -> OrjsonResponse:
    """Queue a fault for the next ``count`` matching non-admin requests (see :mod:`devplatform.faults`).

    Returns:
        ``201 {"id": <fault id>}``.
    """
    return OrjsonResponse({"id": faults.add(fault)}, status_code=201)


@router.delete("/faults")
async def clear_faults(faults: FaultsDep) -> OrjsonResponse:
    """Drop every pending fault.

    Returns:
        ``{"cleared": n}``.
    """
    return OrjsonResponse({"cleared": faults.clear()})
