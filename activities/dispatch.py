"""``DispatchActivities``: the ``dispatch`` activity, which runs a backend on one inbound message.

The backend runs as an asyncio task while the activity heartbeats Temporal, so a long backend call (a 45 s model
run) never looks dead, and a killed worker is noticed within ``heartbeat_timeout``. Cancellation (workflow request,
heartbeat timeout seen by the server, worker shutdown) cancels the backend task, which kills its processes.

A row whose body was too large to carry through Temporal (``PolledRow.body_ref``) is re-read from the platform first
(:meth:`activities.platform.PlatformActivities.read_body`) and parsed like any inbound body.

Failure classes: ``BackendFailed`` (retryable; the workflow dead-letters after ``max_attempts``; non-retryable,
so dead-lettered at once, for a ``PermanentBackendError`` or a body that can no longer be re-read) and
``BackendMisconfigured`` (non-retryable; the workflow blocks instead of dead-lettering every message). Re-reading a
body raises the platform's classes: ``Transient`` (retryable), ``Auth`` and ``Gone`` (non-retryable).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.a2a import A2AMessage, MalformedMessageError, TextPart, parse_inbound
from activities.backends import create_backend
from activities.backends.base import (
    Backend,
    BackendConfigError,
    BackendError,
    BackendRequest,
    BackendResponse,
    PermanentBackendError,
)
from activities.errors import ErrorType, redact
from activities.messages import (
    ActivityName,
    BackendSpec,
    DispatchInput,
    DispatchResult,
    ReplyInput,
    ReplyPart,
    ReplyResult,
)
from activities.platform import PlatformActivities, RowNotFoundError
from activities.tracing import backend_span, reply_span

MAX_REPLY_TEXT_BYTES = 512 * 1024
"""Reply text above this is cut with a visible marker: results live in history (2 MiB payload limit)."""
TRUNCATION_MARKER = "\n\n[… reply truncated by molecule-connect: {dropped} bytes dropped]"
REPLY_IN_DISPATCH_TIMEOUT_S = 10.0
"""The reply sent with the dispatch gets this long; a slower (hung) platform gets the parts handed back to the
workflow instead, whose ``reply`` activity keeps trying with its own retry policy: a reply that cannot be sent
never makes the backend run again (docs/guarantees.md)."""


def truncate_parts(parts: list[ReplyPart], limit: int = MAX_REPLY_TEXT_BYTES) -> tuple[list[ReplyPart], bool]:
    """Cut text parts so their UTF-8 size stays within ``limit`` bytes.

    Returns:
        The parts (cut text carries :data:`TRUNCATION_MARKER`) and whether anything was cut.
    """
    budget = limit
    out: list[ReplyPart] = []
    truncated = False
    for part in parts:
        if not isinstance(part, TextPart):
            out.append(part)
            continue
        encoded = part.text.encode()
        if len(encoded) <= budget:
            budget -= len(encoded)
            out.append(part)
            continue
        kept = encoded[: max(budget, 0)].decode(errors="ignore")
        marker = TRUNCATION_MARKER.format(dropped=len(encoded) - len(kept.encode()))
        out.append(part.model_copy(update={"text": kept + marker}))
        budget = 0
        truncated = True
    return out, truncated


class DispatchActivities:
    """Runs backends. Backends are created once per (name, options) and reused; closed at worker shutdown."""

    def __init__(self, platform: PlatformActivities | None = None) -> None:
        # Platform calls made from ``dispatch``: the reply sent with the dispatch, re-reading a large row.
        self._platform = platform
        self._backends: dict[tuple[str, tuple[tuple[str, str], ...]], Backend] = {}

    def backend_for(self, spec: BackendSpec) -> Backend:
        """The cached backend for ``spec``, created on first use.

        Raises:
            BackendConfigError: Unknown backend or bad options.
        """
        key = (spec.name, tuple(sorted(spec.options.items())))
        backend = self._backends.get(key)
        if backend is None:
            backend = create_backend(spec.name, spec.options)
            self._backends[key] = backend
        return backend

    async def close(self) -> None:
        """Close every backend created so far."""
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            with contextlib.suppress(Exception):
                await backend.close()

    async def _read_message(self, input: DispatchInput) -> tuple[A2AMessage, str]:
        """The whole message and text of a row passed by reference, re-read from the platform.

        Returns:
            The message with its parts, and its text parts joined (``parse_inbound``, as ``poll`` parsed it).

        Raises:
            ApplicationError: ``BackendFailed``, non-retryable (so the message is dead-lettered at once with this
                reason and the sender told) when the row is no longer on the platform or its body no longer
                parses; ``Transient`` (retried by the activity's retry policy), ``Auth`` or ``Gone`` from the
                platform; ``BackendMisconfigured`` when this worker has no platform client.
        """
        if self._platform is None:
            raise ApplicationError(
                "dispatch: this worker cannot re-read large messages (no platform client)",
                type=ErrorType.BACKEND_MISCONFIGURED,
                non_retryable=True,
            )
        try:
            body = await self._platform.read_body(input.target, input.row)
        except RowNotFoundError as err:
            raise ApplicationError(err.reason, type=ErrorType.BACKEND_FAILED, non_retryable=True) from None
        try:
            parsed = parse_inbound(body)
        except MalformedMessageError as err:
            raise ApplicationError(
                f"message body re-read from the platform is malformed: {err.reason}",
                type=ErrorType.BACKEND_FAILED,
                non_retryable=True,
            ) from None
        return parsed.message, parsed.text

    async def _run_backend(
        self, backend: Backend, input: DispatchInput, message: A2AMessage, attempt: int
    ) -> BackendResponse:
        """Build the backend request, re-reading a body passed by reference first, and run the backend on it.

        Runs as the heartbeated task of ``dispatch``, so a slow re-read never looks like a dead worker.
        """
        text = input.row.message_text
        if input.row.body_ref is not None:
            message, text = await self._read_message(input)
        request = BackendRequest(
            workspace_id=input.target.workspace_id,
            row_id=input.row.row_id,
            source_id=input.row.source_id,
            lane=input.lane,
            message=message,
            text=text,
            attempt=attempt,
        )
        with backend_span(input):
            return await backend.handle(request)

    @activity.defn(name=ActivityName.DISPATCH)
    async def dispatch(self, input: DispatchInput) -> DispatchResult:
        """Run the backend on one message and return its reply parts, or send the reply (``input.send_reply``).

        Heartbeats every third of ``heartbeat_timeout`` (at most every 10 s) across all of its work: re-reading a
        body, the backend, and the reply. With ``send_reply`` the reply goes out as the ``reply`` activity would
        send it (docs/protocol.md §1.5, same deterministic ``messageId``), saving a second activity per message;
        if that fails or takes over :data:`REPLY_IN_DISPATCH_TIMEOUT_S`, the parts come back with ``reply_error``
        instead, so the workflow sends them with its ``reply`` activity and never re-runs the backend for them.

        Before the backend runs, the worker checks that it holds the workspace's token (it needs it for the reply):
        a worker without it fails with ``TokenMissing`` and the message goes to another worker.

        Returns:
            Reply parts (text over :data:`MAX_REPLY_TEXT_BYTES` is truncated with a visible marker), or the sent
            reply's ``ReplyResult`` with no parts.

        Raises:
            ApplicationError: ``BackendFailed`` (retryable, unless the backend raised ``PermanentBackendError``),
                ``BackendMisconfigured`` (non-retryable), ``TokenMissing``; for a body passed by reference also the
                errors of :meth:`_read_message`.
            asyncio.CancelledError: The activity was cancelled; the backend was stopped first.
        """
        info = activity.info()
        log_extra = {"workspace_id": input.target.workspace_id, "row_id": input.row.row_id, "attempt": info.attempt}
        if input.row.message is None:
            raise ApplicationError("dispatch: row has no message", type=ErrorType.BACKEND_FAILED, non_retryable=True)
        if self._platform is not None and (input.send_reply or input.row.body_ref is not None):
            self._platform.check_token(input.target)
        try:
            backend = self.backend_for(input.backend)
        except BackendConfigError as err:
            raise ApplicationError(
                f"backend {input.backend.name}: {redact(str(err))}",
                type=ErrorType.BACKEND_MISCONFIGURED,
                non_retryable=True,
            ) from None
        doing = f"replying to {input.row.source_id or 'the canvas'}"
        tracking = (
            self._platform.tracking_dispatch(input.target.workspace_id, input.row.row_id, doing)
            if self._platform is not None
            else contextlib.nullcontext()
        )
        with tracking:
            attempt = input.attempt or info.attempt
            return await self._heartbeating(self._work(backend, input, attempt, log_extra), info)

    @staticmethod
    async def _heartbeating(work: Any, info: activity.Info) -> DispatchResult:
        """Await ``work`` as a task, heartbeating Temporal meanwhile; cancel it (killing its processes) if cancelled."""
        beat_every = min((info.heartbeat_timeout or timedelta(seconds=30)).total_seconds() / 3, 10.0)
        task = asyncio.create_task(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(beat_every, 0.2))
                if done:
                    return task.result()
                if not info.is_local:  # a local activity has no heartbeat; its workflow task is kept alive
                    activity.heartbeat()
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            activity.logger.info("dispatch cancelled; backend stopped", extra={"row_id": info.activity_id})
            raise

    async def _work(
        self, backend: Backend, input: DispatchInput, attempt: int, log_extra: dict[str, Any]
    ) -> DispatchResult:
        """The backend, then (with ``send_reply``) the reply; run as the heartbeated task of ``dispatch``."""
        assert input.row.message is not None
        try:
            response = await self._run_backend(backend, input, input.row.message, attempt)
        except BackendConfigError as err:
            raise ApplicationError(
                f"backend {input.backend.name}: {redact(str(err))}",
                type=ErrorType.BACKEND_MISCONFIGURED,
                non_retryable=True,
            ) from None
        except BackendError as err:
            reason = redact(str(err))
            activity.logger.debug("backend failed: %s", reason, extra=log_extra)  # the SDK logs the failure once
            # A permanent failure (e.g. the agent rejects the request as invalid) would fail the same way on
            # every retry, so it is dead-lettered at once.
            permanent = isinstance(err, PermanentBackendError)
            raise ApplicationError(reason, type=ErrorType.BACKEND_FAILED, non_retryable=permanent) from None
        parts, truncated = truncate_parts(list(response.parts))
        if truncated:
            activity.logger.warning("backend reply truncated", extra=log_extra)
        if not input.send_reply or self._platform is None:
            return DispatchResult(parts=parts, truncated=truncated)
        # An earlier attempt of this dispatch may have sent the reply before it died: look from its start.
        earlier = input.first_attempt_at
        attempted_at = earlier or datetime.now(UTC)
        try:
            with reply_span(input):
                reply = await self._send_reply_briefly(
                    ReplyInput(target=input.target, row=input.row, parts=parts, attempted_at=earlier)
                )
        except ApplicationError as err:
            # The backend's work is kept: the workflow sends these parts with its own ``reply`` activity, whose
            # retry policy and failure classes (auth → blocked, permanent → dead letter) then apply.
            activity.logger.warning("reply with the dispatch failed: %s", err.message, extra=log_extra)
            return DispatchResult(
                parts=parts, truncated=truncated, reply_error=err.message, reply_attempted_at=attempted_at
            )
        return DispatchResult(parts=[], truncated=truncated, reply=reply)

    async def _send_reply_briefly(self, reply: ReplyInput) -> ReplyResult:
        """Send the reply, giving up after :data:`REPLY_IN_DISPATCH_TIMEOUT_S` (raised as ``Transient``)."""
        assert self._platform is not None
        try:
            return await asyncio.wait_for(self._platform.send_reply(reply), timeout=REPLY_IN_DISPATCH_TIMEOUT_S)
        except TimeoutError:
            raise ApplicationError(
                f"reply: no answer from the platform within {REPLY_IN_DISPATCH_TIMEOUT_S:g} s",
                type=ErrorType.TRANSIENT,
            ) from None
