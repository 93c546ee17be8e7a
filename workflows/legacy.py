"""Code paths kept for runs started before ``session-and-outages`` (``workflows.context.PATCH_SESSION``).

A run decides once, when it starts, which path it takes; a run started before the patch keeps this one until it
continues as new, and every run after takes the session path. These pieces go when the patch is retired
(docs/architecture.md §2.13): the separate ``heartbeat`` activity, the ``poll`` loop, and the ping-pong guard that
relied on the peer copying ``auto_reply_depth`` plus a per-minute rate cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.errors import ErrorType
    from activities.messages import HeartbeatInput, PollResult
    from workflows import calls
    from workflows.context import Connector
    from workflows.duties import Duties, count_heartbeat_failures
    from workflows.messages import HeartbeatHealth
    from workflows.state import PendingMessage

PATCH_AUTO_REPLY_RATE_CAP = "auto-reply-rate-cap"
"""``workflow.patched`` id of the per-minute cap on automatic replies (legacy path only)."""


class RateCap:
    """The legacy ping-pong guard: ``auto_reply_depth`` over the limit, or over a per-minute cap per conversation."""

    def __init__(self) -> None:
        self._recent: dict[str, list[datetime]] = {}
        """Per lane: when automatic replies were dispatched in the last minute (kept in memory: a cap, not an audit)."""

    def over(self, c: Connector, message: PendingMessage) -> bool:
        """Settle (as skipped) a message over the depth limit or the rate cap; return whether it was settled."""
        row = message.row
        if row.auto_reply_depth > c.settings.max_auto_reply_depth:
            workflow.logger.info(
                "auto-reply depth %d over limit; not dispatched", row.auto_reply_depth, extra=c.log(row_id=row.row_id)
            )
            c.state.record_skip(row.row_id)
            return True
        if workflow.patched(PATCH_AUTO_REPLY_RATE_CAP) and self._capped(c, message):
            workflow.logger.warning(
                "conversation over %d automatic replies per minute; not dispatched",
                c.settings.max_auto_replies_per_minute,
                extra=c.log(row_id=row.row_id, lane=message.lane),
            )
            c.state.record_skip(row.row_id)
            return True
        return False

    def _capped(self, c: Connector, message: PendingMessage) -> bool:
        if message.row.auto_reply_depth < 1:
            return False
        now = workflow.now()
        recent = [t for t in self._recent.get(message.lane, []) if now - t < timedelta(minutes=1)]
        if len(recent) >= c.settings.max_auto_replies_per_minute:
            self._recent[message.lane] = recent
            return True
        self._recent[message.lane] = [*recent, now]
        return False


async def keep_heartbeat(c: Connector, duties: Duties) -> None:
    """Keep one long-running ``heartbeat`` activity going; pause it on auth/gone and restart it later."""
    while not duties.stopping:
        c.heartbeat = c.heartbeat.model_copy(update={"running": True})
        settings = c.settings
        try:
            result = await calls.heartbeat(
                HeartbeatInput(
                    target=c.target, interval_s=settings.heartbeat_interval_s, run_for_s=settings.heartbeat_run_for_s
                )
            )
        except ActivityError as err:
            c.heartbeat = c.heartbeat.model_copy(update={"running": False})
            if duties.stopping:
                # Cancelling the task cancels the activity, which then fails with an ActivityError rather than
                # raising CancelledError here.
                return
            kind, message = calls.failure(err)
            if kind == ErrorType.GONE:
                await duties.wait_gone(message)
            else:
                await duties.wait_blocked("heartbeat", message)
            continue
        duties.unblock("heartbeat")
        c.heartbeat = HeartbeatHealth(
            running=True,
            last_result_at=workflow.now(),
            beats=c.heartbeat.beats + result.beats,
            failures=c.heartbeat.failures + result.failures,
        )
        if result.failures:
            count_heartbeat_failures(c, result.failures)


async def poll_until(
    c: Connector,
    duties: Duties,
    ingest: Callable[[PollResult], Awaitable[None]],
    done: Callable[[], bool],
    crashed: Callable[[], bool],
) -> None:
    """The legacy main loop: one long ``poll`` after another until ``done()``; each batch goes to ``ingest``."""
    while not c.draining and not done():
        await workflow.wait_condition(lambda: c.may_poll() or c.draining or crashed())
        if c.draining or crashed():
            return
        result = await _poll(c, duties, crashed)
        if result is not None:
            await ingest(result)
        if crashed():
            return


async def _poll(c: Connector, duties: Duties, crashed: Callable[[], bool]) -> PollResult | None:
    """One long poll; ``None`` when it failed (after waiting out auth/gone) or a control change cancelled it."""
    settings, epoch = c.settings, c.epoch
    read = c.state.cursor.read_input(
        settings.start_from,
        target=c.target,
        backlog_limit=settings.backlog_limit,
        limit=settings.poll_limit,
        poll_interval_s=settings.poll_interval_s,
        max_wait_s=settings.poll_max_wait_s,
    )
    handle = calls.start_poll(read)
    # A crashed lane ends the long poll too, so the crash fails the workflow task now, not when rows arrive.
    await workflow.wait_condition(lambda: handle.done() or c.epoch != epoch or c.draining or crashed())
    if not handle.done():
        handle.cancel()
    try:
        result = await handle
    except ActivityError as err:
        if c.epoch != epoch or c.draining or crashed():
            return None
        kind, message = calls.failure(err)
        if kind == ErrorType.GONE:
            await duties.wait_gone(message)
        else:
            await duties.wait_blocked("poll", message)
        return None
    except asyncio.CancelledError:
        return None
    if c.epoch != epoch or c.draining:
        return None  # fetched under an old cursor or setting: drop it, the next poll re-reads
    duties.unblock("poll")
    return result
