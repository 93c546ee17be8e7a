"""Input and result models of every activity: what crosses Temporal, so what lands in history.

Nothing here may hold a secret: tokens are looked up by the worker from ``workspace_id`` (see ``worker.secrets``).
All models are frozen and ``extra="forbid"``; quantities in plain JSON end in ``_s`` or ``_bytes``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from activities.a2a import A2AMessage, DataPart, FilePart, TextPart

ReplyPart = TextPart | FilePart | DataPart


class ActivityName(StrEnum):
    """The activity types, as the worker registers them and the workflow schedules them.

    The workflow schedules by name, so ``workflows/`` never imports the activity implementations. The names live in
    history: renaming one is a versioning change.
    """

    REGISTER = "register"
    SESSION = "session"
    CHECK_CURSOR = "check_cursor"
    DISPATCH = "dispatch"
    REPLY = "reply"
    HEARTBEAT = "heartbeat"
    """Replaced by ``session``; still called by connectors started before it."""
    POLL = "poll"
    """Replaced by ``session``; still called by connectors started before it."""
    HOLD_LEASE = "hold_lease"
    """A worker's liveness lease (``workflows.lease``): runs on the worker's own lease task queue."""
    RELEASE_SESSIONS = "release_sessions"
    """Fails over the sessions of a worker whose lease expired (``workflows.lease``)."""


class Model(BaseModel):
    """Base of our own models: frozen, strict about unknown fields, field docstrings as descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class PlatformTarget(Model):
    """Which workspace on which platform an activity acts for."""

    workspace_id: str
    """Our workspace id (a UUID on real platforms)."""
    platform_url: str
    """Platform base URL, no trailing slash."""


class BackendSpec(Model):
    """Which backend runs messages, and its options (PROTOCOL-independent; see ``activities.backends``).

    Options are plain strings as typed on the command line (``-o key=value``); secrets are never options:
    an option names an environment variable instead (e.g. ``auth_env=AGENT_TOKEN``).
    """

    name: str = "echo"
    """Backend name, e.g. ``echo`` or ``exec``."""
    options: dict[str, str] = Field(default_factory=dict)
    """Backend options."""


class RowPointer(Model):
    """A position in the inbox: an activity row id and when the platform stored it."""

    row_id: str
    """The activity row id (the cursor value)."""
    created_at: datetime | None = None
    """The row's ``created_at``; used to recover from a 410 without skipping newer rows."""

    @property
    def usable(self) -> bool:
        """Whether the platform accepts this row as a cursor (a UUID id; anything else answers ``500``)."""
        try:
            uuid.UUID(self.row_id)
        except ValueError:
            return False
        return True


# --- register / heartbeat ---------------------------------------------------------------------------------------


class RegisterInput(Model):
    """Input of ``register`` (docs/protocol.md §3.1)."""

    target: PlatformTarget
    agent_name: str = "molecule-connect"
    """``agent_card.name`` sent to the platform."""
    last_beat_at: datetime | None = None
    """When this connector last had a heartbeat accepted (carried in its state); ``None`` on a first start. A
    workspace that is ``online`` with a later heartbeat is being served by someone else (``RegisterResult.warning``)."""


class RegisterResult(Model):
    """Result of ``register``."""

    delivery_mode: str
    """The delivery mode the platform recorded (``poll`` expected)."""
    warning: str | None = None
    """Set when, before registering, the workspace was already ``online`` with a heartbeat this connector did not
    send: another connector (another namespace or cluster) may be serving it, and canvas replies would go out twice."""


class HeartbeatInput(Model):
    """Input of the long-running ``heartbeat`` activity (docs/protocol.md §3.2)."""

    target: PlatformTarget
    interval_s: float = 30.0
    """Seconds between platform heartbeats (three fit the platform's 90 s stale window)."""
    run_for_s: float = 3600.0
    """The activity returns after this long, so each run costs a handful of history events."""


class HeartbeatResult(Model):
    """Result of ``heartbeat``: how many beats were posted and how many failed transiently."""

    beats: int
    failures: int


# --- poll ------------------------------------------------------------------------------------------------------

ColdStart = Literal["latest", "backlog"]
"""Where a never-served workspace starts: the newest row (deliver nothing old) or the last rows, oldest first."""


