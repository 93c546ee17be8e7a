"""OpenTelemetry spans of one message, and the trace every message gets.

Each inbox row has its own trace, whose id is derived from the row: the first 16 bytes of
``sha256("<workspace_id>/<row_id>")``, and the next 8 the id of its root span. Everything about the message joins
it wherever and whenever it runs: the workflow makes the message's trace current while a lane delivers it
(:func:`message_trace`), so the SDK's ``TracingInterceptor`` puts the ``dispatch`` and ``reply`` activities in
it; a dispatch retried an hour later, or redriven next week, lands in the same trace. The root span itself
(``receive``: from the row's ``created_at`` to the poll that read it) is written by the worker
(``worker.tracing``), the only place with a tracer provider.

Spans carry ids only (``molecule.workspace_id``, ``molecule.row_id``, ``molecule.lane``), never a message body or
a token. Until a tracer provider is installed, the helpers here do nothing (about 4 µs a message).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import opentelemetry.context
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from activities.messages import DispatchInput, PolledRow

WORKSPACE_ID = "molecule.workspace_id"
"""Span attribute: our workspace."""
ROW_ID = "molecule.row_id"
"""Span attribute: the inbox row (the message)."""
LANE = "molecule.lane"
"""Span attribute: the conversation (``ctx:<contextId>``, ``peer:<workspace id>`` or ``canvas``)."""

MAX_LANE_CHARS = 256
"""A ``contextId`` is chosen by the sender: attributes keep at most this much of it."""

tracer = trace.get_tracer("molecule_connect")
"""The connector's tracer (the global provider's, set by ``worker.tracing`` when tracing is on)."""


def tracing_on() -> bool:
    """Whether a tracer provider is installed (``worker.tracing``); a process-wide fact, read without I/O."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def message_span_context(workspace_id: str, row_id: str) -> trace.SpanContext:
    """The span context of a message's root span: trace and span ids derived from the row, sampled.

    Deterministic and free of I/O, so workflow code may call it, and every process computes the same ids.

    Args:
        workspace_id: Our workspace.
        row_id: The inbox row.

    Returns:
        A remote span context (trace id = ``sha256(workspace_id/row_id)[:16]``, span id = the next 8 bytes).
    """
    digest = hashlib.sha256(f"{workspace_id}/{row_id}".encode()).digest()
    return trace.SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


@contextlib.contextmanager
def message_trace(workspace_id: str, row_id: str) -> Iterator[None]:
    """Make a message's trace the current OpenTelemetry context for the block (workflow code).

    Activities started inside the block get it as their parent through the ``TracingInterceptor``'s headers.
    Only a context variable changes: no command, no history event, nothing to replay differently.
    """
    if not tracing_on():
        yield
        return
    context = trace.set_span_in_context(trace.NonRecordingSpan(message_span_context(workspace_id, row_id)))
    token = opentelemetry.context.attach(context)
    try:
        yield
    finally:
        # Not ``opentelemetry.context.detach``: a lane abandoned by an evicted workflow is finalised in another
        # context, where the reset fails harmlessly and ``detach`` would log an error.
        with contextlib.suppress(ValueError):
            token.var.reset(token)  # type: ignore[attr-defined]


def message_attributes(workspace_id: str, row: PolledRow, lane: str | None = None) -> dict[str, AttributeValue]:
    """``molecule.workspace_id``, ``molecule.row_id`` and ``molecule.lane`` of one message.

    Args:
        workspace_id: Our workspace.
        row: The message's row.
        lane: Its lane; computed from the row when ``None`` (as the workflow does).
    """
    return {
        WORKSPACE_ID: workspace_id,
        ROW_ID: row.row_id,
        LANE: (lane if lane is not None else row.lane)[:MAX_LANE_CHARS],
    }


def backend_span(input: DispatchInput) -> contextlib.AbstractContextManager[trace.Span]:
    """A ``backend`` span around the backend call of a dispatch (a child of the ``dispatch`` activity's span)."""
    if not tracing_on():
        return contextlib.nullcontext(trace.INVALID_SPAN)
    attributes = {
        **message_attributes(input.target.workspace_id, input.row, input.lane),
        "molecule.backend": input.backend.name,
    }
    return tracer.start_as_current_span("backend", attributes=attributes)


def reply_span(input: DispatchInput) -> contextlib.AbstractContextManager[trace.Span]:
    """A ``reply`` span around the reply a dispatch sends itself (the ``reply`` activity has the SDK's span)."""
    if not tracing_on():
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return tracer.start_as_current_span(
        "reply", attributes=message_attributes(input.target.workspace_id, input.row, input.lane)
    )
