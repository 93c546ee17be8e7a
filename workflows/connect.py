"""``ConnectWorkflow``: one long-running workflow per workspace, owning its inbox cursor (docs/architecture.md §2).

``run`` is the delivery loop: register; keep a ``session`` activity running (platform heartbeats and the long poll of
the inbox, ``workflows.duties``); ingest what it reads into conversation lanes (``workflows.state``,
``workflows.cursor``); the lanes deliver each message (``workflows.lanes``, ``workflows.delivery``) until the run is
drained or continues as new with its whole state. Failures follow one policy (``workflows.duties``); a backend that
fails across messages is waited out, not dead-lettered (``workflows.outage``).

Why each handler is what it is:
- ``status`` and ``dead_letters`` are queries: read-only, answered from memory, no history.
- ``pause``, ``resume``, ``drain``, ``set_cursor``, ``redrive``, ``discard`` and ``configure`` are updates: the caller
  learns whether the change was accepted and when it holds, and validators reject bad values before anything is
  written to history.
- Each is also a signal of the same name and input, for tools that cannot send updates (``tctl``); a rejected signal
  changes nothing and is listed in ``status`` (a signal has no caller to tell).

A control change replaces the running session (the epoch), so it takes effect at once and a stale read never lands.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.messages import PollResult
    from workflows import legacy
    from workflows.context import Connector, summary
    from workflows.controls import Controls
    from workflows.duties import Duties
    from workflows.lanes import LaneSupervisor
    from workflows.messages import (
        ConfigureInput,
        ConnectInput,
        ConnectResult,
        DeadLetterActionResult,
        DeadLetterList,
        DeadLetterPage,
        DeadLetterSelection,
        SetCursorInput,
        StatusResult,
    )
    from workflows.state import PendingMessage, lane_of

PATCH_CARRY_BUDGET = "carry-budget-before-continue-as-new"
"""``workflow.patched`` id: continue-as-new waits for queued bodies to fit (docs/architecture.md §2.13)."""

CARRY_BUDGET_BYTES = 1024 * 1024
"""Continue-as-new waits for queued message bodies to fit this, so its input stays under the 2 MiB payload limit."""

CARRY_READABLE_BYTES = 256 * 1024
"""Carried state larger than this (as JSON) is compressed into ``ConnectInput.packed_state``."""

HISTORY_LENGTH_LIMIT = 20_000
"""Continue as new past this many events even if the server did not suggest it (the hard limit is 51,200)."""


@workflow.defn
class ConnectWorkflow:
    """Durable poll-mode connector for one Molecule workspace (docs/architecture.md §2, docs/protocol.md §1, §8)."""

    @workflow.init
    def __init__(self, input: ConnectInput) -> None:
        self._c = Connector.of(input)
        self._duties = Duties(self._c)
        self._lanes = LaneSupervisor(self._c, self._duties)
        self._controls = Controls(self._c, self._lanes)

    @workflow.run
    async def run(self, input: ConnectInput) -> ConnectResult:
        """Register, keep a session, deliver what it reads in lanes; until drained, or continue as new.

        Args:
            input: Workspace, platform URL, backend and settings; ``state`` when continued as new.

        Returns:
            After ``drain``: the final cursor, counters and state (for a replacement to carry on from).
        """
        c = self._c
        workflow.logger.info("connector starting", extra=c.log())
        if c.v2 and c.state.started_at is None:
            c.state.started_at = workflow.now()
        c.publish_phase()
        await self._duties.register()
        if c.v2:
            duty = asyncio.create_task(self._duties.keep_session(self._ingest))
            self._lanes.start()
            await self._lanes.until(lambda: c.draining or self._should_continue_as_new())
        else:
            duty = asyncio.create_task(legacy.keep_heartbeat(c, self._duties))
            self._lanes.start()
            await legacy.poll_until(
                c, self._duties, self._ingest, self._should_continue_as_new, lambda: self._lanes.crashed
            )
            self._lanes.watch()
        await self._wind_down()
        self._duties.stopping = True
        duty.cancel()
        try:
            await duty
        except asyncio.CancelledError:
            pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        if c.draining:
            c.publish_phase("stopped")
            workflow.logger.info("drained; stopping", extra=c.log())
            state = c.state
            counters = state.counters.model_dump()
            return ConnectResult(
                workspace_id=c.target.workspace_id,
                phase="stopped",
                commit_cursor=state.cursor.commit,
                counters=counters,
                state=state,
            )
        c.state.counters.continued_as_new += 1
        workflow.logger.info("continuing as new", extra=c.log(pending=len(c.state.pending)))
        workflow.continue_as_new(self._carried_input())

    async def _wind_down(self) -> None:
        """Drain: deliver everything fetched. Continue-as-new: deliver until the queued bodies fit, then stop lanes."""
        c = self._c
        if c.draining:
            self._lanes.start()
            await self._lanes.until(lambda: not c.state.pending and not self._lanes.running)
            return
        if workflow.patched(PATCH_CARRY_BUDGET):
            self._lanes.start()
            await self._lanes.until(lambda: sum(p.row.body_bytes for p in c.state.pending) <= CARRY_BUDGET_BYTES)
        c.stopping = True
        await self._lanes.until(lambda: not self._lanes.running)

    async def _ingest(self, result: PollResult) -> None:
        """Take a read: remember and queue its rows; dead-letter the unreadable ones; start lanes."""
        c = self._c
        for row, reason in c.state.ingest(result):
            message = PendingMessage(row=row, lane=lane_of(row))
            await self._lanes.delivery.dead_letter(message, reason, stage="parse", attempts=0, in_lane=False)
        if result.cursor_reset:
            workflow.logger.warning("cursor was pruned (410); recovered", extra=c.log(rows=len(result.rows)))
        c.emit_metrics()
        self._lanes.start()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LENGTH_LIMIT

    def _carried_input(self) -> ConnectInput:
        """The input of the next run: settings as configured, and the state (compressed when large)."""
        c = self._c
        carried = c.input.model_copy(update={"settings": c.settings, "state": c.state, "packed_state": None})
        if not c.v2:
            return carried
        encoded = c.state.model_dump_json().encode()
        if len(encoded) <= CARRY_READABLE_BYTES:
            return carried
        return carried.model_copy(update={"state": None, "packed_state": zlib.compress(encoded, 6)})

    # --- control plane: updates (the caller learns the outcome), then their signal twins -----------------------

    @workflow.update
    async def pause(self) -> StatusResult:
        """Stop polling and starting dispatches; return once in-flight ones settle. Survives continue-as-new."""
        self._controls.pause()
        await workflow.wait_condition(lambda: not self._lanes.running)
        return self.status()

    @workflow.update
    def resume(self) -> StatusResult:
        """Resume polling and dispatching after ``pause``."""
        self._controls.resume()
        return self.status()

    @workflow.update
    def drain(self) -> StatusResult:
        """Stop polling, deliver every message already fetched, then complete (result: the final state).

        Returns at once with phase ``draining``; wait for the workflow result to know it finished.
        """
        self._controls.drain()
        return self.status()

    @workflow.update
    async def set_cursor(self, input: SetCursorInput) -> StatusResult:
        """Continue reading after another row (or ``latest``); the running session is replaced.

        The row is first checked with the platform (``check_cursor``): one the inbox does not hold is refused with
        a clear message. Rows older than the last settled one are never delivered again, even after a 410.
        """
        await self._controls.set_cursor(input)
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
        """Put dead letters back at the end of their lanes; each is delivered once more (its body re-read).

        A letter that failed at the reply stage only resends its stored reply, without running the backend again.
        """
        return self._controls.redrive(input)

    @redrive.validator
    def validate_redrive(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._controls.validate_selection(input)

    @workflow.update
    def discard(self, input: DeadLetterSelection) -> DeadLetterActionResult:
        """Forget dead letters (their rows stay settled)."""
        return self._controls.discard(input)

    @discard.validator
    def validate_discard(self, input: DeadLetterSelection) -> None:
        """Reject a row id that is not a dead letter."""
        self._controls.validate_selection(input)

    @workflow.update
    def configure(self, input: ConfigureInput) -> StatusResult:
        """Change settings (poll interval, concurrency, max attempts, ...); kept through continue-as-new."""
        self._controls.configure(input)
        return self.status()

    @configure.validator
    def validate_configure(self, input: ConfigureInput) -> None:
        """Reject unknown settings and bad values with the first problem, before anything reaches history."""
        self._controls.merged_settings(input)

    @workflow.signal(name="pause")
    def pause_signal(self) -> None:
        """Signal twin of ``pause`` (does not wait for in-flight messages)."""
        self._controls.pause()

    @workflow.signal(name="resume")
    def resume_signal(self) -> None:
        """Signal twin of ``resume``."""
        self._controls.resume()

    @workflow.signal(name="drain")
    def drain_signal(self) -> None:
        """Signal twin of ``drain``."""
        self._controls.drain()

    @workflow.signal(name="set_cursor")
    async def set_cursor_signal(self, input: SetCursorInput) -> None:
        """Signal twin of ``set_cursor``."""
        await self._controls.signal(
            "set_cursor", lambda: self.validate_set_cursor(input), lambda: self._controls.set_cursor(input)
        )

    @workflow.signal(name="redrive")
    async def redrive_signal(self, input: DeadLetterSelection) -> None:
        """Signal twin of ``redrive``."""
        await self._controls.signal(
            "redrive", lambda: self._controls.validate_selection(input), lambda: self._controls.redrive(input)
        )

    @workflow.signal(name="discard")
    async def discard_signal(self, input: DeadLetterSelection) -> None:
        """Signal twin of ``discard``."""
        await self._controls.signal(
            "discard", lambda: self._controls.validate_selection(input), lambda: self._controls.discard(input)
        )

    @workflow.signal(name="configure")
    async def configure_signal(self, input: ConfigureInput) -> None:
        """Signal twin of ``configure``."""
        await self._controls.signal(
            "configure", lambda: self._controls.merged_settings(input), lambda: self._controls.configure(input)
        )

    # --- queries -----------------------------------------------------------------------------------------------

    @workflow.query
    def status(self) -> StatusResult:
        """Phase, cursors, lanes, in-flight messages, dead letters and counters. A query: read-only, no history."""
        return self._c.status()

    @workflow.query
    def dead_letters(self, page: DeadLetterPage) -> DeadLetterList:
        """A page of the dead letters, oldest first (``status`` shows only the newest). A query: read-only."""
        letters = self._c.state.dead_letters
        chosen = letters[page.offset : page.offset + page.limit]
        return DeadLetterList(total=len(letters), letters=[summary(d) for d in chosen])


__all__ = ["ConnectWorkflow"]
