"""Input and result models of ``ConnectWorkflow`` and its handlers.

``ConnectInput`` parses from the plain JSON typed at ``temporal workflow start``: only ``workspace_id`` and
``platform_url`` are required. It never holds a secret (the worker resolves tokens by workspace id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from activities.messages import BackendSpec, ColdStart, PlatformTrouble, RowPointer
from workflows.outage import Outage
from workflows.state import ConnectState

Phase = Literal[
    "registering", "connected", "degraded", "backend_down", "paused", "blocked", "gone", "draining", "stopped"
]
"""Connector phase shown by ``status`` (docs/architecture.md §2). ``degraded``: a platform failure has lasted a
minute (still retried); ``backend_down``: dispatches fail across messages, probing (``workflows.outage``)."""


class Model(BaseModel):
    """Base of handler models: frozen, strict about unknown fields (a typo is an error, not a silent default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


DispatchMode = Literal["auto", "activity", "local"]
"""How ``dispatch`` runs: see ``ConnectSettings.dispatch_as``."""


class ConnectSettings(Model):
    """Tuning of one connector. Every field has a default; durations are seconds (``_s``)."""

    start_from: ColdStart = "latest"
    """Cold start: ``latest`` delivers nothing old; ``backlog`` delivers the newest ``backlog_limit`` rows first."""
    backlog_limit: int = Field(default=100, ge=1, le=500)
    """Rows a ``backlog`` cold start delivers."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """Seconds between inbox reads while the inbox is empty (inside one long-poll activity)."""
    poll_max_wait_s: float = Field(default=600.0, ge=5, le=3600)
    """Seconds one long-poll activity waits for rows before returning empty (history cost: ~6 events per return)."""
    poll_limit: int = Field(default=100, ge=1, le=500)
    """Rows per inbox read."""
    heartbeat_interval_s: float = Field(default=30.0, gt=0, le=60)
    """Seconds between platform heartbeats (the platform marks a workspace stale after 90 s)."""
    heartbeat_run_for_s: float = Field(default=3600.0, ge=10)
    """How long one heartbeat activity runs before it returns and is restarted (connectors started before the
    ``session`` activity; a session returns after ``poll_max_wait_s``)."""
    failover_timeout_s: float | None = Field(default=None, ge=2, le=600)
    """How long a dead worker's session (heartbeats and inbox reads) goes unnoticed before another worker takes it
    over: the ``session`` activity's heartbeat timeout. Default ``1.2 × heartbeat_interval_s`` (36 s): one Temporal
    heartbeat per platform beat, ~120 billable actions per workspace-hour, and a platform heartbeat gap under ~40 s
    when a worker dies. Lower is faster failover at ~``3600 × 1.2 / failover_timeout_s`` actions an hour."""
    max_concurrency: int = Field(default=4, ge=1, le=256)
    """Conversations (lanes) dispatched in parallel."""
    max_pending: int = Field(default=200, ge=1, le=5000)
    """Fetched, unsettled messages at most; polling pauses when reached (backpressure)."""
    max_attempts: int = Field(default=5, ge=1, le=100)
    """Dispatch attempts before a message is dead-lettered."""
    dispatch_timeout_s: float = Field(default=900.0, gt=0)
    """Start-to-close timeout of one dispatch attempt."""
    dispatch_heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    """A dispatch whose worker stops heartbeating for this long is retried elsewhere (crash recovery time)."""
    dispatch_as: DispatchMode = "auto"
    """How ``dispatch`` runs. ``activity``: a regular activity that heartbeats while the backend works and moves to
    another worker within ``dispatch_heartbeat_timeout_s`` of a crash; right for backends that take seconds to
    minutes. ``local``: a local activity run by the workflow's own worker, with no Temporal server round trip and
    about one history event per message (a marker); for backends that answer within ``local_dispatch_timeout_s``.
    ``auto``: ``local`` for the in-process ``echo`` backend, ``activity`` for every other backend."""
    local_dispatch_timeout_s: float = Field(default=30.0, gt=0, le=300)
    """Start-to-close timeout of one local dispatch attempt (the workflow task stays open while it runs)."""
    reply_timeout_s: float = Field(default=3600.0, gt=0)
    """Total time to get one reply accepted (transient failures retried) before it is dead-lettered."""
    blocked_retry_s: float = Field(default=180.0, gt=0)
    """Seconds between retries of a duty blocked by an auth failure or a misconfigured backend."""
    gone_retry_s: float = Field(default=900.0, gt=0)
    """Seconds between checks while the workspace is gone (404/410 on our own workspace)."""
    error_reply: bool = True
    """Tell the sender when its message is dead-lettered."""
    error_reply_template: str = "Sorry, this message could not be processed (reference: {row_id})."
    """Text of the error reply. ``{row_id}`` is the inbound row (the operator's reference); ``{error}`` is only the
    kind of failure (``the agent failed``, ``the agent timed out``, ``the message could not be read``, ...), never the
    details, which stay in ``status`` and the logs: a sender never learns local paths, commands or environment."""
    max_auto_reply_depth: int = Field(default=8, ge=0)
    """Automatic exchanges in a row a conversation may have (counted on our side: peer agents' messages and quick
    answers to our replies, and the ``auto_reply_depth`` peers copy); past it messages are settled without dispatch
    and the sender is told once (docs/protocol.md §7)."""
    max_auto_replies_per_minute: int = Field(default=10, ge=1)
    """Automatic replies (``auto_reply_depth`` ≥ 1) dispatched per conversation per minute at most; more are
    settled without dispatch, so two auto-responders cannot answer each other forever (docs/protocol.md §7)."""


class ConnectInput(Model):
    """Input of ``ConnectWorkflow`` (docs/architecture.md §2.3); continue-as-new passes it with ``state`` set."""

    workspace_id: str
    """The workspace to serve."""
    platform_url: str
    """Platform base URL, e.g. ``http://127.0.0.1:8080``; a trailing slash is removed."""
    backend: BackendSpec = Field(default_factory=BackendSpec)
    """Backend name and options (default: ``echo``)."""
    settings: ConnectSettings = Field(default_factory=ConnectSettings)
    state: ConnectState | None = None
    """Carried state (continue-as-new). ``None`` on a first start."""
    packed_state: bytes | None = None
    """Carried state too large to carry readably (over 256 KiB of JSON): zlib-compressed JSON of ``ConnectState``.
    Keeps thousands of dead letters and queued bodies inside Temporal's 2 MiB payload limit."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    @field_validator("platform_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("platform_url must start with http:// or https://")
        return value

    @field_validator("workspace_id")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("workspace_id must not be empty")
        return value.strip()


class InFlight(Model):
    """A message being dispatched or replied to."""

    row_id: str
    lane: str
    stage: Literal["dispatch", "reply"]
    since: datetime


class DeadLetterSummary(Model):
    """One dead letter as ``status`` shows it."""

    row_id: str
    message_id: str | None
    lane: str
    source_id: str | None
    stage: str
    error: str
    attempts: int
    first_failed_at: datetime
    dead_lettered_at: datetime


class HeartbeatHealth(Model):
    """The heartbeat duty, as last reported."""

    running: bool
    last_result_at: datetime | None = None
    beats: int = 0
    failures: int = 0


class StatusResult(Model):
    """Answer of the ``status`` query."""

    workspace_id: str
    platform_url: str
    backend: str
    phase: Phase
    blocked_reason: str | None = None
    """Why the connector is blocked or gone, with what to do."""
    seeded: bool
    """The cold start is done: from now on every new inbox row is delivered."""
    commit_cursor: RowPointer | None = None
    fetch_cursor: RowPointer | None = None
    pending: int
    """Fetched messages not yet settled (queued and in flight)."""
    lanes: dict[str, int]
    """Pending messages per conversation."""
    in_flight: list[InFlight]
    dead_letters: list[DeadLetterSummary]
    """The newest dead letters (at most 20; the ``dead_letters`` query pages through all of them)."""
    dead_letters_total: int = 0
    dead_letters_evicted: int
    counters: dict[str, int]
    heartbeat: HeartbeatHealth
    last_delivery_at: datetime | None = None
    last_error: str | None = None
    trouble: PlatformTrouble | None = None
    """A platform failure that has lasted (phase ``degraded``): operation, last error, since when, attempts."""
    outage: Outage | None = None
    """The backend outage in progress (phase ``backend_down``): since, held messages, next probe."""
    warnings: list[str] = Field(default_factory=list)
    """Things an operator should know that do not stop delivery (e.g. another connector may serve the workspace)."""
    settings: ConnectSettings


class ConnectResult(Model):
    """Result of ``ConnectWorkflow`` when it completes (drained)."""

    workspace_id: str
    phase: Phase
    commit_cursor: RowPointer | None = None
    counters: dict[str, int]
    state: ConnectState | None = None
    """The drained connector's state (cursor, dedupe windows, dead letters, counters); ``--replace`` starts the new
    definition with it. Nothing is pending: drain delivered every fetched message. ``None`` from older runs."""


# --- control plane (updates and signals) ----------------------------------------------------------------------------


class SetCursorInput(Model):
    """Input of the ``set_cursor`` update: where polling continues."""

    row_id: str
    """An activity row id (a UUID), or ``latest`` to skip to the newest row. Settled messages are never redelivered:
    the dedupe window still drops them after a rewind (docs/protocol.md §8)."""


class DeadLetterPage(Model):
    """Input of the ``dead_letters`` query: which page of the dead letters, oldest first."""

    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class DeadLetterList(Model):
    """Answer of the ``dead_letters`` query."""

    total: int
    letters: list[DeadLetterSummary]


class DeadLetterSelection(Model):
    """Input of ``redrive`` and ``discard``: one dead letter by row id, or all of them."""

    row_id: str | None = None
    """The dead letter's row id; ``None`` selects all."""


class DeadLetterActionResult(Model):
    """Result of ``redrive`` and ``discard``."""

    count: int
    """How many dead letters were acted on."""
    row_ids: list[str]


class ConfigureInput(Model):
    """Input of the ``configure`` update: settings to change, by ``ConnectSettings`` field name (JSON values)."""

    changes: dict[str, object]
    """E.g. ``{"max_concurrency": 8, "poll_interval_s": 2}``; unknown names or bad values reject the update."""
