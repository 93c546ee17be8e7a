"""The activities ``ConnectWorkflow`` calls, by name, each with its timeouts and retry policy in one place.

``workflows/`` imports only activity *models* and *names* (``activities.messages``), never the implementations: the
worker registers ``PlatformActivities`` and ``DispatchActivities`` under these names. A failed call surfaces as an
``ActivityError`` (or, for a local activity, its own ``ApplicationError``/``TimeoutError``): :func:`failure` reads
its ``ApplicationError`` type (``activities.errors.ErrorType``) and one-line message, the only thing the workflow's
failure policy (``workflows.duties``) looks at.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.errors import NOT_RETRYABLE
    from activities.messages import (
        ActivityName,
        CheckCursorInput,
        DispatchInput,
        DispatchResult,
        HeartbeatInput,
        HeartbeatResult,
        PollInput,
        PollResult,
        RegisterInput,
        RegisterResult,
        ReplyInput,
        ReplyResult,
        SessionInput,
        SessionResult,
    )
    from workflows.messages import ConnectSettings

PLATFORM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    # A platform outage is waited out: a minute between tries is gentle on a 600 req/min budget and still recovers
    # within a minute of the platform coming back. Non-transient failures are non-retryable ApplicationErrors.
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
)
"""Platform calls (register, session, reply): transient failures are retried forever with backoff."""

ERROR_REPLY_TIMEOUT = timedelta(minutes=5)
"""Error replies are best effort: a sender we cannot reach for this long is not worth blocking a lane for."""

SESSION_GRACE = timedelta(seconds=120)
"""A session's start-to-close timeout is ``poll_max_wait_s`` plus this."""

LOCAL_ACTIVITY_FAILURES = (ActivityError, ApplicationError, TimeoutError)
"""What a failed call raises in the workflow: an ``ActivityError``, or (as this SDK's core reports a local
activity's final failure) the activity's own ``ApplicationError`` or ``TimeoutError`` unwrapped."""


def failure(err: BaseException) -> tuple[str | None, str]:
    """The ``ApplicationError`` type and a one-line message of a failed (local) activity."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        return cause.type, cause.message
    if isinstance(cause, TimeoutError):
        return "Timeout", f"activity {cause.type.name.lower() if cause.type else ''} timeout".replace("  ", " ")
    return None, str(cause or err)


def retries_exhausted(err: BaseException) -> bool:
    """Whether a failed activity used up its retry policy (rather than failing non-retryably at once)."""
    if isinstance(err, ActivityError):
        return err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    if isinstance(err, ApplicationError):
        return not err.non_retryable
    return isinstance(err, TimeoutError)


async def register(input: RegisterInput) -> RegisterResult:
    """``register`` (docs/protocol.md §3.1): transient failures retried forever inside Temporal."""
    return await workflow.execute_activity(
        ActivityName.REGISTER,
        input,
        result_type=RegisterResult,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=PLATFORM_RETRY,
    )


def start_session(input: SessionInput, settings: ConnectSettings) -> workflow.ActivityHandle[SessionResult]:
    """Start the long-running ``session``; its heartbeat timeout is the failover time (``failover_timeout_s``)."""
    return workflow.start_activity(
        ActivityName.SESSION,
        input,
        result_type=SessionResult,
        start_to_close_timeout=timedelta(seconds=settings.poll_max_wait_s) + SESSION_GRACE,
        heartbeat_timeout=timedelta(seconds=failover_timeout_s(settings)),
        retry_policy=PLATFORM_RETRY,
    )


def failover_timeout_s(settings: ConnectSettings) -> float:
    """The session's heartbeat timeout: ``failover_timeout_s``, default 1.2 × ``heartbeat_interval_s``."""
    return settings.failover_timeout_s or 1.2 * settings.heartbeat_interval_s


async def dispatch(input: DispatchInput, settings: ConnectSettings, *, local: bool, attempts: int) -> DispatchResult:
    """``dispatch`` as a local or a regular activity (``ConnectSettings.dispatch_as``), with ``attempts`` tries.

    A regular one heartbeats and moves to another worker ``dispatch_heartbeat_timeout_s`` after a crash; a local
    one runs inside the workflow task of the workflow's own worker (``local_dispatch_timeout_s``).
    """
    retry_policy = RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
        maximum_attempts=attempts,
    )
    if local:
        return await workflow.execute_local_activity(
            ActivityName.DISPATCH,
            input,
            result_type=DispatchResult,
            start_to_close_timeout=timedelta(seconds=settings.local_dispatch_timeout_s),
            retry_policy=retry_policy,
        )
    return await workflow.execute_activity(
        ActivityName.DISPATCH,
        input,
        result_type=DispatchResult,
        start_to_close_timeout=timedelta(seconds=settings.dispatch_timeout_s),
        heartbeat_timeout=timedelta(seconds=settings.dispatch_heartbeat_timeout_s),
        retry_policy=retry_policy,
    )


async def reply(input: ReplyInput, settings: ConnectSettings) -> ReplyResult:
    """``reply`` (docs/protocol.md §1.5), transient failures retried.

    For up to ``reply_timeout_s``; error replies (``input.is_error``) for up to :data:`ERROR_REPLY_TIMEOUT`.
    """
    total = ERROR_REPLY_TIMEOUT if input.is_error else timedelta(seconds=settings.reply_timeout_s)
    return await workflow.execute_activity(
        ActivityName.REPLY,
        input,
        result_type=ReplyResult,
        start_to_close_timeout=timedelta(seconds=60),
        schedule_to_close_timeout=total,
        retry_policy=PLATFORM_RETRY,
    )


async def check_cursor(input: CheckCursorInput) -> None:
    """``check_cursor``: is the row in the inbox (a few tries; a refusal is not retried)."""
    await workflow.execute_activity(
        ActivityName.CHECK_CURSOR,
        input,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=list(NOT_RETRYABLE)),
    )


# --- the two activities ``session`` replaced (connectors started before it) ------------------------------------


async def heartbeat(input: HeartbeatInput) -> HeartbeatResult:
    """The legacy ``heartbeat`` activity (``workflows.legacy``)."""
    return await workflow.execute_activity(
        ActivityName.HEARTBEAT,
        input,
        result_type=HeartbeatResult,
        start_to_close_timeout=timedelta(seconds=input.run_for_s + 120),
        heartbeat_timeout=timedelta(seconds=max(2 * input.interval_s + 30, 60)),
        retry_policy=PLATFORM_RETRY,
    )


def start_poll(input: PollInput) -> workflow.ActivityHandle[PollResult]:
    """The legacy long-poll ``poll`` activity (``workflows.legacy``)."""
    return workflow.start_activity(
        ActivityName.POLL,
        input,
        result_type=PollResult,
        start_to_close_timeout=timedelta(seconds=input.max_wait_s + 120),
        heartbeat_timeout=timedelta(seconds=30 + input.poll_interval_s),
        retry_policy=PLATFORM_RETRY,
    )
