"""OpenTelemetry tracing: one trace per message (receive → dispatch → backend, reply), ids only in spans.

In-process tests collect spans with the SDK's in-memory exporter; the last test runs ``molecule-connect worker``
with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a small OTLP/HTTP receiver, as an operator would turn it on.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.tracing import message_span_context
from devplatform.client import CreatedWorkspace
from tests.helpers import Harness, wait_until
from worker.replay import fetch_history, load_history, replay
from worker.settings import workflow_id
from worker.tracing import install, tracing_configured, tracing_interceptors
from workflows.connect import ConnectWorkflow

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")
HISTORIES = Path(__file__).resolve().parent.parent / "histories"
BODY_TEXT = "tell nobody: the vault code is 4711"
MESSAGE_SPANS = {"receive", "StartActivity:dispatch", "RunActivity:dispatch", "backend", "reply"}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (installed once) exporting to memory, emptied before each test."""
    memory = InMemorySpanExporter()
    install(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def _trace(spans: InMemorySpanExporter, workspace_id: str, row_id: str) -> dict[str, list[ReadableSpan]]:
    trace_id = message_span_context(workspace_id, row_id).trace_id
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        if span.context is not None and span.context.trace_id == trace_id:
            by_name.setdefault(span.name, []).append(span)
    return by_name


async def _message_row_id(harness: Harness, workspace_id: str) -> str | None:
    rows = [row for row in await harness.admin.rows(workspace_id) if row.get("method") == "message/send"]
    return rows[0]["id"] if rows else None


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _texts(span: ReadableSpan) -> list[str]:
    """Every string a span exports besides its name: attributes, events, links and status."""
    texts = [str(value) for value in (span.attributes or {}).values()]
    for event in span.events:
        texts += [event.name, *(str(value) for value in (event.attributes or {}).values())]
    for link in span.links:
        texts += [str(value) for value in (link.attributes or {}).values()]
    texts.append(span.status.description or "")
    return texts


def _assert_no_secrets(spans: list[ReadableSpan], *workspaces: CreatedWorkspace) -> None:
    secrets = [BODY_TEXT, "vault code", *(ws.token for ws in workspaces if ws.token)]
    for span in spans:
        for text in _texts(span):
            assert not any(secret in text for secret in secrets), (span.name, text)


@pytest.mark.parametrize("dispatch_as", ["local", "activity"])
async def test_message_gets_one_trace_receive_dispatch_backend_reply(
    harness: Harness, spans: InMemorySpanExporter, dispatch_as: str
) -> None:
    """The poll batch links to the message's trace; dispatch, its backend call and its reply all sit in it."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker(interceptors=tracing_interceptors()):
        await harness.start(agent, dispatch_as=dispatch_as)
        await harness.admin.send_text(agent.id, BODY_TEXT, sender=peer, context_id="conv-trace")
        row_id = await wait_until(lambda: _message_row_id(harness, agent.id), message="row stored")
        trace = await wait_until(
            lambda: (found := _trace(spans, agent.id, row_id)) and MESSAGE_SPANS <= found.keys() and found,
            message="the message's spans",
        )
        await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="reply")

    root = message_span_context(agent.id, row_id)
    ids = {"molecule.workspace_id": agent.id, "molecule.row_id": row_id, "molecule.lane": "ctx:conv-trace"}
    [receive] = trace["receive"]
    assert receive.parent is None and _span_id(receive) == root.span_id
    assert ids.items() <= dict(receive.attributes or {}).items()
    [start] = trace["StartActivity:dispatch"]
    assert _parent_id(start) == root.span_id
    [dispatch] = trace["RunActivity:dispatch"]
    assert _parent_id(dispatch) == _span_id(start)
    assert ids.items() <= dict(dispatch.attributes or {}).items()
    assert (dispatch.attributes or {})["molecule.attempt"] == 1
    [backend] = trace["backend"]
    [reply] = trace["reply"]
    assert _parent_id(backend) == _parent_id(reply) == _span_id(dispatch)
    assert ids.items() <= dict(backend.attributes or {}).items()
    assert ids.items() <= dict(reply.attributes or {}).items()
    assert backend.end_time is not None and reply.start_time is not None and backend.end_time <= reply.start_time

    polls = [
        span
        for span in spans.get_finished_spans()
        if span.name == "RunActivity:session" and row_id in tuple((span.attributes or {}).get("molecule.row_ids", ()))
    ]
    assert len(polls) == 1
    [poll] = polls
    assert (poll.attributes or {})["molecule.workspace_id"] == agent.id
    assert [link.context.span_id for link in poll.links] == [root.span_id]
    assert [link.context.span_id for link in receive.links] == [_span_id(poll)]
    assert poll.context is not None and poll.context.trace_id != root.trace_id

    _assert_no_secrets(list(spans.get_finished_spans()), agent, peer)


async def test_reply_activity_joins_the_message_trace(harness: Harness, spans: InMemorySpanExporter) -> None:
    """When the reply sent with the dispatch fails, the ``reply`` activity that retries it is in the same trace."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker(interceptors=tracing_interceptors()):
        await harness.start(agent, dispatch_as="activity")
        await harness.admin.add_fault(f"/workspaces/{peer.id}/a2a", status=503, count=1, method="POST")
        await harness.admin.send_text(agent.id, BODY_TEXT, sender=peer)
        row_id = await wait_until(lambda: _message_row_id(harness, agent.id), message="row stored")
        trace = await wait_until(
            lambda: (found := _trace(spans, agent.id, row_id)) and "RunActivity:reply" in found and found,
            message="the reply activity's span",
        )
        await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="reply")

    [failed] = trace["reply"]
    assert failed.status.status_code.name == "ERROR"
    [start] = trace["StartActivity:reply"]
    assert _parent_id(start) == message_span_context(agent.id, row_id).span_id
    [reply] = trace["RunActivity:reply"]
    assert _parent_id(reply) == _span_id(start)
    lane = f"peer:{peer.id}"
    assert {"molecule.row_id": row_id, "molecule.lane": lane, "molecule.error_reply": False}.items() <= dict(
        reply.attributes or {}
    ).items()
    _assert_no_secrets(list(spans.get_finished_spans()), agent, peer)


