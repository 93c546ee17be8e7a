"""``ConnectWorkflow``: one long-running workflow per workspace, owning its inbox cursor (DESIGN.md §2).

It registers the workspace, keeps a heartbeat activity running, and long-polls the inbox, feeding messages into
conversation lanes. Each lane delivers its messages in arrival order; lanes run in parallel up to
``max_concurrency`` while the poll keeps reading ahead, bounded by ``max_pending``. A message costs one activity:
``dispatch`` (a regular or a local activity, ``ConnectSettings.dispatch_as``) runs the backend and sends the reply;
a ``reply`` activity follows only when that reply failed, so a failed reply never re-runs the backend. The commit
cursor only moves over settled rows (``workflows.state``). When Temporal suggests it, the workflow stops starting
dispatches, lets in-flight ones finish and continues as new with its whole state.

Why each handler is what it is:
- ``status`` is a query: read-only, answered from memory, no history.
- ``pause``, ``resume``, ``drain``, ``set_cursor``, ``redrive``, ``discard`` and ``configure`` are updates: the caller
  learns whether the change was accepted and when it holds, and validators reject bad values before anything is
  written to history.
- ``pause``, ``resume`` and ``drain`` are also signals, for tools that cannot send updates (fire and forget).

A control change cancels an in-flight long poll and starts a new one (the epoch pattern), so it takes effect at once
and a stale poll result never overwrites it.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections import deque
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.a2a import TextPart
    from activities.dispatch import DispatchActivities
    from activities.errors import NOT_RETRYABLE, ErrorType
    from activities.messages import (
        AgentReport,
        CheckCursorInput,
        DispatchInput,
        DispatchResult,
        HeartbeatInput,
        PlatformTarget,
        PlatformTrouble,
        PolledRow,
        PollInput,
        PollResult,
        RegisterInput,
        ReplyInput,
        ReplyPart,
        RowPointer,
        SessionInput,
        SessionResult,
    )
    from activities.platform import PlatformActivities
    from activities.tracing import message_trace
    from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID
    from workflows.messages import (
        ConfigureInput,
        ConnectInput,
        ConnectResult,
        ConnectSettings,
        DeadLetterActionResult,
        DeadLetterList,
        DeadLetterPage,
        DeadLetterSelection,
        DeadLetterSummary,
        HeartbeatHealth,
        InFlight,
        Phase,
        SetCursorInput,
        StatusResult,
    )
    from workflows.state import ConnectState, DeadLetter, PendingMessage, lane_of

PLATFORM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    # A platform outage is waited out: a minute between tries is gentle on a 600 req/min budget and still recovers
    # within a minute of the platform coming back. Non-transient failures are non-retryable ApplicationErrors.
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
)
"""Platform calls (register, heartbeat, poll, reply): transient failures are retried forever with backoff."""

ERROR_REPLY_TIMEOUT = timedelta(minutes=5)
"""Error replies are best effort: a sender we cannot reach for this long is not worth blocking a lane for."""

PATCH_CARRY_BUDGET = "carry-budget-before-continue-as-new"
PATCH_AUTO_REPLY_RATE_CAP = "auto-reply-rate-cap"
PATCH_REPLY_WITH_DISPATCH = "reply-with-dispatch"
PATCH_LOCAL_DISPATCH = "local-dispatch"
PATCH_SESSION = "session-and-outages"
"""``workflow.patched`` ids: workflows started before these changes replay on the old path. ``session-and-outages``
(checked once, when a run starts) turns on the ``session`` activity, backend outages, the ping-pong guard counted on
our side and the checked ``set_cursor``; a run started before it keeps the old path until it continues as new."""

CARRY_READABLE_BYTES = 256 * 1024
"""Carried state larger than this (as JSON) is compressed into ``ConnectInput.packed_state``."""

STATUS_DEAD_LETTERS = 20
"""Dead letters listed by ``status`` (the newest); the ``dead_letters`` query pages through all."""

ERROR_KINDS = {"parse": "the message could not be read", "reply": "the reply could not be delivered"}
"""What ``{error}`` says in an error reply, by failure stage (``dispatch``: see ``_error_kind``)."""


class _LaneStopped(Exception):
    """A lane waiting (backend down, dead-letter queue full) must stop: pause, continue-as-new. Not a failure."""


LOCAL_DISPATCH_BACKENDS = frozenset({"echo"})
"""Backends that ``dispatch_as="auto"`` runs as a local activity: in-process, answering in microseconds."""

CARRY_BUDGET_BYTES = 1024 * 1024
"""Continue-as-new waits for queued message bodies to fit this, so its input stays under the 2 MiB payload limit."""

HISTORY_LENGTH_LIMIT = 20_000
"""Continue as new past this many events even if the server did not suggest it (the hard limit is 51,200)."""


LOCAL_ACTIVITY_FAILURES = (ActivityError, ApplicationError, TimeoutError)
"""What a failed local activity raises in the workflow: an ``ActivityError``, or (as this SDK's core reports a local
activity's final failure) the activity's own ``ApplicationError`` or ``TimeoutError`` unwrapped."""


def _failure(err: BaseException) -> tuple[str | None, str]:
    """The ``ApplicationError`` type and a one-line message of a failed (local) activity."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        return cause.type, cause.message
    if isinstance(cause, TimeoutError):
        return "Timeout", f"activity {cause.type.name.lower() if cause.type else ''} timeout".replace("  ", " ")
    return None, str(cause or err)


def _retries_exhausted(err: BaseException) -> bool:
    """Whether a failed activity used up its retry policy (rather than failing non-retryably at once)."""
    if isinstance(err, ActivityError):
        return err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    if isinstance(err, ApplicationError):
        return not err.non_retryable
    return isinstance(err, TimeoutError)


@workflow.defn
class ConnectWorkflow:
    """Durable poll-mode connector for one Molecule workspace (DESIGN.md §2, PROTOCOL.md §1 and §8)."""

    @workflow.init
    def __init__(self, input: ConnectInput) -> None:
        self._input = input
        self._settings = input.settings
        if input.packed_state is not None:
            self._state = ConnectState.model_validate_json(zlib.decompress(input.packed_state))
        else:
            self._state = input.state or ConnectState()
        self._target = PlatformTarget(workspace_id=input.workspace_id, platform_url=input.platform_url)
        self._registered = False
        self._blocked: dict[str, str] = {}
        self._gone: str | None = None
        self._running_lanes: set[str] = set()
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._in_flight: dict[str, InFlight] = {}
        self._stopping = False
        self._crash: BaseException | None = None
        self._heartbeat = HeartbeatHealth(running=False)
        self._heartbeat_stopping = False
        """Set by ``run`` before it cancels the heartbeat duty (drain, continue-as-new)."""
        self._epoch = 0
        """Bumped by every control change; an in-flight poll of an older epoch is cancelled and its result dropped."""
        self._draining = False
        self._published_phase: str | None = None
        self._auto_replies: dict[str, list[datetime]] = {}
        """Per lane: when automatic replies were dispatched in the last minute (the ping-pong rate cap)."""
        self._emitted: dict[str, int] = {}
        """Counter values already exported as metrics (the durable counters are the source of truth)."""
        self._patched_session: bool | None = None
        self._trouble: PlatformTrouble | None = None
        """A platform failure that has lasted (phase ``degraded``), as the session reported it."""
        self._warnings: list[str] = []
        self._waiting: list[str] = []
        """Row ids of the messages waiting for a down backend, oldest first (``_wait_for_backend``)."""

    # --- main loop ----------------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ConnectInput) -> ConnectResult:
        """Serve the workspace until drained (the workflow otherwise continues as new, never completing).

        Args:
            input: Workspace, platform URL, backend and settings; ``state`` when continued as new.

        Returns:
            After ``drain``: the final cursor, counters and state (for a replacement to carry on from).
        """
        workflow.logger.info("connector starting", extra=self._log())
        if self._v2 and self._state.started_at is None:
            self._state.started_at = workflow.now()
        self._publish_phase()
        await self._register()
        if self._v2:
            duty = asyncio.create_task(self._session_duty())
            self._start_lanes()
            await workflow.wait_condition(
                lambda: self._draining or self._should_continue_as_new() or self._crash is not None
            )
            self._raise_if_crashed()
        else:
            duty = asyncio.create_task(self._heartbeat_duty())
            self._start_lanes()
            while not self._draining and not self._should_continue_as_new():
                await workflow.wait_condition(lambda: self._may_poll() or self._draining or self._crash is not None)
                self._raise_if_crashed()
                if self._draining:
                    break
                result = await self._poll()
                if result is not None:
                    await self._ingest(result)
                self._raise_if_crashed()

        if self._draining:
            # Deliver everything already fetched, then complete.
            self._start_lanes()
            await workflow.wait_condition(
                lambda: (not self._state.pending and not self._running_lanes) or self._crash is not None
            )
        else:
            # Carried state must fit one payload: keep delivering until the queued bodies fit, then stop the lanes.
            if workflow.patched(PATCH_CARRY_BUDGET):
                self._start_lanes()
                await workflow.wait_condition(
                    lambda: self._carried_bytes() <= CARRY_BUDGET_BYTES or self._crash is not None
                )
            self._stopping = True
            await workflow.wait_condition(lambda: not self._running_lanes or self._crash is not None)
        self._raise_if_crashed()
        self._heartbeat_stopping = True
        duty.cancel()
        try:
            await duty
        except asyncio.CancelledError:
            pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._draining:
            self._publish_phase("stopped")
            workflow.logger.info("drained; stopping", extra=self._log())
            return ConnectResult(
                workspace_id=self._target.workspace_id,
                phase="stopped",
                commit_cursor=self._state.commit_cursor,
                counters=self._state.counters.model_dump(),
                state=self._state,  # for `run/start --replace`: the next definition starts from this cursor
            )
        self._state.counters.continued_as_new += 1
        workflow.logger.info("continuing as new", extra=self._log(pending=len(self._state.pending)))
        workflow.continue_as_new(self._carried_input())

    @property
    def _v2(self) -> bool:
        """Whether this run has the ``session-and-outages`` behaviour (``PATCH_SESSION``), decided on first use."""
        if self._patched_session is None:
            self._patched_session = workflow.patched(PATCH_SESSION)
        return self._patched_session

    def _carried_input(self) -> ConnectInput:
        """The input of the next run: settings as configured, and the state (compressed when large)."""
        update = {"settings": self._settings, "state": self._state, "packed_state": None}
        carried = self._input.model_copy(update=update)
        if not self._v2:
            return carried
        encoded = self._state.model_dump_json().encode()
        if len(encoded) <= CARRY_READABLE_BYTES:
            return carried
        return carried.model_copy(update={"state": None, "packed_state": zlib.compress(encoded, 6)})

    def _emit_metrics(self) -> None:
        """Export counter increases as ``molecule_connect_<counter>`` metrics, per workspace.

        Uses the workflow metric meter, which the SDK silences during replay, so each increase is exported once
        (DESIGN.md §2; Temporal docs, "Metrics"). Served by the worker's ``--metrics-port``.
        """
        meter = workflow.metric_meter().with_additional_attributes({"workspace_id": self._target.workspace_id})
        for name, value in self._state.counters.model_dump().items():
            delta = value - self._emitted.get(name, value if name == "continued_as_new" else 0)
            if delta > 0:
                meter.create_counter(f"molecule_connect_{name}", f"Connector counter '{name}'.").add(delta)
            self._emitted[name] = value
        meter.create_gauge("molecule_connect_pending", "Fetched messages not yet settled.").set(
            len(self._state.pending)
        )

    def _may_poll(self) -> bool:
        state = self._state
        if self._v2 and (self._draining or self._stopping or state.dead_letters_full):
            return False
        return not state.paused and len(state.pending) < self._settings.max_pending

    def _lanes_must_stop(self) -> bool:
        """Lanes end at their next step: continue-as-new, or paused (unless draining)."""
        return self._stopping or (self._state.paused and not self._draining)

    def _publish_phase(self, phase: str | None = None) -> None:
        """Show the phase in the Web UI (current details) and in the ``ConnectorPhase`` search attribute.

        The attribute is only written when the workflow was started with ``WorkspaceId`` set, i.e. where the
        attributes are known to be registered: an unregistered one would fail every workflow task.
        """
        phase = phase or self._phase
        if phase == self._published_phase:
            return
        self._published_phase = phase
        workflow.set_current_details(f"phase: {phase}")
        if workflow.info().typed_search_attributes.get(SEARCH_ATTRIBUTE_WORKSPACE_ID) is not None:
            workflow.upsert_search_attributes(
                TypedSearchAttributes([SearchAttributePair(SEARCH_ATTRIBUTE_PHASE, phase)])
            )

    def _carried_bytes(self) -> int:
        """Approximate size of the queued message bodies continue-as-new would carry."""
        return sum(p.row.body_bytes for p in self._state.pending)

    def _over_rate_cap(self, message: PendingMessage) -> bool:
        """Whether this automatic reply exceeds its conversation's cap (PROTOCOL.md §7), recording it if not.

        Only messages marked as automatic replies count: humans and first messages are never capped. The window is
        kept in memory, so it restarts after continue-as-new (a cap, not an audit).
        """
        if message.row.auto_reply_depth < 1:
            return False
        now = workflow.now()
        recent = [t for t in self._auto_replies.get(message.lane, []) if now - t < timedelta(minutes=1)]
        if len(recent) >= self._settings.max_auto_replies_per_minute:
            self._auto_replies[message.lane] = recent
            return True
        self._auto_replies[message.lane] = [*recent, now]
        return False

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LENGTH_LIMIT

    def _raise_if_crashed(self) -> None:
        if self._crash is not None:
            # A bug in a lane: fail the workflow task so it is retried (and visible) instead of losing the lane.
            raise self._crash

    def _log(self, **extra: object) -> dict[str, object]:
        return {"workspace_id": self._target.workspace_id, **extra}

    @property
    def _phase(self) -> Phase:
        if self._gone is not None:
            return "gone"
        if self._blocked:
            return "blocked"
        if self._draining:
            return "draining"
        if self._state.paused:
            return "paused"
        if not self._registered:
            return "registering"
        if self._state.health.down:
            return "backend_down"
        if self._trouble is not None:
            return "degraded"
        return "connected"

    async def _wait_blocked(self, duty: str, reason: str) -> None:
        """Record a blocked duty (auth, misconfiguration) and wait ``blocked_retry_s`` before trying again."""
        if self._blocked.get(duty) != reason:
            workflow.logger.warning("%s blocked: %s", duty, reason, extra=self._log())
        self._blocked[duty] = reason
        self._state.last_error = reason
        self._publish_phase()
        await workflow.sleep(timedelta(seconds=self._settings.blocked_retry_s))
        self._publish_phase()

    async def _wait_gone(self, reason: str) -> None:
        if self._gone != reason:
            workflow.logger.error("workspace gone: %s", reason, extra=self._log())
        self._gone = reason
        self._state.last_error = reason
        self._publish_phase()
        await workflow.sleep(timedelta(seconds=self._settings.gone_retry_s))

    def _unblock(self, duty: str) -> None:
        if self._blocked.pop(duty, None) is not None:
            workflow.logger.info("%s recovered", duty, extra=self._log())
        self._gone = None
        self._publish_phase()

    # --- register / heartbeat ----------------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register until it succeeds: transient failures retry in the activity; auth/gone wait here."""
        while True:
            try:
                registered = await workflow.execute_activity_method(
                    PlatformActivities.register,
                    RegisterInput(target=self._target, last_beat_at=self._state.last_beat_at),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=PLATFORM_RETRY,
                )
            except ActivityError as err:
                kind, message = _failure(err)
                if kind == ErrorType.GONE:
                    await self._wait_gone(message)
                else:
                    await self._wait_blocked("register", message)
                continue
            self._registered = True
            self._unblock("register")
            self._warnings = [registered.warning] if registered.warning else []
            if registered.warning:
                workflow.logger.warning(registered.warning, extra=self._log())
            workflow.logger.info("registered", extra=self._log())
            return

    async def _heartbeat_duty(self) -> None:
        """Keep one long-running heartbeat activity going; pause it on auth/gone and restart it later."""
        settings = self._settings
        while not self._heartbeat_stopping:
            self._heartbeat = self._heartbeat.model_copy(update={"running": True})
            try:
                result = await workflow.execute_activity_method(
                    PlatformActivities.heartbeat,
                    HeartbeatInput(
                        target=self._target,
                        interval_s=settings.heartbeat_interval_s,
                        run_for_s=settings.heartbeat_run_for_s,
                    ),
                    start_to_close_timeout=timedelta(seconds=settings.heartbeat_run_for_s + 120),
                    heartbeat_timeout=timedelta(seconds=max(2 * settings.heartbeat_interval_s + 30, 60)),
                    retry_policy=PLATFORM_RETRY,
                )
            except ActivityError as err:
                self._heartbeat = self._heartbeat.model_copy(update={"running": False})
                if self._heartbeat_stopping:
                    # Cancelling the task cancels the activity, which then fails with an ActivityError rather than
                    # raising CancelledError here: without this the duty would wait "blocked" and start a new one,
                    # and ``run`` would wait for it forever.
                    return
                kind, message = _failure(err)
                if kind == ErrorType.GONE:
                    await self._wait_gone(message)
                else:
                    await self._wait_blocked("heartbeat", message)
                continue
            self._unblock("heartbeat")
            self._heartbeat = HeartbeatHealth(
                running=True,
                last_result_at=workflow.now(),
                beats=self._heartbeat.beats + result.beats,
                failures=self._heartbeat.failures + result.failures,
            )
            if result.failures:
                self._count_heartbeat_failures(result.failures)

    # --- session: heartbeats and the inbox --------------------------------------------------------------------

    async def _session_duty(self) -> None:
        """Keep one ``session`` activity running: it heartbeats the platform and, when allowed, polls the inbox.

        A session is replaced when what it was started with no longer holds: a control change (epoch), polling
        allowed or not (pause, backpressure, drain), or the error-rate band the platform heartbeat reports.
        """
        while not self._heartbeat_stopping:
            polling = self._may_poll()
            epoch = self._epoch
            band = self._error_band()
            handle = workflow.start_activity_method(
                PlatformActivities.session,
                self._session_input(polling),
                start_to_close_timeout=timedelta(seconds=self._settings.poll_max_wait_s + 120),
                heartbeat_timeout=timedelta(seconds=self._failover_timeout_s()),
                retry_policy=PLATFORM_RETRY,
            )
            self._heartbeat = self._heartbeat.model_copy(update={"running": True})
            await workflow.wait_condition(
                lambda h=handle, e=epoch, p=polling, b=band: (
                    h.done()  # type: ignore[misc]
                    or self._heartbeat_stopping
                    or self._epoch != e
                    or p != self._may_poll()
                    or b != self._error_band()
                )
            )
            replaced = not handle.done()
            if replaced:
                handle.cancel()
            try:
                result = await handle
            except (ActivityError, asyncio.CancelledError) as err:
                if replaced or self._heartbeat_stopping:
                    continue
                if isinstance(err, asyncio.CancelledError):
                    raise
                self._heartbeat = self._heartbeat.model_copy(update={"running": False})
                kind, message = _failure(err)
                if kind == ErrorType.GONE:
                    await self._wait_gone(message)
                else:
                    await self._wait_blocked("session", message)
                continue
            await self._take_session(result, fresh=self._epoch == epoch and not self._heartbeat_stopping)

    def _session_input(self, polling: bool) -> SessionInput:
        settings = self._settings
        return SessionInput(
            target=self._target,
            poll=self._poll_input() if polling else None,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            last_beat_at=self._state.last_beat_at,
            run_for_s=settings.poll_max_wait_s,
            report=AgentReport(error_rate=self._state.health.error_rate, started_at=self._state.started_at),
            in_trouble=self._trouble is not None,
        )

    def _failover_timeout_s(self) -> float:
        """The session's heartbeat timeout (``ConnectSettings.failover_timeout_s``, default 1.2 × the interval)."""
        settings = self._settings
        return settings.failover_timeout_s or 1.2 * settings.heartbeat_interval_s

    def _error_band(self) -> int:
        """The platform's bands of ``error_rate`` (docs/protocol.md §3.2): below 0.1, below 0.5, at or above."""
        rate = self._state.health.error_rate
        return 0 if rate < 0.1 else 1 if rate < 0.5 else 2

    async def _take_session(self, result: SessionResult, *, fresh: bool) -> None:
        """Record what a session reports; ingest its rows unless a control change made them stale."""
        if result.last_beat_at is not None:
            self._state.last_beat_at = result.last_beat_at
        self._heartbeat = HeartbeatHealth(
            running=True,
            last_result_at=workflow.now(),
            beats=self._heartbeat.beats + result.beats,
            failures=self._heartbeat.failures + result.beat_failures,
        )
        if result.beat_failures:
            self._count_heartbeat_failures(result.beat_failures)
        self._unblock("session")
        if result.trouble is not None and self._trouble is None:
            trouble = result.trouble
            self._trouble = trouble
            self._state.last_error = f"{trouble.operation}: {trouble.error}"
            workflow.logger.warning(
                "platform trouble for %s: %s (since %s, %d attempts; still retrying)",
                trouble.operation,
                trouble.error,
                trouble.since.isoformat(),
                trouble.attempts,
                extra=self._log(),
            )
            self._publish_phase()
        elif result.recovered and self._trouble is not None:
            workflow.logger.info("platform answers again (%s recovered)", self._trouble.operation, extra=self._log())
            self._trouble = None
            self._publish_phase()
        if result.poll is not None and fresh:
            await self._ingest(result.poll)

    def _count_heartbeat_failures(self, failures: int) -> None:
        workflow.metric_meter().create_counter(
            "molecule_connect_heartbeat_failures", "Platform heartbeats that failed transiently."
        ).with_additional_attributes({"workspace_id": self._target.workspace_id}).add(failures)

    # --- poll ------------------------------------------------------------------------------------------------

    async def _poll(self) -> PollResult | None:
        """One long poll; ``None`` when it failed (after waiting out auth/gone) or a control change cancelled it."""
        settings = self._settings
        epoch = self._epoch
        handle = workflow.start_activity_method(
            PlatformActivities.poll,
            self._poll_input(),
            start_to_close_timeout=timedelta(seconds=settings.poll_max_wait_s + 120),
            heartbeat_timeout=timedelta(seconds=30 + settings.poll_interval_s),
            retry_policy=PLATFORM_RETRY,
        )
        # A crashed lane ends the long poll too, so the crash fails the workflow task now, not when rows arrive.
        await workflow.wait_condition(
            lambda: handle.done() or self._epoch != epoch or self._draining or self._crash is not None
        )
        if not handle.done():
            handle.cancel()
        try:
            result = await handle
        except ActivityError as err:
            if self._epoch != epoch or self._draining or self._crash is not None:
                return None
            kind, message = _failure(err)
            if kind == ErrorType.GONE:
                await self._wait_gone(message)
            else:
                await self._wait_blocked("poll", message)
            return None
        except asyncio.CancelledError:
            return None
        if self._epoch != epoch or self._draining:
            return None  # fetched under an old cursor or setting: drop it, the next poll re-reads
        self._unblock("poll")
        return result

    def _poll_input(self) -> PollInput:
        settings, state = self._settings, self._state
        return PollInput(
            target=self._target,
            cursor=state.fetch_cursor,
            seeded=state.seeded,
            start_from="latest" if state.reseed else settings.start_from,
            backlog_limit=settings.backlog_limit,
            limit=settings.poll_limit,
            poll_interval_s=settings.poll_interval_s,
            max_wait_s=settings.poll_max_wait_s,
            not_before=state.not_before,
            ignore_row_ids=list(state.unusable_row_ids) if self._v2 else [],
        )

    async def _ingest(self, result: PollResult) -> None:
        for row, reason in self._state.ingest(result):
            message = PendingMessage(row=row, lane=lane_of(row))
            await self._dead_letter(message, reason, stage="parse", attempts=0, in_lane=False)
        if result.cursor_reset:
            workflow.logger.warning("cursor was pruned (410); recovered", extra=self._log(rows=len(result.rows)))
        self._emit_metrics()
        self._start_lanes()

    # --- lanes -----------------------------------------------------------------------------------------------

    def _start_lanes(self) -> None:
        """Start a task for each lane with work, in order of its oldest message, up to ``max_concurrency``.

        While the backend is down the lanes only wait, so the probe's lane is started even past the cap.
        """
        if self._stopping or (self._state.paused and not self._draining):
            return
        lanes = self._state.lane_queues()
        for lane in lanes:
            if len(self._running_lanes) >= self._settings.max_concurrency:
                break
            self._start_lane(lane)
        probe = self._probe_row(lanes)
        if probe is not None:
            self._start_lane(next(lane for lane, queue in lanes.items() if queue[0].row.row_id == probe))

    def _start_lane(self, lane: str) -> None:
        if lane not in self._running_lanes:
            self._running_lanes.add(lane)
            self._lane_tasks[lane] = asyncio.create_task(self._run_lane(lane))

    def _probe_row(self, lanes: dict[str, deque[PendingMessage]] | None = None) -> str | None:
        """The row to probe a down backend with: the oldest lane head that has not failed, else the oldest one."""
        health = self._state.health
        if not health.down:
            return None
        lanes = self._state.lane_queues() if lanes is None else lanes
        return health.choose_probe([queue[0].row.row_id for queue in lanes.values()])

    async def _run_lane(self, lane: str) -> None:
        ended = False
        try:
            while not self._lanes_must_stop():
                message = self._state.next_in_lane(lane)
                if message is None:
                    break
                with message_trace(self._target.workspace_id, message.row.row_id):
                    await self._deliver(message)
            ended = True
        except _LaneStopped:
            ended = False  # the message stays queued; the lane starts again when allowed
        except Exception as err:  # noqa: BLE001 - surfaced by the main loop, see _raise_if_crashed
            self._crash = err
        finally:
            self._running_lanes.discard(lane)
            self._lane_tasks.pop(lane, None)
            # Not when cancelled (eviction from the worker's cache, workflow cancellation): a lane task started
            # then would outlive the instance ("no running event loop" once it is garbage-collected).
            if ended:
                self._start_lanes()

    async def _deliver(self, message: PendingMessage) -> None:
        """Dispatch one message and send its reply; settle it either way (replied, skipped or dead-lettered)."""
        row = message.row
        if self._v2:
            if await self._stop_ping_pong(message):
                return
        else:
            if row.auto_reply_depth > self._settings.max_auto_reply_depth:
                workflow.logger.info(
                    "auto-reply depth %d over limit; not dispatched",
                    row.auto_reply_depth,
                    extra=self._log(row_id=row.row_id),
                )
                self._state.record_skip(row.row_id)
                return
            if workflow.patched(PATCH_AUTO_REPLY_RATE_CAP) and self._over_rate_cap(message):
                workflow.logger.warning(
                    "conversation over %d automatic replies per minute; not dispatched",
                    self._settings.max_auto_replies_per_minute,
                    extra=self._log(row_id=row.row_id, lane=message.lane),
                )
                self._state.record_skip(row.row_id)
                return
        parts = message.reply_parts
        attempted_at: datetime | None = None
        if parts is None:
            # One activity per message: dispatch sends the reply itself, and hands it back only when that failed.
            result = await self._dispatch(message, send_reply=workflow.patched(PATCH_REPLY_WITH_DISPATCH))
            if result is None:
                return
            if result.reply is not None:
                self._record_reply(message)
                return
            if result.reply_error is not None:
                workflow.logger.warning(
                    "reply with the dispatch failed (%s); sending it on its own",
                    result.reply_error,
                    extra=self._log(row_id=row.row_id),
                )
            parts = list(result.parts)
            attempted_at = result.reply_attempted_at
        await self._send_reply(message, parts, attempted_at=attempted_at)

    async def _stop_ping_pong(self, message: PendingMessage) -> bool:
        """Settle, without dispatch, a message past its conversation's automatic exchanges (docs/protocol.md §7).

        The sender is told once per streak. Returns whether the message was settled here.
        """
        row, limit = message.row, self._settings.max_auto_reply_depth
        exchange = self._state.count_auto_exchange(message, workflow.now())
        if exchange.count <= limit and row.auto_reply_depth <= limit:
            return False
        self._state.record_skip(row.row_id)
        self._settled("skipped", message, reason=f"automatic exchange {max(exchange.count, row.auto_reply_depth)}")
        if not exchange.notified:
            self._state.auto_exchanges[message.lane] = exchange.model_copy(update={"notified": True})
            text = (
                f"Automatic replies stopped: this conversation had more than {limit} automatic exchanges in a row. "
                "A person must write to continue."
            )
            await self._best_effort_reply(row, text)
        return True

    async def _dispatch(self, message: PendingMessage, *, send_reply: bool) -> DispatchResult | None:
        """Run the backend with retries (and send the reply when ``send_reply``); ``None`` once dead-lettered.

        Each attempt is one activity attempt and the workflow retries (backoff 1, 2, 4 ... 60 s), so every failure
        is seen at once, across conversations, by the backend's health (``workflows.outage``): a message failing
        while others succeed is dead-lettered after ``max_attempts``; failures of several messages in a row mean
        the backend is down, and messages are held and probed instead. (Runs started before ``PATCH_SESSION``
        leave retries to Temporal's retry policy and dead-letter after them.)
        """
        settings, row = self._settings, message.row
        local = self._dispatch_locally()
        attempt = 0
        first_attempt_at: datetime | None = None  # later attempts look for a canvas reply an earlier one sent
        while True:
            probe = await self._wait_for_backend(message) if self._v2 else False
            attempt += 1
            self._in_flight[row.row_id] = InFlight(
                row_id=row.row_id, lane=message.lane, stage="dispatch", since=workflow.now()
            )
            dispatch_input = DispatchInput(
                target=self._target,
                backend=self._input.backend,
                row=row,
                lane=message.lane,
                send_reply=send_reply,
                attempt=attempt if self._v2 else 0,
                first_attempt_at=first_attempt_at,
            )
            if first_attempt_at is None and self._v2:
                first_attempt_at = workflow.now()
            retry_policy = RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=1 if self._v2 else settings.max_attempts,
            )
            try:
                if local:
                    result = await workflow.execute_local_activity_method(
                        DispatchActivities.dispatch,
                        dispatch_input,
                        start_to_close_timeout=timedelta(seconds=settings.local_dispatch_timeout_s),
                        retry_policy=retry_policy,
                    )
                else:
                    result = await workflow.execute_activity_method(
                        DispatchActivities.dispatch,
                        dispatch_input,
                        start_to_close_timeout=timedelta(seconds=settings.dispatch_timeout_s),
                        heartbeat_timeout=timedelta(seconds=settings.dispatch_heartbeat_timeout_s),
                        retry_policy=retry_policy,
                    )
            except LOCAL_ACTIVITY_FAILURES as err:
                kind, error = _failure(err)
                if kind in (ErrorType.BACKEND_MISCONFIGURED, ErrorType.AUTH, ErrorType.TOKEN_MISSING):
                    attempt -= 1  # not the message's fault
                    if kind == ErrorType.TOKEN_MISSING and local:
                        local = False  # a local activity cannot move: hand it to a worker holding the token
                        continue
                    # The backend cannot run, or our token was refused (or no worker holds it) while re-reading a
                    # body or replying: the duty waits ``blocked`` and heals by itself; the message is not the problem.
                    await self._wait_blocked(
                        "backend" if kind == ErrorType.BACKEND_MISCONFIGURED else "dispatch", error
                    )
                    continue
                permanent = kind == ErrorType.BACKEND_FAILED and not _retries_exhausted(err)
                if not self._v2 or permanent:
                    attempts = settings.max_attempts if _retries_exhausted(err) and not self._v2 else attempt
                    await self._dead_letter(message, error, stage="dispatch", attempts=attempts, kind=kind)
                    return None
                verdict = self._state.health.failed(
                    row.row_id, error, workflow.now(), attempt=attempt, max_attempts=settings.max_attempts
                )
                if verdict == "dead_letter":
                    await self._dead_letter(message, error, stage="dispatch", attempts=attempt, kind=kind)
                    return None
                if verdict == "hold":
                    self._on_outage(message, error, probe=probe)
                    attempt = 0  # its attempts start again once the backend is back
                    continue
                workflow.logger.info(
                    "dispatch attempt %d failed, retrying: %s", attempt, error, extra=self._log(row_id=row.row_id)
                )
                await self._backoff(attempt)
                continue
            finally:
                self._in_flight.pop(row.row_id, None)
            if self._v2 and self._state.health.succeeded(workflow.now()):
                workflow.logger.info("backend answers again; delivery resumes", extra=self._log(row_id=row.row_id))
                self._publish_phase()
                self._start_lanes()
            self._unblock("backend")
            self._unblock("dispatch")
            if result.reply is not None:
                self._unblock("reply")
            return result

    async def _backoff(self, attempt: int) -> None:
        """Wait before a dispatch retry (1, 2, 4 ... 60 s), or until the backend is found down or the lane must stop."""
        delay = timedelta(seconds=min(60.0, 2.0 ** (attempt - 1)))
        try:
            await workflow.wait_condition(lambda: self._state.health.down or self._lanes_must_stop(), timeout=delay)
        except asyncio.TimeoutError:  # noqa: UP041 - ``TimeoutError`` here is temporalio's
            pass
        if self._lanes_must_stop():
            raise _LaneStopped

    def _on_outage(self, message: PendingMessage, error: str, *, probe: bool) -> None:
        outage = self._state.health.outage
        assert outage is not None
        wait = (outage.next_probe_at - workflow.now()).total_seconds()
        if probe:
            workflow.logger.warning(
                "backend still down (%s); next probe in %.0f s", error, wait, extra=self._log(row_id=message.row.row_id)
            )
        else:
            workflow.logger.warning(
                "backend down: %s; holding %d message(s), no error replies; probing in %.0f s",
                error,
                len(outage.held),
                wait,
                extra=self._log(row_id=message.row.row_id, lane=message.lane),
            )
        self._state.last_error = f"backend down: {error}"
        self._publish_phase()
        self._start_lanes()  # the probe's lane may not be running yet

    async def _wait_for_backend(self, message: PendingMessage) -> bool:
        """Wait while the backend is down until this message is the probe and the probe is due.

        Returns:
            ``True`` when this dispatch is a probe (one attempt), ``False`` when the backend is up.

        Raises:
            _LaneStopped: The lane must stop meanwhile (pause, continue-as-new).
        """
        health, row_id = self._state.health, message.row.row_id
        if not health.down:
            return False
        self._waiting.append(row_id)
        try:
            while True:
                await workflow.wait_condition(
                    lambda: not health.down or self._lanes_must_stop() or health.choose_probe(self._waiting) == row_id
                )
                if self._lanes_must_stop():
                    raise _LaneStopped
                if not health.down:
                    return False
                due = health.probe_due_in(workflow.now())
                if due <= timedelta(0):
                    return True
                try:
                    await workflow.wait_condition(
                        lambda: (
                            not health.down or self._lanes_must_stop() or health.choose_probe(self._waiting) != row_id
                        ),
                        timeout=due,
                    )
                except asyncio.TimeoutError:  # noqa: UP041 - ``TimeoutError`` here is temporalio's
                    pass
        finally:
            self._waiting.remove(row_id)

    def _dispatch_locally(self) -> bool:
        """Whether ``dispatch`` runs as a local activity (``ConnectSettings.dispatch_as``)."""
        mode = self._settings.dispatch_as
        if mode == "auto":
            mode = "local" if self._input.backend.name in LOCAL_DISPATCH_BACKENDS else "activity"
        return mode == "local" and workflow.patched(PATCH_LOCAL_DISPATCH)

    async def _send_reply(
        self, message: PendingMessage, parts: list[ReplyPart], *, attempted_at: datetime | None = None
    ) -> None:
        row = message.row
        while True:
            self._in_flight[row.row_id] = InFlight(
                row_id=row.row_id, lane=message.lane, stage="reply", since=workflow.now()
            )
            try:
                await workflow.execute_activity_method(
                    PlatformActivities.reply,
                    ReplyInput(target=self._target, row=row, parts=parts, attempted_at=attempted_at),
                    start_to_close_timeout=timedelta(seconds=60),
                    schedule_to_close_timeout=timedelta(seconds=self._settings.reply_timeout_s),
                    retry_policy=PLATFORM_RETRY,
                )
            except ActivityError as err:
                kind, error = _failure(err)
                if kind in (ErrorType.AUTH, ErrorType.TOKEN_MISSING):
                    await self._wait_blocked("reply", error)
                    continue
                await self._dead_letter(message, error, stage="reply", attempts=1, reply_parts=parts, kind=kind)
                return
            finally:
                self._in_flight.pop(row.row_id, None)
            self._unblock("reply")
            self._record_reply(message)
            return

    def _record_reply(self, message: PendingMessage) -> None:
        """Settle a replied row and export its delivery latency."""
        row = message.row
        now = workflow.now()
        self._state.record_reply(row.row_id, now)
        if self._v2:
            self._state.note_reply(message.lane, now)
        latency = max(now - row.created_at, timedelta(0)) if row.created_at is not None else None
        if latency is not None:
            workflow.metric_meter().create_histogram_timedelta(
                "molecule_connect_delivery_latency",
                "Inbox row created_at to reply accepted by the platform.",
                "ms",
            ).with_additional_attributes({"workspace_id": self._target.workspace_id}).record(latency)
        self._settled("replied", message, latency=latency)
        self._emit_metrics()

    def _settled(self, outcome: str, message: PendingMessage, **details: object) -> None:
        """One INFO line per settled message: outcome, row id, lane and what else is known (docs/guarantees.md)."""
        latency = details.pop("latency", None)
        if isinstance(latency, timedelta):
            details["latency_ms"] = int(latency.total_seconds() * 1000)
        text = " ".join(f"{key}={value}" for key, value in details.items())
        workflow.logger.info(
            "%s row %s lane %s%s",
            outcome,
            message.row.row_id,
            message.lane,
            f" {text}" if text else "",
            extra=self._log(row_id=message.row.row_id, lane=message.lane, outcome=outcome, **details),
        )

    async def _dead_letter(
        self,
        message: PendingMessage,
        error: str,
        *,
        stage: str,
        attempts: int,
        reply_parts: list[ReplyPart] | None = None,
        kind: str | None = None,
        in_lane: bool = True,
    ) -> None:
        """Set a message aside (settling its row), then tell the sender when configured (docs/protocol.md §8).

        Nothing is evicted: when the dead-letter queue is full, a lane waits ``blocked`` until an operator redrives
        or discards letters (rows dead-lettered while reading the inbox still go in: polling stops when full).
        """
        if self._v2 and in_lane and self._state.dead_letters_full:
            await self._wait_for_room()
        now = workflow.now()
        row = message.row
        self._state.dead_letter(
            DeadLetter(
                **DeadLetter.of_row(row),
                lane=message.lane,
                error=error,
                stage=stage,  # type: ignore[arg-type]
                attempts=attempts,
                first_failed_at=now,
                dead_lettered_at=now,
                reply_parts=reply_parts,
            )
        )
        self._emit_metrics()
        self._settled("dead-lettered", message, stage=stage, attempts=attempts, error=error)
        if stage == "reply" or not self._settings.error_reply:
            return
        text = (
            self._settings.error_reply_template.replace("{row_id}", row.row_id).replace(
                "{error}", self._error_kind(stage, kind)
            )
            if self._v2
            else self._settings.error_reply_template.replace("{error}", error)
        )
        await self._best_effort_reply(row, text)

    async def _wait_for_room(self) -> None:
        """Wait ``blocked`` until the dead-letter queue has room (or the lane must stop)."""
        reason = (
            f"dead-letter queue full ({len(self._state.dead_letters)}): redrive or discard some with "
            f"`molecule-connect dead-letters {self._target.workspace_id}`"
        )
        if self._blocked.get("dead letters") != reason:
            workflow.logger.error(reason, extra=self._log())
        self._blocked["dead letters"] = reason
        self._publish_phase()
        await workflow.wait_condition(lambda: not self._state.dead_letters_full or self._lanes_must_stop())
        self._unblock("dead letters")
        if self._lanes_must_stop():
            raise _LaneStopped

    @staticmethod
    def _error_kind(stage: str, kind: str | None) -> str:
        """What an error reply tells the sender about a failure: its kind only, never the details."""
        if stage == "dispatch":
            return "the agent timed out" if kind == "Timeout" else "the agent failed"
        return ERROR_KINDS.get(stage, "the message could not be processed")

    async def _best_effort_reply(self, row: PolledRow, text: str) -> None:
        """Send an error or notice reply; a sender we cannot reach for a while is not worth blocking a lane for."""
        try:
            await workflow.execute_activity_method(
                PlatformActivities.reply,
                ReplyInput(target=self._target, row=row, parts=[TextPart(text=text)], is_error=True),
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=ERROR_REPLY_TIMEOUT,
                retry_policy=PLATFORM_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("error reply failed: %s", _failure(err)[1], extra=self._log(row_id=row.row_id))

    # --- control plane ---------------------------------------------------------------------------------------

    def _control_changed(self) -> None:
        self._epoch += 1
        self._publish_phase()

    @workflow.update
    async def pause(self) -> StatusResult:
        """Stop polling and starting dispatches; return once in-flight ones settle.

        An update, so the caller learns when the pause holds. Survives continue-as-new.
        """
        if not self._state.paused:
            self._state.paused = True
            workflow.logger.info("paused", extra=self._log())
            self._control_changed()
        await workflow.wait_condition(lambda: not self._running_lanes)
        return self.status()

    @workflow.update
    def resume(self) -> StatusResult:
        """Resume polling and dispatching after ``pause``."""
        if self._state.paused:
            self._state.paused = False
            workflow.logger.info("resumed", extra=self._log())
            self._control_changed()
            self._start_lanes()
        return self.status()

    @workflow.update
    def drain(self) -> StatusResult:
        """Stop polling, deliver every message already fetched, then complete the workflow (result: its cursor).

        Returns at once with phase ``draining``; wait for the workflow result to know it finished.
        """
        if not self._draining:
            self._draining = True
            workflow.logger.info("draining", extra=self._log(pending=len(self._state.pending)))
            self._control_changed()
            self._start_lanes()
        return self.status()

    @workflow.update
    async def set_cursor(self, input: SetCursorInput) -> StatusResult:
        """Continue polling after another row (or ``latest``); cancels the in-flight poll so no stale result lands.

        The row is first checked against the platform (``check_cursor``): a row the inbox does not hold is refused
        with a clear message, instead of a 410 and a recovery later. Rows older than the last settled one are never
        delivered again, even after a 410 on the new cursor.
        """
        if input.row_id != "latest" and self._v2:
            try:
                await workflow.execute_activity_method(
                    PlatformActivities.check_cursor,
                    CheckCursorInput(target=self._target, row_id=input.row_id),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=list(NOT_RETRYABLE)),
                )
            except ActivityError as err:
                raise ApplicationError(_failure(err)[1], non_retryable=True) from None
        pointer = None if input.row_id == "latest" else RowPointer(row_id=input.row_id)
        self._state.set_cursor(pointer)
        workflow.logger.info("cursor set to %s", input.row_id, extra=self._log())
        self._control_changed()
        return self.status()

    @set_cursor.validator
    def validate_set_cursor(self, input: SetCursorInput) -> None:
        """Reject anything but ``latest`` or a UUID (a non-UUID cursor makes the platform answer 500, §3.3)."""
        if input.row_id != "latest":
            try:
                uuid.UUID(input.row_id)
            except ValueError:
                raise ValueError(f"cursor must be a row id (UUID) or 'latest', not {input.row_id!r}") from None

    @workflow.update
    def redrive(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Put dead letters back at the end of their lanes; each is delivered once more.

        A letter that failed at the reply stage only resends its stored reply, without running the backend again.
        """
        letters = self._state.take_dead_letters(input.row_id)
        self._state.redrive(letters)
        workflow.logger.info("redrive %d dead letter(s)", len(letters), extra=self._log())
        self._start_lanes()
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row_id for d in letters])

    @redrive.validator
    def validate_redrive(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._validate_selection(input)

    @workflow.update
    def discard(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Forget dead letters (their rows stay settled)."""
        letters = self._state.take_dead_letters(input.row_id)
        workflow.logger.info("discarded %d dead letter(s)", len(letters), extra=self._log())
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row_id for d in letters])

    @discard.validator
    def validate_discard(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._validate_selection(input)

    def _validate_selection(self, input: DeadLetterSelection) -> None:
        if input.row_id is not None and all(d.row_id != input.row_id for d in self._state.dead_letters):
            raise ValueError(f"no dead letter with row id {input.row_id}")

    @workflow.update
    def configure(self, input: ConfigureInput) -> StatusResult:
        """Change settings (poll interval, concurrency, max attempts, ...); kept through continue-as-new."""
        self._settings = self._merged_settings(input)
        workflow.logger.info("configured %s", sorted(input.changes), extra=self._log())
        self._control_changed()
        self._start_lanes()
        return self.status()

    @configure.validator
    def validate_configure(self, input: ConfigureInput) -> None:
        """Reject unknown settings and bad values with the first problem, before anything reaches history."""
        self._merged_settings(input)

    def _merged_settings(self, input: ConfigureInput) -> ConnectSettings:
        if not input.changes:
            raise ValueError("nothing to configure: give at least one KEY=VALUE")
        unknown = sorted(set(input.changes) - set(ConnectSettings.model_fields))
        if unknown:
            known = ", ".join(ConnectSettings.model_fields)
            raise ValueError(f"unknown setting {unknown[0]!r} (known: {known})")
        try:
            return ConnectSettings.model_validate({**self._settings.model_dump(), **input.changes})
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    @workflow.signal(name="pause")
    async def pause_signal(self) -> None:
        """Signal twin of ``pause`` (returns nothing)."""
        if not self._state.paused:
            self._state.paused = True
            self._control_changed()

    @workflow.signal(name="resume")
    def resume_signal(self) -> None:
        """Signal twin of ``resume``."""
        self.resume()

    @workflow.signal(name="drain")
    def drain_signal(self) -> None:
        """Signal twin of ``drain``."""
        self.drain()

    # --- queries ---------------------------------------------------------------------------------------------

    @workflow.query
    def status(self) -> StatusResult:
        """Phase, cursors, lanes, in-flight messages, dead letters and counters. A query: read-only, no history."""
        state = self._state
        reasons = [
            f"{duty}: {reason}" if not reason.startswith(duty) else reason for duty, reason in self._blocked.items()
        ]
        if self._gone:
            reasons.insert(0, f"workspace gone: {self._gone}")
        return StatusResult(
            workspace_id=self._target.workspace_id,
            platform_url=self._target.platform_url,
            backend=self._input.backend.name,
            phase=self._phase,
            blocked_reason="; ".join(reasons) or None,
            seeded=state.seeded,
            commit_cursor=state.commit_cursor,
            fetch_cursor=state.fetch_cursor,
            pending=len(state.pending),
            lanes={lane: len(queue) for lane, queue in state.lane_queues().items()},
            in_flight=list(self._in_flight.values()),
            dead_letters=[_summary(d) for d in state.dead_letters[-STATUS_DEAD_LETTERS:]],
            dead_letters_total=len(state.dead_letters),
            dead_letters_evicted=state.dead_letters_evicted,
            counters=state.counters.model_dump(),
            heartbeat=self._heartbeat,
            last_delivery_at=state.last_delivery_at,
            last_error=state.last_error,
            trouble=self._trouble,
            outage=state.health.outage,
            warnings=list(self._warnings),
            settings=self._settings,
        )

    @workflow.query
    def dead_letters(self, page: DeadLetterPage) -> DeadLetterList:
        """A page of the dead letters, oldest first (``status`` shows only the newest). A query: read-only."""
        letters = self._state.dead_letters
        chosen = letters[page.offset : page.offset + page.limit]
        return DeadLetterList(total=len(letters), letters=[_summary(d) for d in chosen])


def _summary(letter: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(
        row_id=letter.row_id,
        message_id=letter.message_id,
        lane=letter.lane,
        source_id=letter.source_id,
        stage=letter.stage,
        error=letter.error,
        attempts=letter.attempts,
        first_failed_at=letter.first_failed_at,
        dead_lettered_at=letter.dead_lettered_at,
    )


__all__ = ["ConnectWorkflow", "ConnectState", "PolledRow"]
