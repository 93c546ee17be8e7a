"""Re-run a failed dispatch locally: one row's recorded ``dispatch`` input, on its backend, once, replying to no one.

Replay (``worker.replay``) reproduces the workflow's decisions, not the backend call that failed. This module takes
the ``DispatchInput`` the workflow scheduled for a row (from the ``ActivityTaskScheduled`` event of its ``dispatch``
activity, in the history of the current run or of the runs it continued from) and runs that backend on it in this
process, so the operator sees the failure again, fixes the backend or its options, and then redrives the dead letter.

A message over 256 KiB was passed by reference (``PolledRow.body_ref``): its body is not in history and is re-read
from the platform with the workspace's token from the environment, as a worker would; without a token this says so.
A dispatch that ran as a local activity (``dispatch_as = local``, the default for ``echo``) records no input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from activities.a2a import parse_inbound
from activities.backends import create_backend
from activities.backends.base import BackendRequest, BackendResponse
from activities.messages import BackendSpec, DispatchInput
from activities.platform import PlatformActivities, TokenLookup

MAX_RUNS = 20
"""How many runs (continue-as-new) back :func:`find_dispatch` looks for a row."""


class RerunError(RuntimeError):
    """The dispatch cannot be found or re-run; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class RecordedDispatch:
    """The last ``dispatch`` the workflow scheduled for a row, and how it ended.

    Attributes:
        input: Its recorded input (target, backend, row, lane, attempt).
        run_id: The run whose history holds it.
        outcome: How the activity ended, one line (``failed: <message>``, ``timed out``, ``completed``), or
            ``no outcome recorded`` while it is still running.
    """

    input: DispatchInput
    run_id: str
    outcome: str


async def find_dispatch(
    history: WorkflowHistory,
    row_id: str,
    converter: DataConverter,
    *,
    previous_run: Callable[[str], Awaitable[WorkflowHistory]] | None = None,
) -> RecordedDispatch:
    """The last ``dispatch`` scheduled for ``row_id`` in ``history``, else in the runs it continued from.

    Args:
        history: A run's history (newest run first).
        row_id: The inbound row id (a dead letter's ``row_id`` in ``status``).
        converter: The data converter the history was written with (``worker.codec.data_converter()``).
        previous_run: Fetches the run a history continued from (by run id); None searches ``history`` only.

    Raises:
        RerunError: No ``dispatch`` of that row in the histories searched.
    """
    searched = 0
    while True:
        found = await _dispatch_in(history, row_id, converter)
        searched += 1
        if found is not None:
            return found
        started = history.events[0].workflow_execution_started_event_attributes if history.events else None
        previous = started.continued_execution_run_id if started is not None else ""
        if previous_run is None or not previous or searched >= MAX_RUNS:
            break
        history = await previous_run(previous)
    raise RerunError(
        f"no dispatch of row {row_id} in {history.workflow_id} ({searched} run(s) searched): check the row id "
        "(`molecule-connect dead-letters WS`); a local dispatch (dispatch_as=local, the default for echo) records "
        "no input"
    )


async def _dispatch_in(history: WorkflowHistory, row_id: str, converter: DataConverter) -> RecordedDispatch | None:
    outcomes: dict[int, str] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            outcomes[failed.scheduled_event_id] = await _failure_text(failed.failure, converter)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            outcomes[event.activity_task_timed_out_event_attributes.scheduled_event_id] = "timed out"
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            outcomes[event.activity_task_completed_event_attributes.scheduled_event_id] = "completed"
    run_id = ""
    if history.events:
        run_id = history.events[0].workflow_execution_started_event_attributes.original_execution_run_id
    for event in reversed(history.events):
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name != "dispatch":
            continue
        [input] = await converter.decode(attrs.input.payloads, [DispatchInput])
        if isinstance(input, DispatchInput) and input.row.row_id == row_id:
            return RecordedDispatch(input, run_id, outcomes.get(event.event_id, "no outcome recorded"))
    return None


async def _failure_text(failure, converter: DataConverter) -> str:  # noqa: ANN001 - a Failure proto
    """``failed: <message>`` of a recorded failure, decoded when the codec encrypted its attributes."""
    try:
        error = converter.failure_converter.from_failure(failure, converter.payload_converter)
        if converter.payload_codec is not None:
            await converter.payload_codec.decode_failure(failure)
            error = converter.failure_converter.from_failure(failure, converter.payload_converter)
        message = getattr(error, "message", None) or str(error)
    except Exception:  # an undecodable failure still says it failed
        message = failure.message
    return "failed: " + " ".join(str(message).split())


async def rerun(
    input: DispatchInput,
    *,
    backend: BackendSpec | None = None,
    token_for: TokenLookup | None = None,
) -> BackendResponse:
    """Run the backend once on the recorded message, in this process; nothing is replied to anyone.

    Args:
        input: The recorded ``dispatch`` input.
        backend: Another backend (or options) to try instead of the recorded one.
        token_for: Token lookup, needed only for a body passed by reference (re-read from the platform).

    Returns:
        The backend's answer (reply parts).

    Raises:
        RerunError: The row has no message, or its body must be re-read and there is no token (or it cannot be).
        activities.backends.base.BackendConfigError: Unknown backend or bad options.
        activities.backends.base.BackendError: The backend failed (what the dispatch saw).
    """
    row = input.row
    if row.message is None:
        raise RerunError(f"row {row.row_id} has no message to dispatch")
    message, text = row.message, row.message_text
    if row.body_ref is not None:
        message, text = await _read_body(input, token_for)
    request = BackendRequest(
        workspace_id=input.target.workspace_id,
        row_id=row.row_id,
        source_id=row.source_id,
        lane=input.lane,
        message=message,
        text=text,
        attempt=input.attempt or 1,
    )
    spec = backend or input.backend
    instance = create_backend(spec.name, spec.options)
    try:
        return await instance.handle(request)
    finally:
        await instance.close()


async def _read_body(input: DispatchInput, token_for: TokenLookup | None):  # noqa: ANN202 - (message, text)
    """Re-read a body passed by reference from the platform, as ``dispatch`` does."""
    from temporalio.exceptions import ApplicationError

    from activities.platform import RowNotFoundError
    from worker.assemble import HTTP_LIMITS, HTTP_TIMEOUT
    from worker.http import platform_client

    workspace_id = input.target.workspace_id
    if token_for is None:
        raise RerunError(
            f"row {input.row.row_id}'s body was passed by reference (over 256 KiB) and is not in history: set "
            f"MOLECULE_WORKSPACE_TOKEN (of {workspace_id}) or MOLECULE_TOKENS_FILE to re-read it from "
            f"{input.target.platform_url}"
        )
    http = platform_client(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS)
    try:
        platform = PlatformActivities(http, token_for)
        body = await platform.read_body(input.target, input.row)
    except RowNotFoundError as err:
        raise RerunError(f"cannot re-read row {input.row.row_id}'s body: {err.reason}") from None
    except ApplicationError as err:
        raise RerunError(f"cannot re-read row {input.row.row_id}'s body from the platform: {err.message}") from None
    finally:
        await http.aclose()
    parsed = parse_inbound(body)
    return parsed.message, parsed.text
