"""``Delivery``: one message from its lane to a settled row (replied, skipped or dead-lettered).

The path of a message (docs/architecture.md §2): the ping-pong guard may settle it at once; otherwise ``dispatch``
runs the backend and sends the reply in the same activity (one activity per message); if that reply failed, its
parts go to a ``reply`` activity, so a reply never re-runs the backend. The workflow retries a failing dispatch
itself (1, 2, 4 ... 60 s) and asks the backend's health (``workflows.outage``) after each failure: a message failing
while others succeed is dead-lettered after ``max_attempts``; failures of several messages in a row hold them while
a probe climbs the ladder. Blocking failures (auth, no token, a backend that cannot run) wait ``blocked``
(``workflows.duties``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.a2a import TextPart
    from activities.errors import TOKEN_HANDOFF, TOKEN_RETRY_DELAY, ErrorType
    from activities.messages import DispatchInput, DispatchResult, PolledRow, ReplyInput, ReplyPart
    from workflows import calls, legacy
    from workflows.context import Connector
    from workflows.duties import Duties
    from workflows.messages import InFlight
    from workflows.state import DeadLetter, PendingMessage

PATCH_REPLY_WITH_DISPATCH = "reply-with-dispatch"
PATCH_LOCAL_DISPATCH = "local-dispatch"
"""``workflow.patched`` ids of one activity per message and of local dispatch (docs/architecture.md §2.13)."""

LOCAL_DISPATCH_BACKENDS = frozenset({"echo"})
"""Backends that ``dispatch_as="auto"`` runs as a local activity: in-process, answering in microseconds."""

ERROR_KINDS = {"parse": "the message could not be read", "reply": "the reply could not be delivered"}
"""What ``{error}`` says in an error reply, by failure stage (``dispatch``: see :func:`error_kind`)."""


class LaneStopped(Exception):
    """A lane waiting (backend down, dead-letter queue full) must stop: pause, continue-as-new. Not a failure."""


def error_kind(stage: str, kind: str | None) -> str:
    """What an error reply tells the sender about a failure: its kind only, never the details."""
    if stage == "dispatch":
        return "the agent timed out" if kind == "Timeout" else "the agent failed"
    return ERROR_KINDS.get(stage, "the message could not be processed")


class Delivery:
    """Delivers messages of any lane; one per run, shared by the lanes."""

    def __init__(self, connector: Connector, duties: Duties, *, on_outage_change: Callable[[], None]) -> None:
        """Deliver for ``connector``; ``on_outage_change`` (re)starts lanes when an outage starts or ends."""
        self._c = connector
        self._duties = duties
        self._legacy = legacy.RateCap()
        self.on_outage_change = on_outage_change

    # --- one message -----------------------------------------------------------------------------------------

    async def deliver(self, message: PendingMessage) -> None:
        """Dispatch one message and send its reply; settle it either way (replied, skipped or dead-lettered).

        Raises:
            LaneStopped: The lane must stop while this message waits (it stays queued).
        """
        c, row = self._c, message.row
        if await self._ping_pong(message) if c.v2 else self._legacy.over(c, message):
            return
        parts = message.reply_parts
        attempted_at: datetime | None = None
        if parts is None:
            # One activity per message: dispatch sends the reply itself, and hands it back only when that failed.
            result = await self._dispatch(message, send_reply=workflow.patched(PATCH_REPLY_WITH_DISPATCH))
            if result is None:
                return
            if result.reply is not None:
                self._replied(message)
                return
            if result.reply_error is not None:
                workflow.logger.warning(
                    "reply with the dispatch failed (%s); sending it on its own",
                    result.reply_error,
                    extra=c.log(row_id=row.row_id),
                )
            parts = list(result.parts)
            attempted_at = result.reply_attempted_at
        await self._reply(message, parts, attempted_at=attempted_at)

    async def _ping_pong(self, message: PendingMessage) -> bool:
        """Settle, without dispatch, a message past its conversation's automatic exchanges (docs/protocol.md §7).

        The sender is told once per streak. Returns whether the message was settled here.
        """
        c, row, limit = self._c, message.row, self._c.settings.max_auto_reply_depth
        exchange = c.state.count_auto_exchange(message, workflow.now())
        if exchange.count <= limit and row.auto_reply_depth <= limit:
            return False
        c.state.record_skip(row.row_id)
        self._settled("skipped", message, reason=f"automatic exchange {max(exchange.count, row.auto_reply_depth)}")
        if not exchange.notified:
            c.state.auto_exchanges[message.lane] = exchange.model_copy(update={"notified": True})
            text = (
                f"Automatic replies stopped: this conversation had more than {limit} automatic exchanges in a row. "
                "A person must write to continue."
            )
            await self.best_effort_reply(row, text)
        return True

    # --- dispatch, with the backend's health -----------------------------------------------------------------

    async def _dispatch(self, message: PendingMessage, *, send_reply: bool) -> DispatchResult | None:
        """Run the backend with retries (and send the reply when ``send_reply``); ``None`` once dead-lettered.

        Each attempt is one activity attempt and the workflow retries, so every failure is seen at once, across
        conversations, by the backend's health. (Runs started before ``PATCH_SESSION`` leave retries to Temporal's
        retry policy and dead-letter after them.)
        """
        c, row = self._c, message.row
        settings = c.settings
        local = self._dispatch_locally()
        attempt = 0
        first_attempt_at: datetime | None = None  # later attempts look for a canvas reply an earlier one sent
        token_missing_since: datetime | None = None
        while True:
            probe = await self._wait_for_backend(message) if c.v2 else False
            attempt += 1
            c.in_flight[row.row_id] = InFlight(
                row_id=row.row_id, lane=message.lane, stage="dispatch", since=workflow.now()
            )
            dispatch_input = DispatchInput(
                target=c.target,
                backend=c.input.backend,
                row=row,
                lane=message.lane,
                send_reply=send_reply,
                attempt=attempt if c.v2 else 0,
                first_attempt_at=first_attempt_at,
            )
            if first_attempt_at is None and c.v2:
                first_attempt_at = workflow.now()
            try:
                result = await calls.dispatch(
                    dispatch_input, settings, local=local, attempts=1 if c.v2 else settings.max_attempts
                )
            except calls.LOCAL_ACTIVITY_FAILURES as err:
                kind, error = calls.failure(err)
                if kind in (ErrorType.BACKEND_MISCONFIGURED, ErrorType.AUTH, ErrorType.TOKEN_MISSING):
                    attempt -= 1  # not the message's fault
                    if kind == ErrorType.TOKEN_MISSING and local:
                        local = False  # a local activity cannot move: hand it to a worker holding the token
                        continue
                    if kind == ErrorType.TOKEN_MISSING and await self._hand_off(token_missing_since):
                        token_missing_since = token_missing_since or workflow.now()
                        continue
                    # The backend cannot run, or our token was refused (or no worker holds it) while re-reading a
                    # body or replying: the duty waits ``blocked`` and heals by itself; the message is not the problem.
                    duty = "backend" if kind == ErrorType.BACKEND_MISCONFIGURED else "dispatch"
                    await self._duties.wait_blocked(duty, error)
                    continue
                permanent = kind == ErrorType.BACKEND_FAILED and not calls.retries_exhausted(err)
                if not c.v2 or permanent:
                    attempts = settings.max_attempts if calls.retries_exhausted(err) and not c.v2 else attempt
                    await self.dead_letter(message, error, stage="dispatch", attempts=attempts, kind=kind)
                    return None
                verdict = c.state.health.failed(
                    row.row_id, error, workflow.now(), attempt=attempt, max_attempts=settings.max_attempts
                )
                if verdict == "dead_letter":
                    await self.dead_letter(message, error, stage="dispatch", attempts=attempt, kind=kind)
                    return None
                if verdict == "hold":
                    self._outage(message, error, probe=probe)
                    attempt = 0  # its attempts start again once the backend is back
                    continue
                # The worker already logged this attempt's failure (one line at INFO); the retry is a detail.
                workflow.logger.debug(
                    "dispatch attempt %d failed, retrying: %s", attempt, error, extra=c.log(row_id=row.row_id)
                )
                await self._backoff(attempt)
                continue
            finally:
                c.in_flight.pop(row.row_id, None)
            if c.v2 and c.state.health.succeeded(workflow.now()):
                workflow.logger.info("backend answers again; delivery resumes", extra=c.log(row_id=row.row_id))
                c.publish_phase()
                self.on_outage_change()
            self._duties.unblock("backend")
            self._duties.unblock("dispatch")
            if result.reply is not None:
                self._duties.unblock("reply")
            return result

    async def _hand_off(self, since: datetime | None) -> bool:
        """Wait, then say to try again, so another worker of the task queue (one holding the token) takes the dispatch.

        The workflow retries dispatches itself (one activity attempt each), so the activity's own hand-off (a
        retryable ``TokenMissing``) happens here: after 2 s, then doubling up to a minute, until ``TOKEN_HANDOFF``
        has passed since the first refusal; then ``False``, and the dispatch waits ``blocked``.
        """
        now = workflow.now()
        if since is not None and now - since >= TOKEN_HANDOFF:
            return False
        waited = (now - since).total_seconds() if since is not None else 0.0
        await workflow.sleep(min(60.0, max(TOKEN_RETRY_DELAY.total_seconds(), waited)))
        return True

    def _dispatch_locally(self) -> bool:
        """Whether ``dispatch`` runs as a local activity (``ConnectSettings.dispatch_as``)."""
        c = self._c
        mode = c.settings.dispatch_as
        if mode == "auto":
            mode = "local" if c.input.backend.name in LOCAL_DISPATCH_BACKENDS else "activity"
        return mode == "local" and workflow.patched(PATCH_LOCAL_DISPATCH)

    async def _backoff(self, attempt: int) -> None:
        """Wait before a dispatch retry (1, 2, 4 ... 60 s), or until the backend is found down or the lane must stop."""
        c = self._c
        delay = timedelta(seconds=min(60.0, 2.0 ** (attempt - 1)))
        try:
            await workflow.wait_condition(lambda: c.state.health.down or c.lanes_must_stop(), timeout=delay)
        except asyncio.TimeoutError:  # noqa: UP041 - the builtin; temporalio's TimeoutError is another class
            pass
        if c.lanes_must_stop():
            raise LaneStopped

    def _outage(self, message: PendingMessage, error: str, *, probe: bool) -> None:
        c = self._c
        outage = c.state.health.outage
        assert outage is not None
        wait = (outage.next_probe_at - workflow.now()).total_seconds()
        if probe:
            workflow.logger.warning(
                "backend still down (%s); next probe in %.0f s", error, wait, extra=c.log(row_id=message.row.row_id)
            )
        else:
            workflow.logger.warning(
                "backend down: %s; holding %d message(s), no error replies; probing in %.0f s",
                error,
                len(outage.held),
                wait,
                extra=c.log(row_id=message.row.row_id, lane=message.lane),
            )
        c.state.last_error = f"backend down: {error}"
        c.publish_phase()
        self.on_outage_change()

    async def _wait_for_backend(self, message: PendingMessage) -> bool:
        """Wait while the backend is down until this message is the probe and the probe is due.

        Returns:
            ``True`` when this dispatch is a probe (one attempt), ``False`` when the backend is up.

        Raises:
            LaneStopped: The lane must stop meanwhile (pause, continue-as-new).
        """
        c, row_id = self._c, message.row.row_id
        health = c.state.health
        while health.down:
            await workflow.wait_condition(lambda: not health.down or c.lanes_must_stop() or self.probe() == row_id)
            if c.lanes_must_stop():
                raise LaneStopped
            if not health.down:
                break
            due = health.probe_due_in(workflow.now())
            if due <= timedelta(0):
                return True
            try:
                await workflow.wait_condition(
                    lambda: not health.down or c.lanes_must_stop() or self.probe() != row_id, timeout=due
                )
            except asyncio.TimeoutError:  # noqa: UP041 - the builtin; temporalio's TimeoutError is another class
                pass
        return False

    def probe(self, lanes: dict[str, deque[PendingMessage]] | None = None) -> str | None:
        """The row to probe a down backend with: the oldest lane head that has not failed, else the oldest one."""
        state = self._c.state
        if not state.health.down:
            return None
        lanes = state.lane_queues() if lanes is None else lanes
        return state.health.choose_probe([queue[0].row.row_id for queue in lanes.values()])

    # --- reply and settle ------------------------------------------------------------------------------------

    async def _reply(self, message: PendingMessage, parts: list[ReplyPart], *, attempted_at: datetime | None) -> None:
        """Send the backend's parts with the ``reply`` activity; a refused reply is dead-lettered with its parts."""
        c, row = self._c, message.row
        c.in_flight[row.row_id] = InFlight(row_id=row.row_id, lane=message.lane, stage="reply", since=workflow.now())
        reply = ReplyInput(target=c.target, row=row, parts=parts, attempted_at=attempted_at)
        try:
            await self._duties.run(
                "reply",
                lambda: calls.reply(reply, c.settings),
                blocking={ErrorType.AUTH, ErrorType.TOKEN_MISSING},
            )
        except calls.LOCAL_ACTIVITY_FAILURES as err:
            kind, error = calls.failure(err)
            await self.dead_letter(message, error, stage="reply", attempts=1, reply_parts=parts, kind=kind)
            return
        finally:
            c.in_flight.pop(row.row_id, None)
        self._replied(message)

    def _replied(self, message: PendingMessage) -> None:
        """Settle a replied row and export its delivery latency."""
        c, row = self._c, message.row
        now = workflow.now()
        c.state.record_reply(row.row_id, now)
        if c.v2:
            c.state.note_reply(message.lane, now)
        latency = max(now - row.created_at, timedelta(0)) if row.created_at is not None else None
        if latency is not None:
            workflow.metric_meter().create_histogram_timedelta(
                "molecule_connect_delivery_latency",
                "Inbox row created_at to reply accepted by the platform.",
                "ms",
            ).with_additional_attributes({"workspace_id": c.target.workspace_id}).record(latency)
        self._settled("replied", message, latency=latency)
        c.emit_metrics()

    def _settled(self, outcome: str, message: PendingMessage, **details: object) -> None:
        """One INFO line per settled message: outcome, row id, lane and what else is known."""
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
            extra=self._c.log(row_id=message.row.row_id, lane=message.lane, outcome=outcome, **details),
        )

    async def dead_letter(
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

        Raises:
            LaneStopped: The lane must stop while it waits for room.
        """
        c, row = self._c, message.row
        if c.v2 and in_lane and c.state.dead_letters_full:
            await self._wait_for_room()
        now = workflow.now()
        c.state.dead_letter(
            DeadLetter(
                **DeadLetter.of_row(row),
                lane=message.lane,
                error=error,
                stage=stage,  # type: ignore[arg-type]
                attempts=attempts,
                dead_lettered_at=now,
                reply_parts=reply_parts,
            )
        )
        c.emit_metrics()
        self._settled("dead-lettered", message, stage=stage, attempts=attempts, error=error)
        if stage == "reply" or not c.settings.error_reply:
            return
        template = c.settings.error_reply_template
        if c.v2:
            text = template.replace("{row_id}", row.row_id).replace("{error}", error_kind(stage, kind))
        else:
            text = template.replace("{error}", error)
        await self.best_effort_reply(row, text)

    async def _wait_for_room(self) -> None:
        """Wait ``blocked`` until the dead-letter queue has room (or the lane must stop)."""
        c = self._c
        reason = (
            f"dead-letter queue full ({len(c.state.dead_letters)}): redrive or discard some with "
            f"`molecule-connect dead-letters {c.target.workspace_id}`"
        )
        if c.blocked.get("dead letters") != reason:
            workflow.logger.error(reason, extra=c.log())
        c.blocked["dead letters"] = reason
        c.publish_phase()
        await workflow.wait_condition(lambda: not c.state.dead_letters_full or c.lanes_must_stop())
        self._duties.unblock("dead letters")
        if c.lanes_must_stop():
            raise LaneStopped

    async def best_effort_reply(self, row: PolledRow, text: str) -> None:
        """Send an error or notice reply; a sender we cannot reach for a while is not worth blocking a lane for."""
        c = self._c
        try:
            await calls.reply(
                ReplyInput(target=c.target, row=row, parts=[TextPart(text=text)], is_error=True), c.settings
            )
        except calls.LOCAL_ACTIVITY_FAILURES as err:
            workflow.logger.warning("error reply failed: %s", calls.failure(err)[1], extra=c.log(row_id=row.row_id))
