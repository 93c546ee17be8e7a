"""The http backend against a real A2A v0.3 agent built with the ``a2a-sdk`` package, served by uvicorn on loopback.

The agent's behaviour is picked by the message text: ``message …`` answers with a Message, ``task …`` with a
completed Task holding artifacts, ``ask`` leaves the task ``input-required``, ``fail`` fails it, ``unsupported`` and
``invalid`` raise the SDK's -32004 and -32602 errors, and ``crash`` raises inside the agent (-32603). Paths in front
of the JSON-RPC endpoint add auth (``/secure``) and outages (``/unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.apps import A2AStarletteApplication
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    InvalidParamsError,
    Part,
    UnsupportedOperationError,
)
from a2a.types import DataPart as SdkDataPart
from a2a.types import TextPart as SdkTextPart
from a2a.utils import new_agent_text_message, new_task
from a2a.utils.errors import ServerError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.a2a import A2AMessage, DataPart, TextPart
from activities.backends import create_backend
from activities.backends.base import BackendConfigError, BackendError, BackendRequest, PermanentBackendError
from activities.backends.http import HttpBackend
from activities.dispatch import DispatchActivities
from activities.errors import ErrorType
from activities.messages import BackendSpec, DispatchInput, PlatformTarget, PolledRow

SECRET = "Bearer agent-secret-1"


class ScriptedAgent(AgentExecutor):
    """An A2A agent whose answer depends on the first word of the message; it records what it received."""

    def __init__(self) -> None:
        self.received: list[RequestContext] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.received.append(context)
        text = context.get_user_input()
        command, _, rest = text.partition(" ")
        if command == "message":
            await event_queue.enqueue_event(new_agent_text_message(f"echo: {rest}", context.context_id))
            return
        if command == "unsupported":
            raise ServerError(error=UnsupportedOperationError())
        if command == "invalid":
            raise ServerError(error=InvalidParamsError(message="no such skill"))
        if command == "crash":
            raise RuntimeError("agent crashed")
        assert context.message is not None
        task = context.current_task or new_task(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if command == "ask":
            question = updater.new_agent_message([Part(root=SdkTextPart(text="which environment?"))])
            await updater.requires_input(question, final=True)
        elif command == "fail":
            reason = updater.new_agent_message([Part(root=SdkTextPart(text="disk full"))])
            await updater.failed(reason)
        else:
            await updater.add_artifact([Part(root=SdkTextPart(text=f"report on {rest}"))], name="report")
            await updater.add_artifact([Part(root=SdkDataPart(data={"words": len(rest.split())}))], name="stats")
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise ServerError(error=UnsupportedOperationError())


@dataclass
class RunningAgent:
    """The agent served on loopback, and what its front door saw."""

    url: str
    executor: ScriptedAgent
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _front_door(app: Any, agent: RunningAgent) -> Any:
    """ASGI wrapper: record headers and bodies; ``/secure`` needs the secret, ``/unavailable`` answers 503."""

    async def respond(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        agent.headers.append(headers)
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        raw = b"".join(chunks)
        if raw:
            agent.bodies.append(orjson.loads(raw))
        path = scope["path"]
        if path == "/unavailable":
            await respond(send, 503, b"upstream is restarting")
            return
        if path == "/secure":
            if headers.get("authorization") != SECRET:
                await respond(send, 401, b"bad credentials")
                return
            scope = {**scope, "path": "/", "raw_path": b"/"}

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        await app(scope, replay, send)

    return wrapped


@pytest.fixture(scope="module")
def agent_server() -> Iterator[RunningAgent]:
    logging.getLogger("a2a").setLevel(logging.CRITICAL)  # the SDK logs a traceback for each scripted error
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    executor = ScriptedAgent()
    card = AgentCard(
        name="scripted",
        description="test agent",
        url=f"http://127.0.0.1:{port}/",
        version="1.0",
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        capabilities=AgentCapabilities(),
        skills=[],
    )
    handler = DefaultRequestHandler(agent_executor=executor, task_store=InMemoryTaskStore())
    agent = RunningAgent(url=f"http://127.0.0.1:{port}", executor=executor)
    app = _front_door(A2AStarletteApplication(agent_card=card, http_handler=handler).build(), agent)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "A2A test agent did not start"
        time.sleep(0.01)
    try:
        yield agent
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def agent(agent_server: RunningAgent) -> RunningAgent:
    agent_server.headers.clear()
    agent_server.bodies.clear()
    agent_server.executor.received.clear()
    return agent_server


@pytest_asyncio.fixture
async def backend(agent: RunningAgent) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend({"url": f"{agent.url}/"})
    yield backend
    await backend.close()


def _request(text: str, *, context_id: str | None = "ctx-42", task_id: str | None = None) -> BackendRequest:
    return BackendRequest(
        workspace_id="ws-1",
        row_id="row-7",
        source_id="ws-peer",
        lane=context_id or "ws-peer",
        message=A2AMessage(
            message_id=f"msg-{uuid.uuid4()}",
            context_id=context_id,
            task_id=task_id,
            parts=[TextPart(text=text)],
            metadata={"auto_reply_depth": 1},
        ),
        text=text,
        attempt=2,
    )


async def test_http_message_result_gives_its_parts(agent: RunningAgent, backend: HttpBackend):
    request = _request("message hello there", task_id="sender-task-9")

    response = await backend.handle(request)

    assert response.parts == [TextPart(text="echo: hello there")]
    [received] = agent.executor.received
    assert received.message is not None
    assert received.message.message_id == request.message.message_id
    assert received.context_id == "ctx-42"
    assert received.message.metadata == {"auto_reply_depth": 1}
    [body] = agent.bodies
    assert body["method"] == "message/send"
    assert body["params"]["configuration"] == {"blocking": True}
    assert "taskId" not in body["params"]["message"]
    assert body["params"]["metadata"]["molecule"] == {
        "workspace_id": "ws-1",
        "row_id": "row-7",
        "source_id": "ws-peer",
        "lane": "ctx-42",
        "attempt": 2,
    }
    assert agent.headers[0]["content-type"] == "application/json"


async def test_http_completed_task_gives_artifact_parts(backend: HttpBackend):
    response = await backend.handle(_request("task quarterly sales figures"))

    assert response.parts == [TextPart(text="report on quarterly sales figures"), DataPart(data={"words": 3})]


async def test_http_input_required_task_is_reported_as_text(backend: HttpBackend):
    response = await backend.handle(_request("ask"))

    assert response.parts == [TextPart(text="input required: which environment?")]


async def test_http_failed_task_is_reported_with_its_status_message(backend: HttpBackend):
    response = await backend.handle(_request("fail"))

    assert response.parts == [TextPart(text="task failed: disk full")]


@pytest.mark.parametrize(("text", "code"), [("unsupported", -32004), ("invalid", -32602)])
async def test_http_permanent_rpc_error_raises_permanent_backend_error(backend: HttpBackend, text: str, code: int):
    with pytest.raises(PermanentBackendError, match=f"agent error {code}"):
        await backend.handle(_request(text))


async def test_http_internal_error_is_transient(backend: HttpBackend):
    with pytest.raises(BackendError, match="agent error -32603: agent crashed") as caught:
        await backend.handle(_request("crash"))

    assert not isinstance(caught.value, PermanentBackendError)


async def test_http_auth_header_value_comes_from_named_env_var(agent: RunningAgent, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENT_AUTH", SECRET)
    backend = HttpBackend({"url": f"{agent.url}/secure", "auth_env": "AGENT_AUTH"})
    try:
        response = await backend.handle(_request("message authorized"))
        monkeypatch.setenv("AGENT_AUTH", "Bearer rotated-wrong")
        with pytest.raises(BackendConfigError, match=r"HTTP 401 bad credentials; check -o auth_env") as caught:
            await backend.handle(_request("message again"))
    finally:
        await backend.close()

    assert response.parts == [TextPart(text="echo: authorized")]
    assert agent.headers[0]["authorization"] == SECRET
    assert "rotated-wrong" not in str(caught.value)


async def test_http_custom_auth_header_name(agent: RunningAgent, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENT_KEY", "k-123")
    backend = HttpBackend({"url": agent.url, "auth_env": "AGENT_KEY", "auth_header": "X-Api-Key"})
    try:
        await backend.handle(_request("message hi"))
    finally:
        await backend.close()

    assert agent.headers[0]["x-api-key"] == "k-123"
    assert "authorization" not in agent.headers[0]


async def test_http_auth_env_unset_raises_config_error_naming_variable(
    agent: RunningAgent, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("AGENT_AUTH_MISSING", raising=False)
    backend = HttpBackend({"url": agent.url, "auth_env": "AGENT_AUTH_MISSING"})
    try:
        with pytest.raises(BackendConfigError, match="AGENT_AUTH_MISSING is not set"):
            await backend.handle(_request("message hi"))
    finally:
        await backend.close()

    assert agent.headers == []


async def test_http_5xx_is_transient_and_404_is_config_error(agent: RunningAgent):
    unavailable = HttpBackend({"url": f"{agent.url}/unavailable"})
    missing = HttpBackend({"url": f"{agent.url}/no/such/path"})
    try:
        with pytest.raises(BackendError, match="HTTP 503 upstream is restarting") as transient:
            await unavailable.handle(_request("message x"))
        with pytest.raises(BackendConfigError, match="HTTP 404.*check -o url"):
            await missing.handle(_request("message x"))
    finally:
        await unavailable.close()
        await missing.close()

    assert not isinstance(transient.value, PermanentBackendError)


async def test_http_connection_refused_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = HttpBackend({"url": f"http://127.0.0.1:{port}/"})
    try:
        with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}/: ConnectError") as caught:
            await backend.handle(_request("message x"))
    finally:
        await backend.close()

    assert not isinstance(caught.value, PermanentBackendError)


def _rpc(body: dict[str, Any], result: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": result})


async def test_http_working_task_is_polled_with_tasks_get_until_completed():
    """An agent that answers before the task is done: the backend reads the task again until it finishes."""
    calls: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        calls.append(body)
        state = "working" if len(calls) < 3 else "completed"
        task = {"kind": "task", "id": "t-1", "contextId": "ctx-42", "status": {"state": state}}
        if state == "completed":
            task["artifacts"] = [{"artifactId": "a", "parts": [{"kind": "text", "text": "done"}]}]
        return _rpc(body, task)

    backend = HttpBackend(
        {"url": "http://agent.test/", "poll_interval": "10ms"}, transport=httpx.MockTransport(handler)
    )
    try:
        response = await backend.handle(_request("task x"))
    finally:
        await backend.close()

    assert response.parts == [TextPart(text="done")]
    assert [call["method"] for call in calls] == ["message/send", "tasks/get", "tasks/get"]
    assert calls[1]["params"] == {"id": "t-1"}


async def test_http_no_final_answer_within_timeout_is_transient():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={})

    backend = HttpBackend({"url": "http://agent.test/", "timeout": "100ms"}, transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(BackendError, match="no final answer from http://agent.test/ within 100ms"):
            await backend.handle(_request("message x"))
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (httpx.Response(200, text="<html>hi</html>"), "answer is not JSON"),
        (httpx.Response(200, json={"jsonrpc": "2.0", "id": "1"}), "neither a result object nor an error"),
        (httpx.Response(429, text="slow down"), "HTTP 429 slow down"),
    ],
)
async def test_http_unusable_answers_are_transient(answer: httpx.Response, match: str):
    backend = HttpBackend({"url": "http://agent.test/"}, transport=httpx.MockTransport(lambda _: answer))
    try:
        with pytest.raises(BackendError, match=match) as caught:
            await backend.handle(_request("message x"))
    finally:
        await backend.close()

    assert not isinstance(caught.value, PermanentBackendError)


async def test_http_other_4xx_is_permanent():
    answer = httpx.Response(413, text="too large")
    backend = HttpBackend({"url": "http://agent.test/"}, transport=httpx.MockTransport(lambda _: answer))
    try:
        with pytest.raises(PermanentBackendError, match="HTTP 413 too large"):
            await backend.handle(_request("message x"))
    finally:
        await backend.close()


async def test_dispatch_permanent_backend_error_is_non_retryable_backend_failed(agent: RunningAgent):
    """Through the dispatch activity: a -32602 is dead-lettered at once, a -32603 is retried."""
    activities = DispatchActivities()
    spec = BackendSpec(name="http", options={"url": agent.url})

    def input_for(text: str) -> DispatchInput:
        request = _request(text)
        row = PolledRow(row_id="row-7", outcome="deliver", message=request.message, text=text)
        target = PlatformTarget(workspace_id="ws-1", platform_url="http://platform.test")
        return DispatchInput(target=target, backend=spec, row=row, lane="ctx-42")

    env = ActivityEnvironment()
    try:
        with pytest.raises(ApplicationError) as permanent:
            await env.run(activities.dispatch, input_for("invalid"))
        with pytest.raises(ApplicationError) as transient:
            await env.run(activities.dispatch, input_for("crash"))
        result = await env.run(activities.dispatch, input_for("message ok"))
    finally:
        await activities.close()

    assert (permanent.value.type, permanent.value.non_retryable) == (ErrorType.BACKEND_FAILED, True)
    assert (transient.value.type, transient.value.non_retryable) == (ErrorType.BACKEND_FAILED, False)
    assert result.parts == [TextPart(text="echo: ok")]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "http: missing required option 'url' (-o url=...)"),
        ({"url": "ftp://agent"}, "http: option 'url': 'ftp://agent' is not an http:// or https:// URL"),
        ({"url": "http://a", "auth_env": "Bearer xyz"}, "http: option 'auth_env': 'Bearer xyz' is not an environment"),
        ({"url": "http://a", "auth_header": "Bad Header"}, "http: option 'auth_header': 'Bad Header' is not an HTTP"),
        ({"url": "http://a", "token": "x"}, "http: unknown option 'token' (known: url, auth_env, auth_header,"),
    ],
)
def test_http_bad_options_raise_config_error(options: dict[str, str], expected: str):
    with pytest.raises(BackendConfigError) as caught:
        create_backend("http", options)

    assert str(caught.value).startswith(expected), str(caught.value)