class PollInput(Model):
    """Input of the long-poll ``poll`` activity (docs/protocol.md §3.3).

    Without a ``cursor``: before the first successful poll (``seeded`` false) ``start_from`` applies; after it, every
    row in the inbox is new (the inbox was empty when seeded), so the newest ``limit`` rows are returned oldest first.
    """

    target: PlatformTarget
    cursor: RowPointer | None = None
    """The fetch cursor: rows strictly after it are returned."""
    seeded: bool = False
    """Whether the cold start already happened."""
    start_from: ColdStart = "latest"
    """Cold-start policy."""
    backlog_limit: int = 100
    """How many of the newest rows ``backlog`` delivers."""
    limit: int = 100
    """Rows per inbox request (platform max 500)."""
    poll_interval_s: float = 1.0
    """Seconds between inbox requests while the inbox is empty."""
    max_wait_s: float = 600.0
    """Return an empty batch after this long, so an idle workspace costs ~6 history events per ``max_wait_s``."""
    not_before: datetime | None = None
    """Without a cursor after a reset: only rows created at or after this time are returned (docs/protocol.md §3.3)."""
    ignore_row_ids: list[str] = Field(default_factory=list)
    """Rows already settled that cannot become the cursor (ids that are not UUIDs): left out of the result, so a
    hostile row at the head of the inbox is reported once, not on every read."""


class BodyRef(Model):
    """Where ``dispatch`` re-reads a request body too large to carry through Temporal (docs/protocol.md §3.3).

    The platform has no single-row read, so a row is re-read as the one row after its predecessor:
    ``GET /workspaces/{id}/activity?type=a2a_receive&since_id=<read_after>&limit=1``, checking the answer's ``id``.
    Without a known predecessor, or when that read misses, it is looked for among the newest
    ``RESET_READ_LIMIT`` (500) rows, so such a row can only be re-read while it is among them.
    """

    read_after: str | None = None
    """Id of the inbox row just before this one (the poll's cursor or the previous row of its batch, skipped rows
    included); ``None`` when unknown: the oldest row of a newest-first read (cold-start ``backlog``, 410 reset)."""
    body_bytes: int
    """Size of the whole ``request_body`` as JSON, in bytes."""


class PolledRow(Model):
    """One inbox row as the workflow sees it: to deliver, to skip, or malformed (docs/protocol.md §4)."""

    row_id: str
    created_at: datetime | None = None
    source_id: str | None = None
    """Sender workspace id; ``None`` for the canvas (a human)."""
    method: str | None = None
    """JSON-RPC method of the row (``message/send``, ``notify``...)."""
    outcome: Literal["deliver", "skip", "malformed"]
    """``deliver`` runs the backend; ``skip`` settles at once; ``malformed`` is dead-lettered at once."""
    reason: str | None = None
    """Why a row is skipped or malformed, one line."""
    message: A2AMessage | None = None
    """The normalized inbound message (``deliver``). For a reference (``body_ref``) it has no parts: its ids,
    ``contextId``, ``taskId`` and metadata still place it in a lane, dedupe it and thread the reply."""
    text: str = ""
    """Text parts joined in order; empty when over ``TEXT_COPY_BYTES`` (read :attr:`message_text` instead) and for
    a reference."""
    unsupported_parts: int = 0
    """Parts the connector could not represent."""
    body_bytes: int = 0
    """Size of the row's ``request_body`` as JSON, in bytes, as carried in this row: for a reference only the
    parts-less ``message`` is carried (the whole body's size is ``body_ref.body_bytes``). The workflow's
    continue-as-new budget adds these up."""
    body_ref: BodyRef | None = None
    """Set when the body was too large to carry (over ``BODY_REF_BYTES``): ``dispatch`` re-reads it from the
    platform before running the backend."""
    auto_reply_depth: int = 0
    """``metadata.auto_reply_depth`` of the inbound message: automatic replies that led to it (docs/protocol.md §7)."""

    @property
    def message_text(self) -> str:
        """The text for the backend: ``text``, or the text parts of ``message`` when too large to be copied.

        Empty for a reference (``body_ref``): ``dispatch`` re-reads the body first.
        """
        if self.text or self.message is None:
            return self.text
        return "\n".join(p.text for p in self.message.parts if isinstance(p, TextPart))

    @property
    def pointer(self) -> RowPointer:
        """This row as a cursor position."""
        return RowPointer(row_id=self.row_id, created_at=self.created_at)

    @property
    def lane(self) -> str:
        """The conversation this row belongs to (docs/protocol.md §7); a lane's messages are delivered in order.

        Returns:
            ``ctx:<contextId>``, else ``peer:<sender workspace id>``, else ``canvas``.
        """
        if self.message is not None and self.message.context_id:
            return f"ctx:{self.message.context_id}"
        if self.source_id:
            return f"peer:{self.source_id}"
        return "canvas"


