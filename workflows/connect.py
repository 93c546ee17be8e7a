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
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.a2a import TextPart
    from activities.dispatch import DispatchActivities
    from activities.errors import ErrorType
    from activities.messages import (
        DispatchInput,
        DispatchResult,
        HeartbeatInput,
        PlatformTarget,
        PolledRow,
        PollInput,
        PollResult,
        RegisterInput,
        ReplyInput,
        ReplyPart,
        RowPointer,
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
"""``workflow.patched`` ids: workflows started before these changes replay on the old path."""

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

    # --- main loop ----------------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ConnectInput) -> ConnectResult:
        """Serve the workspace until continue-as-new (the workflow never completes on its own).

        Args:
            input: Workspace, platform URL, backend and settings; ``state`` when continued as new.

        Returns:
            Never in normal operation: the workflow continues as new with its state.
        """
        workflow.logger.info("connector starting", extra=self._log())
        self._publish_phase()
        await self._register()
        heartbeat = asyncio.create_task(self._heartbeat_duty())
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
        heartbeat.cancel()
        try:
            await heartbeat
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
        workflow.continue_as_new(self._input.model_copy(update={"state": self._state, "settings": self._settings}))

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
        return not self._state.paused and len(self._state.pending) < self._settings.max_pending

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
                await workflow.execute_activity_method(
                    PlatformActivities.register,
                    RegisterInput(target=self._target),
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
                workflow.metric_meter().create_counter(
                    "molecule_connect_heartbeat_failures", "Platform heartbeats that failed transiently."
                ).with_additional_attributes({"workspace_id": self._target.workspace_id}).add(result.failures)

    # --- poll ------------------------------------------------------------------------------------------------

    async def _poll(self) -> PollResult | None:
        """One long poll; ``None`` when it failed (after waiting out auth/gone) or a control change cancelled it."""
        settings, state = self._settings, self._state
        epoch = self._epoch
        handle = workflow.start_activity_method(
            PlatformActivities.poll,
            PollInput(
                target=self._target,
                cursor=state.fetch_cursor,
                seeded=state.seeded,
                start_from="latest" if state.reseed else settings.start_from,
                backlog_limit=settings.backlog_limit,
                limit=settings.poll_limit,
                poll_interval_s=settings.poll_interval_s,
                max_wait_s=settings.poll_max_wait_s,
                not_before=state.not_before,
            ),
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

    async def _ingest(self, result: PollResult) -> None:
        for row, reason in self._state.ingest(result):
            await self._dead_letter(PendingMessage(row=row, lane=lane_of(row)), reason, stage="parse", attempts=0)
        if result.cursor_reset:
            workflow.logger.warning("cursor was pruned (410); recovered", extra=self._log(rows=len(result.rows)))
        self._emit_metrics()
        self._start_lanes()

    # --- lanes -----------------------------------------------------------------------------------------------

    def _start_lanes(self) -> None:
        """Start a task for each lane with work, in order of its oldest message, up to ``max_concurrency``."""
        if self._stopping or (self._state.paused and not self._draining):
            return
        for lane in self._state.lane_queues():
            if len(self._running_lanes) >= self._settings.max_concurrency:
                return
            if lane not in self._running_lanes:
                self._running_lanes.add(lane)
                self._lane_tasks[lane] = asyncio.create_task(self._run_lane(lane))

    async def _run_lane(self, lane: str) -> None:
        ended = False
        try:
            while not self._stopping and (self._draining or not self._state.paused):
                message = self._state.next_in_lane(lane)
                if message is None:
                    break
                with message_trace(self._target.workspace_id, message.row.row_id):
                    await self._deliver(message)
            ended = True
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
        if parts is None:
            # One activity per message: dispatch sends the reply itself, and hands it back only when that failed.
            result = await self._dispatch(message, send_reply=workflow.patched(PATCH_REPLY_WITH_DISPATCH))
            if result is None:
                return
            if result.reply is not None:
                self._record_reply(row)
                return
            if result.reply_error is not None:
                workflow.logger.warning(
                    "reply with the dispatch failed (%s); sending it on its own",
                    result.reply_error,
                    extra=self._log(row_id=row.row_id),
                )
            parts = list(result.parts)
        await self._send_reply(message, parts)

    async def _dispatch(self, message: PendingMessage, *, send_reply: bool) -> DispatchResult | None:
        """Run the backend with retries (and send the reply when ``send_reply``); ``None`` once dead-lettered."""
        settings, row = self._settings, message.row
        while True:
            self._in_flight[row.row_id] = InFlight(
                row_id=row.row_id, lane=message.lane, stage="dispatch", since=workflow.now()
            )
            dispatch_input = DispatchInput(
                target=self._target, backend=self._input.backend, row=row, lane=message.lane, send_reply=send_reply
            )
            retry_policy = RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=settings.max_attempts,
            )
            try:
                if self._dispatch_locally():
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
                if kind == ErrorType.BACKEND_MISCONFIGURED:
                    await self._wait_blocked("backend", error)
                    continue
                if kind == ErrorType.AUTH:
                    # Our token was refused while re-reading a body passed by reference: like any auth failure, the
                    # duty waits ``blocked`` and heals with the token; the message is not the problem.
                    await self._wait_blocked("dispatch", error)
                    continue
                attempts = settings.max_attempts if _retries_exhausted(err) else 1
                await self._dead_letter(message, error, stage="dispatch", attempts=attempts)
                return None
            finally:
                self._in_flight.pop(row.row_id, None)
            self._unblock("backend")
            self._unblock("dispatch")
            if result.reply is not None:
                self._unblock("reply")
            return result

    def _dispatch_locally(self) -> bool:
        """Whether ``dispatch`` runs as a local activity (``ConnectSettings.dispatch_as``)."""
        mode = self._settings.dispatch_as
        if mode == "auto":
            mode = "local" if self._input.backend.name in LOCAL_DISPATCH_BACKENDS else "activity"
        return mode == "local" and workflow.patched(PATCH_LOCAL_DISPATCH)

    async def _send_reply(self, message: PendingMessage, parts: list[ReplyPart]) -> None:
        row = message.row
        while True:
            self._in_flight[row.row_id] = InFlight(
                row_id=row.row_id, lane=message.lane, stage="reply", since=workflow.now()
            )
            try:
                await workflow.execute_activity_method(
                    PlatformActivities.reply,
                    ReplyInput(target=self._target, row=row, parts=parts),
                    start_to_close_timeout=timedelta(seconds=60),
                    schedule_to_close_timeout=timedelta(seconds=self._settings.reply_timeout_s),
                    retry_policy=PLATFORM_RETRY,
                )
            except ActivityError as err:
                kind, error = _failure(err)
                if kind == ErrorType.AUTH:
                    await self._wait_blocked("reply", error)
                    continue
                await self._dead_letter(message, error, stage="reply", attempts=1, reply_parts=parts)
                return
            finally:
                self._in_flight.pop(row.row_id, None)
            self._unblock("reply")
            self._record_reply(row)
            return

    def _record_reply(self, row: PolledRow) -> None:
        """Settle a replied row and export its delivery latency."""
        self._state.record_reply(row.row_id, workflow.now())
        if row.created_at is not None:
            workflow.metric_meter().create_histogram_timedelta(
                "molecule_connect_delivery_latency",
                "Inbox row created_at to reply accepted by the platform.",
                "ms",
            ).with_additional_attributes({"workspace_id": self._target.workspace_id}).record(
                max(workflow.now() - row.created_at, timedelta(0))
            )
        self._emit_metrics()

    async def _dead_letter(
        self,
        message: PendingMessage,
        error: str,
        *,
        stage: str,
        attempts: int,
        reply_parts: list[ReplyPart] | None = None,
    ) -> None:
        """Set a message aside (settling its row), then tell the sender when configured (PROTOCOL.md §8)."""
        now = workflow.now()
        row = message.row
        self._state.dead_letter(
            DeadLetter(
                row=row,
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
        workflow.logger.info(
            "message dead-lettered at %s: %s", stage, error, extra=self._log(row_id=row.row_id, attempt=attempts)
        )
        if stage == "reply" or not self._settings.error_reply:
            return
        text = self._settings.error_reply_template.replace("{error}", error)
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
    def set_cursor(self, input: SetCursorInput) -> StatusResult:
        """Continue polling after another row (or ``latest``); cancels the in-flight poll so no stale result lands."""
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
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row.row_id for d in letters])

    @redrive.validator
    def validate_redrive(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._validate_selection(input)

    @workflow.update
    def discard(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Forget dead letters (their rows stay settled)."""
        letters = self._state.take_dead_letters(input.row_id)
        workflow.logger.info("discarded %d dead letter(s)", len(letters), extra=self._log())
        return DeadLetterActionResult(count=len(letters), row_ids=[d.row.row_id for d in letters])

    @discard.validator
    def validate_discard(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._validate_selection(input)

    def _validate_selection(self, input: DeadLetterSelection) -> None:
        if input.row_id is not None and all(d.row.row_id != input.row_id for d in self._state.dead_letters):
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
        reasons = [f"{duty}: {reason}" for duty, reason in self._blocked.items()]
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
            dead_letters=[
                DeadLetterSummary(
                    row_id=d.row.row_id,
                    message_id=d.row.message.message_id if d.row.message else None,
                    lane=d.lane,
                    source_id=d.row.source_id,
                    stage=d.stage,
                    error=d.error,
                    attempts=d.attempts,
                    first_failed_at=d.first_failed_at,
                    dead_lettered_at=d.dead_lettered_at,
                )
                for d in state.dead_letters
            ],
            dead_letters_evicted=state.dead_letters_evicted,
            counters=state.counters.model_dump(),
            heartbeat=self._heartbeat,
            last_delivery_at=state.last_delivery_at,
            last_error=state.last_error,
            settings=self._settings,
        )


__all__ = ["ConnectWorkflow", "ConnectState", "PolledRow"]
