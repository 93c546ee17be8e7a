"""``/registry``: register and heartbeat, the connector's liveness duty (docs/protocol.md §3.1–3.2, §1.6).

The status rules of a heartbeat are the pure function :func:`heartbeat_status`; the stale sweep that undoes
them lives in :mod:`devplatform.sweeper`.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from devplatform.db import hash_token
from devplatform.deps import BearerDep, DbDep, authenticate_workspace, parse_body, workspace_gone
from devplatform.responses import ApiError, OrjsonResponse

router = APIRouter(prefix="/registry", tags=["registry"])

DEGRADED_AT_ERROR_RATE = 0.5
"""``error_rate`` at or above which an online workspace is ``degraded`` (docs/protocol.md §3.2)."""
RECOVERED_BELOW_ERROR_RATE = 0.1
"""``error_rate`` below which a degraded workspace with empty ``runtime_state`` is ``online`` again."""
REVIVED_BY_HEARTBEAT = frozenset({"awaiting_agent", "offline", "provisioning"})
"""Statuses a heartbeat turns into ``online``."""


class RegisterRequest(BaseModel):
    """Body of ``POST /registry/register`` (tolerant: unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    id: str
    """Workspace id."""
    agent_card: dict[str, Any]
    """The agent's card; required."""
    delivery_mode: str | None = None
    """``poll`` or ``push``; unset keeps the stored mode."""
    url: str | None = None
    """Agent URL; required for ``push`` only."""


class HeartbeatRequest(BaseModel):
    """Body of ``POST /registry/heartbeat``; only ``workspace_id`` is required."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    workspace_id: str
    """Workspace id."""
    active_tasks: int | None = None
    """Tasks in flight."""
    current_task: str | None = None
    """One line about the current task."""
    uptime_seconds: int | None = None
    """Connector uptime."""
    error_rate: float | None = None
    """Recent error fraction, 0..1; a missing value counts as 0."""
    runtime_state: str | None = None
    """Empty unless wedged (``"wedged"``); any other value blocks recovery from ``degraded``."""


def heartbeat_status(current: str, *, error_rate: float | None, runtime_state: str | None) -> str:
    """The status after a heartbeat (docs/protocol.md §3.2).

    Args:
        current: Status before the heartbeat.
        error_rate: Reported error rate (``None`` counts as 0).
        runtime_state: Reported runtime state (``None`` counts as empty).

    Returns:
        ``awaiting_agent``/``offline``/``provisioning`` become ``online``; ``"wedged"`` or
        ``error_rate >= 0.5`` turn ``online`` into ``degraded``; ``error_rate < 0.1`` with empty
        ``runtime_state`` turns ``degraded`` back into ``online``; any other status is kept.
    """
    rate = error_rate or 0.0
    status = "online" if current in REVIVED_BY_HEARTBEAT else current
    if status == "online" and (runtime_state == "wedged" or rate >= DEGRADED_AT_ERROR_RATE):
        return "degraded"
    if status == "degraded" and not runtime_state and rate < RECOVERED_BELOW_ERROR_RATE:
        return "online"
    return status


@router.post("/register")
async def register(request: Request, db: DbDep, token: BearerDep) -> OrjsonResponse:
    """Attach an agent: ``status=online``, ``last_heartbeat_at=now`` (docs/protocol.md §3.1).

    A workspace created without a token is bootstrapped: its first register needs no bearer and the answer
    carries a fresh ``auth_token`` (once). A removed workspace is not resurrected.

    Returns:
        ``200 {"status":"registered","delivery_mode": ..., "auth_token"?: ...}``.

    Raises:
        ApiError: ``400 invalid request body`` (bad JSON, missing ``id``/``agent_card``), ``400`` on an
            unknown ``delivery_mode`` or a push without ``url``; ``401``/``403`` (auth); ``404`` once removed.
    """
    body = await parse_body(request, RegisterRequest, "invalid request body")
    if body.delivery_mode not in (None, "poll", "push"):
        raise ApiError(400, f"invalid delivery_mode {body.delivery_mode!r}: must be 'poll' or 'push'")
    record = db.get_workspace(body.id)
    new_token: str | None = None
    if record is not None and record.token_hash is None and not record.removed:
        new_token = secrets.token_urlsafe(32)
    else:
        record = authenticate_workspace(db, token, body.id)
    if record.removed:
        raise workspace_gone(record)
    delivery_mode = body.delivery_mode or record.delivery_mode or ("poll" if record.runtime == "external" else "push")
    if delivery_mode == "push" and not body.url:
        raise ApiError(400, "url is required for delivery_mode 'push'")
    db.register(
        record.id,
        delivery_mode=delivery_mode,
        url=body.url if delivery_mode == "push" else None,
        agent_card=body.agent_card,
        token_hash=None if new_token is None else hash_token(new_token),
    )
    answer: dict[str, Any] = {"status": "registered", "delivery_mode": delivery_mode}
    if new_token is not None:
        answer["auth_token"] = new_token
    return OrjsonResponse(answer)


@router.post("/heartbeat")
async def heartbeat(request: Request, db: DbDep, token: BearerDep) -> OrjsonResponse:
    """Refresh liveness and move the status by the §3.2 rules (see :func:`heartbeat_status`).

    Returns:
        ``200 {"status":"ok"}``.

    Raises:
        ApiError: ``400 invalid request body``; ``401``/``403`` (auth); ``404`` once removed.
    """
    body = await parse_body(request, HeartbeatRequest, "invalid request body")
    record = authenticate_workspace(db, token, body.workspace_id)
    updated = db.heartbeat(
        record.id,
        next_status=lambda current: heartbeat_status(
            current, error_rate=body.error_rate, runtime_state=body.runtime_state
        ),
        active_tasks=body.active_tasks,
        current_task=body.current_task,
        uptime_seconds=body.uptime_seconds,
        error_rate=body.error_rate,
        runtime_state=body.runtime_state,
    )
    if updated is None:
        raise workspace_gone(record)
    return OrjsonResponse({"status": "ok"})