class PollResult(Model):
    """Result of ``poll``: rows oldest first, and how the cursor moved."""

    rows: list[PolledRow] = Field(default_factory=list)
    """New rows, oldest first (a DESC read is reversed by the activity)."""
    seed: RowPointer | None = None
    """Cold start ``latest``: the newest row, to become the cursor; nothing before it is delivered."""
    cold_start_done: bool = False
    """This poll performed the cold start (``seed`` may still be ``None`` when the inbox was empty)."""
    cursor_reset: bool = False
    """The cursor was not found (410); ``rows`` were re-read without it and start after the cursor's time."""
    polls: int = 0
    """How many inbox requests this activity made."""


# --- session: heartbeat and poll in one activity ------------------------------------------------------------------


class AgentReport(Model):
    """What the platform heartbeat says about the agent besides liveness (docs/protocol.md §3.2).

    ``runtime_state`` is never sent: any value but empty or ``wedged`` would keep the workspace ``degraded``.
    """

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Recent share of failed dispatches; ``>= 0.5`` makes the platform show the workspace ``degraded``."""
    started_at: datetime | None = None
    """When the connector first started (kept through continue-as-new): ``uptime_seconds`` counts from it."""


class SessionInput(Model):
    """Input of the long-running ``session`` activity: platform heartbeats, and inbox reads when ``poll`` is set.

    One activity per workspace keeps both duties, so one Temporal heartbeat per platform beat proves both alive, and
    a dead worker's workspace is picked up by another worker within the activity's heartbeat timeout (about
    1.2 × ``heartbeat_interval_s``), well inside the platform's 90 s stale window.
    """

    target: PlatformTarget
    poll: PollInput | None = None
    """Long-poll the inbox with these parameters; ``None``: heartbeats only (paused, backpressure, draining)."""
    heartbeat_interval_s: float = 30.0
    """Seconds between platform heartbeats."""
    last_beat_at: datetime | None = None
    """When the last platform heartbeat was accepted; the first beat of this session is due one interval later
    (at once when ``None`` or overdue)."""
    run_for_s: float = 600.0
    """Return after this long even without rows, so a quiet workspace costs a few history events per run."""
    report: AgentReport = Field(default_factory=AgentReport)
    trouble_after_s: float = 60.0
    """A platform failure (transient ones included) lasting this long ends the session with ``trouble``, so the
    workflow shows it (phase ``degraded``); the next session keeps retrying."""
    in_trouble: bool = False
    """The previous session ended in trouble: end this one as soon as a read (or beat) succeeds again."""


class PlatformTrouble(Model):
    """A platform failure that has lasted, as a session reports it."""

    operation: str
    """``poll`` or ``heartbeat``."""
    error: str
    """The last error, one line."""
    since: datetime
    """When the failures started."""
    attempts: int
    """Failed requests since then."""


class SessionResult(Model):
    """Result of ``session``: what the inbox read found (if anything), heartbeat counts and lasting trouble."""

    poll: PollResult | None = None
    """Rows, a cold-start seed or a reset; ``None`` when the session ended without news from the inbox."""
    beats: int = 0
    beat_failures: int = 0
    """Platform heartbeats that failed transiently in this session."""
    last_beat_at: datetime | None = None
    """When the last platform heartbeat was accepted (this session's, else the input's)."""
    trouble: PlatformTrouble | None = None
    """Set when the session ended because a failure lasted ``trouble_after_s``."""
    recovered: bool = False
    """``in_trouble`` was set and the platform answered again."""


# --- dispatch / reply ------------------------------------------------------------------------------------------


class DispatchInput(Model):
    """Input of ``dispatch``: run the backend on one inbound message."""

    target: PlatformTarget
    backend: BackendSpec
    row: PolledRow
    lane: str
    """The conversation (``contextId``, else the sender, else ``canvas``)."""
    attempt: int = 0
    """The connector's attempt number for this message (the workflow retries dispatches itself); ``0``: use the
    activity's own attempt count. Backends see it as ``MOLECULE_ATTEMPT``."""
    send_reply: bool = False
    """Send the reply from this activity once the backend answered (one activity per message instead of two); a
    reply that fails here is returned with its parts, for the workflow's own ``reply`` activity to retry, so a failed
    reply never re-runs the backend."""
    first_attempt_at: datetime | None = None
    """When this message's first dispatch attempt started; set on later attempts only. An earlier attempt may have
    sent the reply before it died (worker killed, heartbeat timeout), so a canvas reply is first looked for from
    then on (``ReplyInput.attempted_at``)."""


