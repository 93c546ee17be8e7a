"""The connector's failure policy, and the duties that follow it: register, and keeping a session running.

One rule for every call to the platform (docs/protocol.md §2), like the Go CLI's transient/permanent contract:

- **transient** failures (network, 5xx, 408/425/429) never reach the workflow: the activity's retry policy (or the
  session itself) retries them, honouring ``Retry-After``;
- **gone** (404/410 on our own workspace): wait ``gone_retry_s`` (phase ``gone``), then try again;
- **blocking** failures (401/403, no worker holding the token, a backend that cannot run): the duty waits
  ``blocked_retry_s`` (phase ``blocked``, the reason in ``status``) and tries again, healing by itself once fixed;
- anything else is the caller's to decide (a peer refusing a reply dead-letters that message).

:meth:`Duties.run` applies it to one call; the waits keep the phase and ``status`` current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.errors import ErrorType
    from activities.messages import AgentReport, PollResult, RegisterInput, SessionInput, SessionResult
    from workflows import calls
    from workflows.context import Connector
    from workflows.messages import HeartbeatHealth

T = TypeVar("T")

BLOCKING = frozenset({ErrorType.AUTH, ErrorType.TOKEN_MISSING, ErrorType.BACKEND_MISCONFIGURED})
"""Failure types that block a duty until fixed (and heal by themselves), rather than failing a message."""


class Duties:
    """The failure policy and the register and session duties of one run."""

    def __init__(self, connector: Connector) -> None:
        self._c = connector
        self.stopping = False
        """Set before the session is cancelled for good (drain done, continue-as-new)."""

    async def run(
        self, duty: str, call: Callable[[], Awaitable[T]], *, blocking: Collection[str | None] = BLOCKING
    ) -> T:
        """Run one activity call under the failure policy (module docstring) until it succeeds.

        Args:
            duty: What is being done (``register``, ``reply``...): names the blocked reason in ``status``.
            call: Starts the activity and awaits its result.
            blocking: Failure types that wait ``blocked``; others (but ``Gone``) are raised to the caller.

        Returns:
            The call's result.

        Raises:
            ActivityError: (or a local activity's ``ApplicationError``/``TimeoutError``) A failure the policy leaves
                to the caller.
        """
        while True:
            try:
                result = await call()
            except calls.LOCAL_ACTIVITY_FAILURES as err:
                kind, message = calls.failure(err)
                if kind == ErrorType.GONE:
                    await self.wait_gone(message)
                elif kind in blocking:
                    await self.wait_blocked(duty, message)
                else:
                    raise
                continue
            self.unblock(duty)
            return result

    async def wait_blocked(self, duty: str, reason: str) -> None:
        """Record a blocked duty and wait ``blocked_retry_s`` before it tries again."""
        c = self._c
        if c.blocked.get(duty) != reason:
            workflow.logger.warning("%s blocked: %s", duty, reason, extra=c.log())
        c.blocked[duty] = reason
        c.state.last_error = reason
        c.publish_phase()
        await workflow.sleep(timedelta(seconds=c.settings.blocked_retry_s))
        c.publish_phase()

    async def wait_gone(self, reason: str) -> None:
        """Record that the workspace is gone and wait ``gone_retry_s`` before trying again."""
        c = self._c
        if c.gone != reason:
            workflow.logger.error("workspace gone: %s", reason, extra=c.log())
        c.gone = reason
        c.state.last_error = reason
        c.publish_phase()
        await workflow.sleep(timedelta(seconds=c.settings.gone_retry_s))

    def unblock(self, duty: str) -> None:
        """A duty works again: clear its blocked reason (and gone)."""
        c = self._c
        if c.blocked.pop(duty, None) is not None:
            workflow.logger.info("%s recovered", duty, extra=c.log())
        c.gone = None
        c.publish_phase()

    # --- register ---------------------------------------------------------------------------------------------

    async def register(self) -> None:
        """Register the workspace (every failure but ``Gone`` blocks); note a warning about another connector."""
        c = self._c
        registered = await self.run(
            "register",
            lambda: calls.register(RegisterInput(target=c.target, last_beat_at=c.state.last_beat_at)),
            blocking=_EVERYTHING,
        )
        c.registered = True
        c.warnings = [registered.warning] if registered.warning else []
        if registered.warning:
            workflow.logger.warning(registered.warning, extra=c.log())
        workflow.logger.info("registered", extra=c.log())
        c.publish_phase()

    # --- session: heartbeats and the inbox --------------------------------------------------------------------

    async def keep_session(self, ingest: Callable[[PollResult], Awaitable[None]]) -> None:
        """Keep one ``session`` activity running: it heartbeats the platform and, when allowed, reads the inbox.

        A session is replaced when what it was started with no longer holds: a control change (epoch), polling
        allowed or not (pause, backpressure, drain), or the error-rate band the platform heartbeat reports.

        Args:
            ingest: Takes a read's rows (called unless a control change made them stale).
        """
        c = self._c
        while not self.stopping:
            polling, epoch, band = c.may_poll(), c.epoch, self._error_band()
            handle = calls.start_session(self._session_input(polling), c.settings)
            c.heartbeat = c.heartbeat.model_copy(update={"running": True})
            await workflow.wait_condition(
                lambda h=handle, e=epoch, p=polling, b=band: (
                    h.done()  # type: ignore[misc]
                    or self.stopping
                    or c.epoch != e
                    or p != c.may_poll()
                    or b != self._error_band()
                )
            )
            replaced = not handle.done()
            if replaced:
                handle.cancel()
            try:
                result = await handle
            except (ActivityError, asyncio.CancelledError) as err:
                if replaced or self.stopping:
                    continue
                if isinstance(err, asyncio.CancelledError):
                    raise
                c.heartbeat = c.heartbeat.model_copy(update={"running": False})
                kind, message = calls.failure(err)
                if kind == ErrorType.GONE:
                    await self.wait_gone(message)
                else:
                    await self.wait_blocked("session", message)
                continue
            await self._take(result, ingest, fresh=c.epoch == epoch and not self.stopping)

    def _session_input(self, polling: bool) -> SessionInput:
        c = self._c
        settings = c.settings
        read = None
        if polling:
            read = c.state.cursor.read_input(
                settings.start_from,
                target=c.target,
                backlog_limit=settings.backlog_limit,
                limit=settings.poll_limit,
                poll_interval_s=settings.poll_interval_s,
                max_wait_s=settings.poll_max_wait_s,
                ignore_row_ids=list(c.state.cursor.unusable_row_ids),
            )
        return SessionInput(
            target=c.target,
            poll=read,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            last_beat_at=c.state.last_beat_at,
            run_for_s=settings.poll_max_wait_s,
            report=AgentReport(error_rate=c.state.health.error_rate, started_at=c.state.started_at),
            in_trouble=c.trouble is not None,
        )

    def _error_band(self) -> int:
        """The platform's bands of ``error_rate`` (docs/protocol.md §3.2): below 0.1, below 0.5, at or above."""
        rate = self._c.state.health.error_rate
        return 0 if rate < 0.1 else 1 if rate < 0.5 else 2

    async def _take(
        self, result: SessionResult, ingest: Callable[[PollResult], Awaitable[None]], *, fresh: bool
    ) -> None:
        """Record what a session reports; ingest its rows unless a control change made them stale."""
        c = self._c
        if result.last_beat_at is not None:
            c.state.last_beat_at = result.last_beat_at
        c.heartbeat = HeartbeatHealth(
            running=True,
            last_result_at=workflow.now(),
            beats=c.heartbeat.beats + result.beats,
            failures=c.heartbeat.failures + result.beat_failures,
        )
        if result.beat_failures:
            count_heartbeat_failures(c, result.beat_failures)
        self.unblock("session")
        if result.trouble is not None and c.trouble is None:
            trouble = c.trouble = result.trouble
            c.state.last_error = f"{trouble.operation}: {trouble.error}"
            workflow.logger.warning(
                "platform trouble for %s: %s (since %s, %d attempts; still retrying)",
                trouble.operation,
                trouble.error,
                trouble.since.isoformat(),
                trouble.attempts,
                extra=c.log(),
            )
            c.publish_phase()
        elif result.recovered and c.trouble is not None:
            workflow.logger.info("platform answers again (%s recovered)", c.trouble.operation, extra=c.log())
            c.trouble = None
            c.publish_phase()
        if result.poll is not None and fresh:
            await ingest(result.poll)


class _Everything(frozenset[str | None]):
    """Every failure type: ``register`` blocks on anything the activity could not retry (400 included)."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


def count_heartbeat_failures(c: Connector, failures: int) -> None:
    """Export transiently failed platform heartbeats as ``molecule_connect_heartbeat_failures``."""
    workflow.metric_meter().create_counter(
        "molecule_connect_heartbeat_failures", "Platform heartbeats that failed transiently."
    ).with_additional_attributes({"workspace_id": c.target.workspace_id}).add(failures)
