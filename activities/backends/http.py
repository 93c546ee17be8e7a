"""The ``http`` backend: forwards each message to an A2A agent as a v0.3 JSON-RPC ``message/send``.

Contract (docs/architecture.md §3, A2A v0.3 §7.1):

- Request: ``POST -o url`` with ``{"jsonrpc": "2.0", "id", "method": "message/send", "params": {"message",
  "configuration": {"blocking": true}, "metadata": {"molecule": {...}}}}``. The message keeps the inbound
  ``messageId`` (a retried dispatch is recognisably the same message), ``contextId`` (the agent sees one
  conversation), parts and metadata; ``taskId`` and ``referenceTaskIds`` are dropped, as they name tasks of the
  sender, not of this agent. ``params.metadata.molecule`` carries the workspace, row, sender and attempt.
- Auth: with ``-o auth_env=NAME`` the header ``-o auth_header`` (default ``Authorization``) is set to the value
  of the environment variable ``NAME``, verbatim (e.g. ``Bearer xyz``), read on every request so a rotated
  secret is picked up. The option names the variable; the secret never enters options, history or logs.
- Result: a ``Message`` gives its parts. A ``Task`` in a terminal state gives its artifacts' parts, else its
  status message's parts: ``completed`` as they are; ``failed``, ``canceled`` and ``rejected`` after a first text
  part ``task <state>: <status text>``; an interrupted ``input-required`` or ``auth-required`` task as
  ``input required: <status text>`` (the sender is asked, in the same conversation). A task still
  ``submitted`` or ``working`` is polled with ``tasks/get`` every ``-o poll_interval`` within ``-o timeout``.
- Errors: JSON-RPC -32700, -32600, -32601, -32602, -32004 and -32005 mean this request can never succeed:
  :class:`PermanentBackendError` (dead-lettered at once). -32603, other codes, network errors, timeouts, 408,
  425, 429 and 5xx are :class:`BackendError` (retried). 401/403 (credentials) and 404/405 (wrong URL) are
  :class:`BackendConfigError`: no message can succeed, so the workspace is blocked until it is fixed. Other
  4xx are permanent. Error text holds the URL, the status or code and at most 200 characters of the answer.
- One ``httpx.AsyncClient`` per backend instance, with explicit timeouts, closed by :meth:`HttpBackend.close`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import ValidationError, field_validator

from activities.a2a import DataPart, FilePart, TextPart
from activities.backends.base import (
    BackendConfigError,
    BackendError,
    BackendRequest,
    BackendResponse,
    PermanentBackendError,
)
from activities.backends.options import BackendOptions, Duration, format_duration, parse_options

logger = logging.getLogger(__name__)

PERMANENT_CODES: Mapping[int, str] = {
    -32700: "JSON parse error",
    -32600: "invalid request",
    -32601: "method not found",
    -32602: "invalid params",
    -32004: "unsupported operation",
    -32005: "content type not supported",
}
"""JSON-RPC / A2A error codes after which the same request would fail again: dead-letter, do not retry."""
TERMINAL_STATES = frozenset({"completed", "failed", "canceled", "rejected"})
INTERRUPTED_STATES = frozenset({"input-required", "auth-required"})
CONNECT_TIMEOUT_S = 10.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_EXCERPT = 200

ReplyPart = TextPart | FilePart | DataPart


class HttpOptions(BackendOptions):
    """Options of the ``http`` backend (``-o url=https://agent.example/a2a -o auth_env=AGENT_AUTH``)."""

    url: str
    """The agent's A2A JSON-RPC endpoint (http:// or https://)."""
    auth_env: str | None = None
    """Name of the environment variable whose value is sent verbatim as the auth header (e.g. "Bearer xyz")."""
    auth_header: str = "Authorization"
    """The header that carries the value of auth_env."""
    timeout: Duration = timedelta(minutes=5)
    """How long one message may take, waiting for a task to finish included (500ms, 30s, 5m, 1h)."""
    poll_interval: Duration = timedelta(seconds=2)
    """How often a task still submitted or working is read again with tasks/get."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    @field_validator("auth_env", mode="before")
    @classmethod
    def _env_name(cls, name: Any) -> Any:
        if name == "":
            return None
        if isinstance(name, str) and not _ENV_NAME.match(name):
            raise ValueError(
                f"{name!r} is not an environment variable name: put the secret in a variable and name it "
                "here (-o auth_env=AGENT_AUTH)"
            )
        return name

    @field_validator("auth_header")
    @classmethod
    def _header_name(cls, name: str) -> str:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        return name


class HttpBackend:
    """Forward each message to an A2A agent (``message/send``); see the module docstring.

    Concurrent dispatches share the instance and its connection pool.
    """

    summary: ClassVar[str] = "Forward each message to an A2A v0.3 agent (JSON-RPC message/send) and relay its answer."
    options_model: ClassVar[type[BackendOptions]] = HttpOptions

    def __init__(self, options: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Validate the options and create the connection pool.

        A missing ``auth_env`` variable only logs a warning here (the backend may be checked on a machine that
        is not the worker); each message then fails with :class:`BackendConfigError` until it is set.

        Args:
            options: ``url`` (required), ``auth_env``, ``auth_header``, ``timeout``, ``poll_interval``; see
                :class:`HttpOptions`.
            transport: The client's transport (tests pass an ``httpx.MockTransport``); default: the network.

        Raises:
            BackendConfigError: An unknown or malformed option, or a missing ``url``.
        """
        self.options = parse_options(HttpOptions, options, backend="http")
        auth_env = self.options.auth_env
        if auth_env is not None and not os.environ.get(auth_env):
            logger.warning("http: -o auth_env=%s names a variable that is not set here", auth_env)
        timeout_s = self.options.timeout.total_seconds()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout_s, write=30.0, pool=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            transport=transport,
        )

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Send the message to the agent and turn its ``Message`` or ``Task`` into reply parts.

        Args:
            request: The inbound message.

        Returns:
            The reply parts (see the module docstring for tasks).

        Raises:
            PermanentBackendError: The agent rejected the request (a permanent JSON-RPC code, or a 4xx).
            BackendError: A transient failure: network, timeout, 408/425/429/5xx, -32603 or another code, or
                an answer that is not JSON-RPC.
            BackendConfigError: 401/403/404/405, or ``auth_env`` names a variable that is not set.
        """
        headers = self._headers()
        try:
            async with asyncio.timeout(self.options.timeout.total_seconds()):
                result = await self._call(headers, "message/send", _send_params(request))
                while True:
                    kind, parts = _interpret(result)
                    if kind != "pending":
                        return BackendResponse(parts=parts)
                    await asyncio.sleep(self.options.poll_interval.total_seconds())
                    result = await self._call(headers, "tasks/get", {"id": str(result["id"])})
        except TimeoutError:
            raise BackendError(
                f"http: no final answer from {self.options.url} within {format_duration(self.options.timeout)}"
            ) from None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        """Content negotiation plus the auth header read from ``auth_env`` now."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        name = self.options.auth_env
        if name is not None:
            value = os.environ.get(name)
            if not value:
                raise BackendConfigError(f"http: -o auth_env={name}: the variable {name} is not set on this worker")
            headers[self.options.auth_header] = value
        return headers

    async def _call(self, headers: dict[str, str], method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One JSON-RPC call; the ``result`` object, or the error classified as in the module docstring."""
        url = self.options.url
        body = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
        try:
            response = await self._http.post(url, content=orjson.dumps(body), headers=headers)
        except httpx.TimeoutException as err:
            raise BackendError(f"http: {method} to {url} timed out ({type(err).__name__})") from None
        except httpx.HTTPError as err:
            raise BackendError(f"http: cannot reach {url}: {type(err).__name__}: {err}"[:300]) from None
        status = response.status_code
        if status >= 300:
            raise _status_error(method, url, response)
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BackendError(f"http: {method} to {url}: answer is not JSON: {_excerpt(response.text)}") from None
        if not isinstance(document, dict):
            raise BackendError(f"http: {method} to {url}: answer is not a JSON-RPC response object")
        error = document.get("error")
        if error is not None:
            raise _rpc_error(method, url, error)
        result = document.get("result")
        if not isinstance(result, dict):
            raise BackendError(f"http: {method} to {url}: answer has neither a result object nor an error")
        return result


def _send_params(request: BackendRequest) -> dict[str, Any]:
    """``message/send`` params for the inbound message (A2A v0.3 ``MessageSendParams``)."""
    message = request.message.model_dump(mode="json", exclude_none=True, exclude={"task_id", "reference_task_ids"})
    message.update(role="user", kind="message")
    molecule = {
        "workspace_id": request.workspace_id,
        "row_id": request.row_id,
        "source_id": request.source_id,
        "lane": request.lane,
        "attempt": request.attempt,
    }
    return {"message": message, "configuration": {"blocking": True}, "metadata": {"molecule": molecule}}


def _interpret(result: dict[str, Any]) -> tuple[str, list[ReplyPart]]:
    """Read a ``message/send`` or ``tasks/get`` result.

    Returns:
        ``("reply", parts)``, or ``("pending", [])`` for a task that is not finished yet.

    Raises:
        BackendError: A task without an id or state, or a result that is neither a Message nor a Task.
    """
    kind = result.get("kind")
    if kind == "message" or (kind is None and "parts" in result and "status" not in result):
        return "reply", _parts(result.get("parts")) or [TextPart(text="")]
    if kind != "task" and "status" not in result:
        raise BackendError(f"http: result is neither a Message nor a Task (kind {kind!r})")
    status = _object(result.get("status"))
    state = status.get("state")
    if not isinstance(state, str) or not result.get("id"):
        raise BackendError("http: task result without an id or status.state")
    status_parts = _parts(_object(status.get("message")).get("parts"))
    artifact_parts = [
        part
        for artifact in result.get("artifacts") or []
        if isinstance(artifact, dict)
        for part in _parts(artifact.get("parts"))
    ]
    if state == "completed":
        return "reply", artifact_parts or status_parts or [TextPart(text="")]
    if state in TERMINAL_STATES or state in INTERRUPTED_STATES:
        label = f"task {state}" if state in TERMINAL_STATES else state.replace("-", " ")
        text = "\n".join(part.text for part in status_parts if isinstance(part, TextPart))
        others = [part for part in status_parts if not isinstance(part, TextPart)]
        return "reply", [TextPart(text=f"{label}: {text}" if text else label), *others, *artifact_parts]
    return "pending", []


def _object(value: Any) -> dict[str, Any]:
    """A JSON object member, or ``{}`` when it is absent or not an object."""
    return value if isinstance(value, dict) else {}


def _parts(raw: Any) -> list[ReplyPart]:
    """Validate A2A parts, dropping (and logging) those of an unknown kind or shape."""
    if not isinstance(raw, list):
        return []
    parts: list[ReplyPart] = []
    models: dict[Any, type[ReplyPart]] = {"text": TextPart, "file": FilePart, "data": DataPart}
    for item in raw:
        model = models.get(item.get("kind")) if isinstance(item, dict) else None
        if model is None:
            logger.warning("http: dropped a reply part of unknown kind")
            continue
        try:
            parts.append(model.model_validate(item))
        except ValidationError:
            logger.warning("http: dropped a malformed %s part", item.get("kind"))
    return parts


def _excerpt(text: str) -> str:
    """At most 200 characters of an answer, on one line."""
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


def _status_error(method: str, url: str, response: httpx.Response) -> Exception:
    """A non-2xx HTTP answer as the exception of its class (module docstring)."""
    status = response.status_code
    detail = f"http: {method} to {url}: HTTP {status} {_excerpt(response.text)}".rstrip()
    if status in (401, 403):
        return BackendConfigError(f"{detail}; check -o auth_env and the variable's value")
    if status in (404, 405):
        return BackendConfigError(f"{detail}; check -o url (the agent's JSON-RPC endpoint)")
    if status in (408, 425, 429) or status >= 500:
        return BackendError(detail)
    return PermanentBackendError(detail)


def _rpc_error(method: str, url: str, error: Any) -> BackendError:
    """A JSON-RPC ``error`` member as the exception of its class (module docstring)."""
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    data = error.get("data") if isinstance(error, dict) else None
    detail = f"http: {method} to {url}: agent error {code}: {message or '(no message)'}"
    if data is not None:
        detail += f" ({_excerpt(orjson.dumps(data).decode())})"
    if isinstance(code, int) and code in PERMANENT_CODES:
        return PermanentBackendError(f"{detail} [{PERMANENT_CODES[code]}: not retried]")
    return BackendError(detail)