class DispatchResult(Model):
    """Result of ``dispatch``: the reply parts, or the reply already sent."""

    parts: list[ReplyPart]
    """The backend's reply; empty when ``reply`` is set (it is on the platform, and stays out of history)."""
    truncated: bool = False
    """The backend's reply was cut to fit Temporal's payload limit; the text carries a visible marker."""
    reply: ReplyResult | None = None
    """Set when ``send_reply`` was asked and the platform accepted the reply."""
    reply_error: str | None = None
    """Why the reply sent from this activity failed (one line); ``parts`` then holds the reply to send again."""
    reply_attempted_at: datetime | None = None
    """When the failed reply was first tried (it may have reached the platform): passed on to ``reply``."""


class ReplyInput(Model):
    """Input of ``reply`` (docs/protocol.md §1.5, §3.4, §3.5)."""

    target: PlatformTarget
    row: PolledRow
    """The inbound row being answered."""
    parts: list[ReplyPart]
    is_error: bool = False
    """An error reply (the message was dead-lettered); marked in metadata for the sender."""
    attempted_at: datetime | None = None
    """When an earlier attempt (the reply sent with the dispatch) may have reached the platform: a canvas reply is
    then looked for before it is sent again (``notify`` has no ``messageId`` to deduplicate on)."""


class ReplyResult(Model):
    """Result of ``reply``."""

    destination: Literal["peer", "canvas"]
    message_id: str | None = None
    """The deterministic reply messageId (peer replies)."""
    deduplicated: bool = False
    """A canvas reply an earlier attempt had already delivered (its echo row was found): not sent again."""


class CheckCursorInput(Model):
    """Input of ``check_cursor``: is this row in the workspace's inbox (docs/protocol.md §3.3)."""

    target: PlatformTarget
    row_id: str
    """The row the operator wants the cursor on (a UUID)."""


class HeldSession(Model):
    """A ``session`` activity running on a worker, as the worker's lease lists it (``hold_lease`` heartbeat details)."""

    workflow_id: str
    """The ``ConnectWorkflow`` id, e.g. ``connect-ws-1``."""
    run_id: str
    activity_id: str


class HoldLeaseInput(Model):
    """Input of ``hold_lease``: the worker heartbeats it, listing its sessions, until it shuts down."""

    hold_for_s: float = Field(default=86_400.0, gt=0)
    """Return after this long (the lease workflow then continues as new, so its history stays a few events)."""


class ReleaseInput(Model):
    """Input of ``release_sessions``: the sessions a lost worker held, by its lease's last heartbeat."""

    worker_identity: str
    """The lost worker's Temporal identity (``pid@host``), as pending activities report it."""
    sessions: list[HeldSession]
    watch_s: float = Field(default=75.0, ge=0)
    """Keep releasing sessions the lost worker takes again for this long: a frozen worker's open task polls can be
    handed the retried sessions until the server expires those polls (about a minute)."""
    recheck_s: float = Field(default=3.0, gt=0)
    """Seconds between two looks while watching."""


class ReleaseResult(Model):
    """Result of ``release_sessions``."""

    released: list[str]
    """Workflow ids whose session was failed over, each once, in the order released."""
    releases: int
    """Sessions failed over in all (a workflow counts again when the lost worker took its session again)."""
