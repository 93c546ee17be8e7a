"""OpenTelemetry tracing of a worker: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

:func:`worker_interceptors` reads the standard ``OTEL_*`` environment variables: with an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and ``OTEL_SDK_DISABLED`` not ``true``,
it installs a global tracer provider exporting over OTLP/HTTP (protobuf) in batches, and returns the interceptors
:func:`worker.assemble.running_worker` gives the worker:

- the SDK's ``temporalio.contrib.opentelemetry.TracingInterceptor``: a ``RunActivity:<name>`` span per activity
  (``session``, ``dispatch``, ``reply``, ``register``), and in workflows a zero-length
  ``StartActivity:<name>`` span that parents it;
- :class:`MessageSpans`: puts ``molecule.workspace_id``, ``molecule.row_id`` and ``molecule.lane`` on those spans,
  links a poll batch to the messages it read, and writes each message's root span ``receive``.

Each message gets its own trace (``activities.tracing``); a poll batch, whose context the workflow does not carry,
starts a new trace of its own. The exporter, batching, sampler and resource follow the usual variables
(``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``...); the service name defaults to ``molecule-connect``.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Mapping
from typing import Any

import opentelemetry.context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from temporalio import activity
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.messages import DispatchInput, PollResult, ReplyInput, SessionResult
from activities.tracing import ROW_ID, WORKSPACE_ID, message_attributes, message_span_context

DEFAULT_SERVICE_NAME = "molecule-connect"
"""``service.name`` unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names one."""

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
"""Either turns tracing on."""

MAX_ROW_IDS = 100
"""A poll span lists at most this many row ids (a batch holds up to 500 rows)."""

_root_span_context: contextvars.ContextVar[trace.SpanContext | None] = contextvars.ContextVar(
    "molecule_connect_root_span_context", default=None
)
_provider: TracerProvider | None = None


class MessageRootIds(IdGenerator):
    """Random ids, except while :class:`MessageSpans` writes a message's root span: then the row's derived ids."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        """The forced root's span id, else a random one."""
        forced = _root_span_context.get()
        return forced.span_id if forced is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        """The forced root's trace id, else a random one."""
        forced = _root_span_context.get()
        return forced.trace_id if forced is not None else self._random.generate_trace_id()


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for tracing: an OTLP endpoint is set and ``OTEL_SDK_DISABLED`` is not true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def install(processor: SpanProcessor) -> TracerProvider:
    """Install this package's global tracer provider (once per process) and add ``processor`` to it.

    The provider uses :class:`MessageRootIds`, the sampler of ``OTEL_TRACES_SAMPLER`` and a resource from
    ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME`` (service name :data:`DEFAULT_SERVICE_NAME` otherwise).

    Args:
        processor: Where spans go, e.g. a ``BatchSpanProcessor`` of an OTLP exporter, or a
            ``SimpleSpanProcessor`` of an in-memory exporter in tests.

    Returns:
        The provider (the same one on every call).
    """
    global _provider
    if _provider is None:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        _provider = TracerProvider(resource=resource, id_generator=MessageRootIds())
        trace.set_tracer_provider(_provider)
    _provider.add_span_processor(processor)
    return _provider


def tracing_interceptors() -> list[Interceptor]:
    """The SDK's ``TracingInterceptor`` and :class:`MessageSpans`, in that order (a worker's ``interceptors``)."""
    return [TracingInterceptor(), MessageSpans()]


def worker_interceptors(environ: Mapping[str, str] = os.environ) -> list[Interceptor]:
    """The interceptors tracing needs when the environment turns it on (see the module docs), else none.

    The first call that finds tracing configured installs the provider with an OTLP/HTTP exporter.
    """
    if not tracing_configured(environ):
        return []
    if _provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        install(BatchSpanProcessor(OTLPSpanExporter()))
    return tracing_interceptors()


class MessageSpans(Interceptor):
    """Worker interceptor: message attributes on activity spans, poll links and each message's root span.

    Listed after ``TracingInterceptor``, so the ``RunActivity`` span is current when it runs.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap activity execution (see :class:`_MessageSpansInbound`)."""
        return _MessageSpansInbound(next)


class _MessageSpansInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        span = trace.get_current_span()
        if not span.is_recording():
            return await self.next.execute_activity(input)
        arg = input.args[0] if input.args else None
        if isinstance(arg, DispatchInput):
            span.set_attributes(message_attributes(arg.target.workspace_id, arg.row, arg.lane))
            span.set_attributes({"molecule.backend": arg.backend.name, "molecule.attempt": activity.info().attempt})
        elif isinstance(arg, ReplyInput):
            span.set_attributes(message_attributes(arg.target.workspace_id, arg.row))
            span.set_attribute("molecule.error_reply", arg.is_error)
        elif arg is not None and hasattr(arg, "target"):
            span.set_attribute(WORKSPACE_ID, arg.target.workspace_id)
        result = await self.next.execute_activity(input)
        batch = result.poll if isinstance(result, SessionResult) else result
        if isinstance(batch, PollResult) and arg is not None:
            _record_batch(span, arg.target.workspace_id, batch)
        return result


def _record_batch(span: trace.Span, workspace_id: str, result: PollResult) -> None:
    """Describe a poll batch on its span, link it to each message's trace and write the messages' root spans.

    ``molecule.rows`` counts every row read; ``molecule.row_ids`` and the links name the messages among them (rows
    the connector skips, such as its own notify echoes, have no trace).
    """
    messages = [row for row in result.rows if row.outcome != "skip"]
    span.set_attributes(
        {"molecule.rows": len(result.rows), "molecule.row_ids": [row.row_id for row in messages[:MAX_ROW_IDS]]}
    )
    for row in messages:
        span.add_link(message_span_context(workspace_id, row.row_id), {ROW_ID: row.row_id})
    if _provider is None:
        return  # another provider is installed: it cannot be asked for the roots' ids
    root_tracer = _provider.get_tracer("molecule_connect")
    now = time.time_ns()
    for row in messages:
        created = int(row.created_at.timestamp() * 1e9) if row.created_at is not None else now
        token = _root_span_context.set(message_span_context(workspace_id, row.row_id))
        try:
            receive = root_tracer.start_span(
                "receive",
                context=opentelemetry.context.Context(),
                kind=trace.SpanKind.CONSUMER,
                attributes={**message_attributes(workspace_id, row), "molecule.outcome": row.outcome},
                links=[trace.Link(span.get_span_context())],
                start_time=min(created, now),
            )
        finally:
            _root_span_context.reset(token)
        receive.end(end_time=now)
