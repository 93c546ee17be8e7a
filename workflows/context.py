"""``Connector``: what one run of ``ConnectWorkflow`` knows, shared by its parts (duties, lanes, delivery, handlers).

The durable part is ``ConnectState`` (carried through continue-as-new); the rest is rebuilt by each run: the failure
policy's blocked and gone reasons, lasting platform trouble, the phase published to the Web UI and visibility,
in-flight messages, the control epoch. The phase is derived from these in one place (:attr:`Connector.phase`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.messages import PlatformTarget, PlatformTrouble
    from workflows.messages import (
        ConnectInput,
        ConnectSettings,
        DeadLetterSummary,
        HeartbeatHealth,
        InFlight,
        Phase,
        StatusResult,
    )
    from workflows.names import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID
    from workflows.state import ConnectState, DeadLetter

STATUS_DEAD_LETTERS = 20
"""Dead letters listed by ``status`` (the newest); the ``dead_letters`` query pages through all."""

PATCH_SESSION = "session-and-outages"
"""``workflow.patched`` id of the ``session`` activity, backend outages, the ping-pong guard counted on our side and
the checked ``set_cursor`` (docs/architecture.md §2.13, patches and their retirement)."""


@dataclass
class Connector:
    """One run's view of its connector; ``ConnectWorkflow`` builds it in ``@workflow.init``."""

    input: ConnectInput
    settings: ConnectSettings
    state: ConnectState
    target: PlatformTarget
    registered: bool = False
    blocked: dict[str, str] = field(default_factory=dict)
    """Duty → why it waits ``blocked`` (auth, missing token, a backend that cannot run, a full dead-letter queue)."""
    gone: str | None = None
    """Why the workspace is gone (404/410 on our own workspace); ``None`` when not."""
    trouble: PlatformTrouble | None = None
    """A platform failure that has lasted (phase ``degraded``), as the session reported it."""
    draining: bool = False
    stopping: bool = False
    """Continue-as-new is near: lanes stop at their next step."""
    epoch: int = 0
    """Bumped by every control change; a session of an older epoch is replaced and its rows dropped."""
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    heartbeat: HeartbeatHealth = field(default_factory=lambda: HeartbeatHealth(running=False))
    warnings: list[str] = field(default_factory=list)
    rejected_signals: list[str] = field(default_factory=list)
    """The last rejected control signals (time and reason): a signal has no caller to tell."""
    published_phase: str | None = None
    emitted: dict[str, int] = field(default_factory=dict)
    """Counter values already exported as metrics (the durable counters are the source of truth)."""
    _session_patch: bool | None = None

    @classmethod
    def of(cls, input: ConnectInput) -> Connector:
        """The connector of a run started with ``input`` (a carried state unpacked)."""
        if input.packed_state is not None:
            state = ConnectState.model_validate_json(zlib.decompress(input.packed_state))
        else:
            state = input.state or ConnectState()
        target = PlatformTarget(workspace_id=input.workspace_id, platform_url=input.platform_url)
        return cls(input=input, settings=input.settings, state=state, target=target)

    @property
    def v2(self) -> bool:
        """Whether this run has the ``session-and-outages`` behaviour (:data:`PATCH_SESSION`), decided on first use."""
        if self._session_patch is None:
            self._session_patch = workflow.patched(PATCH_SESSION)
        return self._session_patch

    def log(self, **extra: object) -> dict[str, object]:
        """``extra=`` of a log call: the workspace, plus ``extra``."""
        return {"workspace_id": self.target.workspace_id, **extra}

    # --- what the connector may do ----------------------------------------------------------------------------

    def may_poll(self) -> bool:
        """Whether the session should read the inbox (not paused, draining, stopping, full, or backpressured)."""
        state = self.state
        if self.v2 and (self.draining or self.stopping or state.dead_letters_full):
            return False
        return not state.paused and len(state.pending) < self.settings.max_pending

    def lanes_must_stop(self) -> bool:
        """Lanes end at their next step: continue-as-new, or paused (unless draining)."""
        return self.stopping or (self.state.paused and not self.draining)

    def control_changed(self) -> None:
        """A control changed what the connector does: replace the running session, show the phase."""
        self.epoch += 1
        self.publish_phase()

    # --- the phase ------------------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The phase ``status`` shows, most urgent first."""
        if self.gone is not None:
            return "gone"
        if self.blocked:
            return "blocked"
        if self.draining:
            return "draining"
        if self.state.paused:
            return "paused"
        if not self.registered:
            return "registering"
        if self.state.health.down:
            return "backend_down"
        if self.trouble is not None:
            return "degraded"
        return "connected"

    def publish_phase(self, phase: str | None = None) -> None:
        """Show the phase in the Web UI (current details) and in the ``ConnectorPhase`` search attribute.

        The attribute is only written when the workflow was started with ``WorkspaceId`` set, i.e. where the
        attributes are known to be registered: an unregistered one would fail every workflow task.
        """
        phase = phase or self.phase
        if phase == self.published_phase:
            return
        self.published_phase = phase
        self.publish_details()
        if workflow.info().typed_search_attributes.get(SEARCH_ATTRIBUTE_WORKSPACE_ID) is not None:
            workflow.upsert_search_attributes([SEARCH_ATTRIBUTE_PHASE.value_set(phase)])

    def publish_details(self) -> None:
        """The Web UI's current details: phase, lag (fetched, unsettled messages) and dead letters.

        Not a command (no history event): refreshed whenever a message settles. Encrypted with the payload codec,
        so the Web UI shows it through the codec server; the ``ConnectorPhase`` search attribute stays readable.
        """
        state = self.state
        workflow.set_current_details(
            f"phase: {self.published_phase or self.phase} · lag {len(state.pending)} · "
            f"dead letters {len(state.dead_letters)}"
        )

    def status(self) -> StatusResult:
        """The ``status`` query's answer: phase, cursors, lanes, in-flight messages, dead letters, counters."""
        state = self.state
        reasons = [reason if reason.startswith(duty) else f"{duty}: {reason}" for duty, reason in self.blocked.items()]
        if self.gone:
            reasons.insert(0, f"workspace gone: {self.gone}")
        return StatusResult(
            workspace_id=self.target.workspace_id,
            platform_url=self.target.platform_url,
            backend=self.input.backend.name,
            phase=self.phase,
            blocked_reason="; ".join(reasons) or None,
            seeded=state.cursor.seeded,
            commit_cursor=state.cursor.commit,
            fetch_cursor=state.cursor.fetch,
            pending=len(state.pending),
            lanes={lane: len(queue) for lane, queue in state.lane_queues().items()},
            in_flight=list(self.in_flight.values()),
            dead_letters=[summary(d) for d in state.dead_letters[-STATUS_DEAD_LETTERS:]],
            dead_letters_total=len(state.dead_letters),
            dead_letters_evicted=state.dead_letters_evicted,
            counters=state.counters.model_dump(),
            heartbeat=self.heartbeat,
            last_delivery_at=state.last_delivery_at,
            last_error=state.last_error,
            trouble=self.trouble,
            outage=state.health.outage,
            warnings=[*self.warnings, *self.rejected_signals],
            settings=self.settings,
        )

    def emit_metrics(self) -> None:
        """Export counter increases as ``molecule_connect_<counter>`` metrics, per workspace, and the gauges.

        Uses the workflow metric meter, which the SDK silences during replay, so each increase is exported once
        (Temporal docs, "Metrics"). Served by the worker's ``--metrics-port``.
        """
        meter = workflow.metric_meter().with_additional_attributes({"workspace_id": self.target.workspace_id})
        for name, value in self.state.counters.model_dump().items():
            delta = value - self.emitted.get(name, value if name == "continued_as_new" else 0)
            if delta > 0:
                meter.create_counter(f"molecule_connect_{name}", f"Connector counter '{name}'.").add(delta)
            self.emitted[name] = value
        meter.create_gauge("molecule_connect_pending", "Fetched messages not yet settled.").set(len(self.state.pending))
        meter.create_gauge("molecule_connect_backend_down", "1 while the backend is considered down.").set(
            int(self.state.health.down)
        )
        self.publish_details()


def summary(letter: DeadLetter) -> DeadLetterSummary:
    """A dead letter as ``status`` and the ``dead_letters`` query show it."""
    return DeadLetterSummary(
        row_id=letter.row_id,
        message_id=letter.message_id,
        lane=letter.lane,
        source_id=letter.source_id,
        stage=letter.stage,
        error=letter.error,
        attempts=letter.attempts,
        first_failed_at=letter.first_failed_at or letter.dead_lettered_at,
        dead_lettered_at=letter.dead_lettered_at,
    )