async def test_traced_history_replays_with_and_without_tracing_and_replay_writes_no_spans(
    harness: Harness, spans: InMemorySpanExporter
) -> None:
    """Tracing adds headers to scheduled activities, nothing else: histories replay either way."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker(interceptors=tracing_interceptors()):
        await harness.start(agent)
        await harness.admin.send_text(agent.id, BODY_TEXT, sender=peer, context_id="conv-replay")
        row_id = await wait_until(lambda: _message_row_id(harness, agent.id), message="row stored")
        await wait_until(lambda: "RunActivity:dispatch" in _trace(spans, agent.id, row_id), message="dispatch span")
    traced = await fetch_history(harness.client, workflow_id(agent.id))
    untraced = load_history(HISTORIES / "plain_delivery.json")
    spans.clear()

    [plain] = await replay([("traced", traced)])
    replayer = Replayer(
        workflows=[ConnectWorkflow], data_converter=pydantic_data_converter, interceptors=tracing_interceptors()
    )
    with_tracing = [
        await replayer.replay_workflow(history, raise_on_replay_failure=False) for history in (traced, untraced)
    ]

    assert plain.ok, plain.error
    assert [result.replay_failure for result in with_tracing] == [None, None]
    assert spans.get_finished_spans() == ()


def test_tracing_configured_by_the_otlp_endpoint_unless_sdk_disabled() -> None:
    assert not tracing_configured({})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"})


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: keeps the spans of every ``POST /v1/traces``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.spans: list[Any] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CollectorHandler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((resource_spans.resource, span) for span in scope_spans.spans)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_worker_exports_message_spans_over_otlp_when_the_endpoint_is_set(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path, collector: _Collector
) -> None:
    """``molecule-connect worker`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends the message's spans there."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(dict(harness.tokens)))
    tokens_file.chmod(0o600)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        "MOLECULE_CONNECT_STATE_DIR": str(tmp_path / "state"),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "MOLECULE_TOKENS_FILE": str(tokens_file),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "worker", "--task-queue", harness.task_queue],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await harness.start(agent)
        await harness.admin.send_text(agent.id, BODY_TEXT, sender=peer)
        row_id = await wait_until(lambda: _message_row_id(harness, agent.id), message="row stored")
        trace_id = message_span_context(agent.id, row_id).trace_id.to_bytes(16, "big")

        def exported() -> set[str]:
            with collector.lock:
                return {span.name for _, span in collector.spans if span.trace_id == trace_id}

        await wait_until(lambda: MESSAGE_SPANS <= exported(), message=f"spans at the collector ({log})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with collector.lock:
        resources = [dict((kv.key, kv.value.string_value) for kv in r.attributes) for r, _ in collector.spans]
        exported_text = b"".join(span.SerializeToString() for _, span in collector.spans)
    assert {"service.name": "molecule-connect", "deployment.environment": "test"}.items() <= resources[0].items()
    assert BODY_TEXT.encode() not in exported_text
    assert all(ws.token and ws.token.encode() not in exported_text for ws in (agent, peer))
