"""The typed Python client of connectors: start them honestly, query and control them (the CLI, the demo, tests).

Each function takes a connected ``temporalio.client.Client`` using the project's data converter
(``worker.codec.data_converter()``: pydantic JSON, encrypted when ``MOLECULE_CODEC_KEYS`` is set) and raises
:class:`ConnectorError` with a one-line, actionable message for what a user can get wrong. Every call that needs a
worker to answer (the ``status`` query, the updates) gives up after a timeout (:data:`CONTROL_TIMEOUT` by default)
and raises :class:`NoAnswerError`, which names the workflow, its task queue and whether any worker polls it; an
answer this client cannot decrypt raises :class:`EncryptedAnswerError`.

    from temporalio.client import Client
    from worker.codec import data_converter
    from worker.control import connector_status, pause_connector, resume_connector, start_connector
    from workflows.messages import ConnectInput

    client = await Client.connect("127.0.0.1:7233", data_converter=data_converter())
    await start_connector(client, ConnectInput(workspace_id="ws-1", platform_url="https://api.example"))
    status = await connector_status(client, "ws-1")          # StatusResult: phase, cursor, lanes, dead letters
    await pause_connector(client, "ws-1")                     # returns once in-flight messages settled
    await resume_connector(client, "ws-1")

- start: :func:`start_connector` (idempotent, ``USE_EXISTING``), :func:`plan_start` + :func:`carry_out_start`
  (compare with what runs; reuse, configure, refuse or replace), :func:`drain_and_wait`;
- query: :func:`connector_status`, :func:`describe_connector` (no worker needed), :func:`list_connectors`
  (visibility), :func:`connector_rows` (many statuses at once);
- control (updates): :func:`pause_connector`, :func:`resume_connector`, :func:`drain_connector`, :func:`set_cursor`,
  :func:`redrive`, :func:`discard`, :func:`configure`.

Inputs and answers are the models of ``workflows/messages.py``; their JSON Schemas (for other SDKs and ``tctl``) are
in ``docs/schema/`` (``molecule-connect schema``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.messages import BackendSpec
from worker.codec import ENCODING, KEYS_ENV, CodecError
from worker.settings import (
    SEARCH_ATTRIBUTE_WORKSPACE_ID,
    TASK_QUEUE,
    WORKFLOW_ID_PREFIX,
    run_task_queue,
    workflow_id,
)
from workflows.connect import ConnectWorkflow
from workflows.messages import (
    ConfigureInput,
    ConnectInput,
    ConnectResult,
    ConnectSettings,
    DeadLetterActionResult,
    DeadLetterList,
    DeadLetterPage,
    DeadLetterSelection,
    SetCursorInput,
    StatusResult,
)
from workflows.state import ConnectState

T = TypeVar("T")

CONTROL_TIMEOUT = timedelta(seconds=10)
"""How long a control (query or update) waits for a worker's answer before :class:`NoAnswerError`."""

LIVE_POLLER_AGE = timedelta(seconds=75)
"""A worker that polled a task queue this recently counts as polling it. An idle worker's long poll is renewed about
every 60 s, and the server lists a stopped worker's poller for minutes, so an older poll means no live worker."""

FLEET_MEMO_KEY = "fleet"
"""Memo key holding the name of the fleet that started a connector (``fleet apply``); hand-started ones have none."""


class ConnectorError(RuntimeError):
    """A connector operation failed for a reason the user can act on; the message is one line."""


class NoAnswerError(ConnectorError):
    """No worker answered a query or update in time; the message names the workflow and its task queue.

    Attributes:
        workflow_id: The connector's workflow id.
        task_queue: The task queue its workers must poll.
        worker_polling: A worker polled that task queue within :data:`LIVE_POLLER_AGE` (so it may only be slow).
    """

    def __init__(self, message: str, *, workflow_id: str, task_queue: str, worker_polling: bool) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.task_queue = task_queue
        self.worker_polling = worker_polling


class EncryptedAnswerError(ConnectorError):
    """A connector answered with payloads this client cannot decrypt (no ``MOLECULE_CODEC_KEYS``, or another key).

    Attributes:
        short: The reason in a few words for a table cell, e.g. ``encrypted: set MOLECULE_CODEC_KEYS``.
    """

    def __init__(self, message: str, *, short: str) -> None:
        super().__init__(message)
        self.short = short


def _encrypted_answer(workspace_id: str, err: Exception, *, applied: bool = False) -> EncryptedAnswerError | None:
    """The :class:`EncryptedAnswerError` for a decoding failure, or None when ``err`` is not one.

    Without a codec the SDK's converter raises ``KeyError("Unknown payload encoding binary/encrypted")``; with the
    wrong keys the codec raises ``CodecError``, whose message names the key id and the variable.
    """
    after = " (the update was applied)" if applied else ""
    if isinstance(err, CodecError):
        return EncryptedAnswerError(f"{workflow_id(workspace_id)}: {err}{after}", short=str(err))
    if isinstance(err, KeyError) and ENCODING.decode() in str(err):
        short = f"encrypted: set {KEYS_ENV}"
        message = (
            f"{workflow_id(workspace_id)} answered with encrypted payloads: set {KEYS_ENV} to the keys its workers "
            f"use{after}"
        )
        return EncryptedAnswerError(message, short=short)
    return None


# --- workers on a task queue ----------------------------------------------------------------------------------------


async def last_poll_age(client: Client, task_queue: str, *, timeout: timedelta = CONTROL_TIMEOUT) -> float | None:
    """Seconds since a worker last polled ``task_queue`` for workflow tasks (``DescribeTaskQueue`` pollers).

    Args:
        client: Connected client.
        task_queue: The task queue.
        timeout: Limit of the RPC.

    Returns:
        The age of the most recent poll, or None when no worker polled within :data:`LIVE_POLLER_AGE`.

    Raises:
        ConnectorError: The server refused the request.
    """
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        response = await client.workflow_service.describe_task_queue(request, retry=True, timeout=timeout)
    except RPCError as err:
        raise ConnectorError(f"cannot describe task queue {task_queue}: {err.message}") from None
    now = time.time()
    ages = [now - poller.last_access_time.ToNanoseconds() / 1e9 for poller in response.pollers]
    live = [max(0.0, age) for age in ages if age <= LIVE_POLLER_AGE.total_seconds()]
    return min(live) if live else None


def no_worker_advice(workspace_id: str, task_queue: str) -> str:
    """What to start so that a connector on ``task_queue`` is served, as one clause."""
    advice = f"start `molecule-connect worker --task-queue {task_queue}`"
    if task_queue == run_task_queue(workspace_id):
        advice += f" or `molecule-connect run {workspace_id} ...`"
    return advice


async def _no_answer(client: Client, workspace_id: str, timeout: timedelta, task_queue: str | None) -> NoAnswerError:
    """Tell "no worker polls the task queue" from "a worker polls it but did not answer in time"."""
    wf_id = workflow_id(workspace_id)
    if task_queue is None:
        try:
            task_queue = (await _describe(client, workspace_id, timeout)).task_queue or "?"
        except ConnectorError:
            task_queue = "?"
    age = await last_poll_age(client, task_queue, timeout=timeout) if task_queue != "?" else None
    if age is None:
        message = (
            f"{wf_id} on task queue {task_queue}: no worker is polling it: {no_worker_advice(workspace_id, task_queue)}"
        )
    else:
        message = (
            f"{wf_id} on task queue {task_queue}: no answer within {timeout.total_seconds():g}s though a worker "
            f"polled it {age:.0f}s ago (busy, or stopped within the last minute): retry, or give a longer --timeout"
        )
    return NoAnswerError(message, workflow_id=wf_id, task_queue=task_queue, worker_polling=age is not None)


async def _describe(client: Client, workspace_id: str, timeout: timedelta) -> WorkflowExecutionDescription:
    """Describe the connector's latest run. Raises ``ConnectorError`` (not found: the advice to start one)."""
    try:
        return await client.get_workflow_handle(workflow_id(workspace_id)).describe(rpc_timeout=timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id, err) from None
        raise ConnectorError(f"describe {workflow_id(workspace_id)} failed: {err.message}") from None


async def _require_worker(client: Client, workspace_id: str, timeout: timedelta) -> str:
    """Check that the connector runs and some worker polls its task queue; return the task queue.

    An update sent while no worker polls would wait on the server and take effect whenever a worker comes, long
    after the caller gave up; so it is not sent at all.

    Raises:
        ConnectorError: Not running (the advice to start one).
        NoAnswerError: No worker polls its task queue.
    """
    description = await _describe(client, workspace_id, timeout)
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise _not_found(workspace_id)
    task_queue = description.task_queue or ""
    if await last_poll_age(client, task_queue, timeout=timeout) is None:
        raise await _no_answer(client, workspace_id, timeout, task_queue)
    return task_queue


# --- start --------------------------------------------------------------------------------------------------------


async def start_connector(
    client: Client,
    input: ConnectInput,
    *,
    task_queue: str = TASK_QUEUE,
    memo: Mapping[str, Any] | None = None,
) -> WorkflowHandle[ConnectWorkflow, object]:
    """Start the workspace's ``ConnectWorkflow``, or attach to the running one (docs/architecture.md §2.2).

    ``id_conflict_policy=USE_EXISTING`` makes this idempotent and is the single-instance lock: a second start for the
    same workspace returns the running workflow and its original input is kept (see :func:`plan_start` for a
    start that compares). Continue-as-new keeps the memo.

    The Web UI shows a static summary, ``<workspace id> · <backend name>``, written as plain JSON even when the
    client encrypts payloads (it holds only what the workflow id and search attributes already show), and static
    details (workspace, backend with options, platform URL, task queue), which the codec encrypts like the input.

    Args:
        client: Connected client.
        input: Workspace, platform URL, backend and settings (and ``state`` to carry one over).
        task_queue: Where workers listen.
        memo: Memo of a new workflow, e.g. ``{"fleet": "prod"}`` (:data:`FLEET_MEMO_KEY`).

    Returns:
        A handle on ``connect-<workspace_id>``.

    Raises:
        ConnectorError: The server refused the start (e.g. the ``WorkspaceId`` search attribute is not registered).
    """
    try:
        return await client.start_workflow(  # type: ignore[call-overload]  # static_summary: a Payload
            ConnectWorkflow.run,
            input,
            id=workflow_id(input.workspace_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SEARCH_ATTRIBUTE_WORKSPACE_ID, input.workspace_id)]
            ),
            memo=dict(memo) if memo else None,
            static_summary=static_summary(input),  # a Payload is passed through as is (typed str)
            static_details=static_details(input, task_queue),
        )
    except RPCError as err:
        if "search attribute" in err.message.lower():
            raise ConnectorError(
                f"cannot start {workflow_id(input.workspace_id)}: {err.message}; register it with "
                "`temporal operator search-attribute create --name WorkspaceId --type Keyword`"
            ) from None
        raise ConnectorError(f"cannot start {workflow_id(input.workspace_id)}: {err.message}") from None


def static_summary(input: ConnectInput) -> Payload:
    """The Web UI's one-line summary of a connector, as a plain JSON payload that no codec encrypts."""
    text = f"{input.workspace_id} · {input.backend.name}"
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text, ensure_ascii=False).encode())


def static_details(input: ConnectInput, task_queue: str) -> str:
    """The Web UI's details of a connector (Markdown): workspace, backend with options, platform URL, task queue."""
    return (
        f"**workspace** {input.workspace_id}  \n**backend** {backend_text(input.backend)}  \n"
        f"**platform** {input.platform_url}  \n**task queue** {task_queue}"
    )


# --- status and updates -------------------------------------------------------------------------------------------


async def connector_status(client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT) -> StatusResult:
    """Query ``status`` of a workspace's connector, giving up after ``timeout``.

    Raises:
        ConnectorError: No such workflow, or the query failed.
        NoAnswerError: No worker answered within ``timeout``.
    """
    return await _query(
        client, workspace_id, timeout, lambda handle: handle.query(ConnectWorkflow.status, rpc_timeout=timeout)
    )


async def dead_letter_page(
    client: Client, workspace_id: str, *, offset: int = 0, limit: int = 100, timeout: timedelta = CONTROL_TIMEOUT
) -> DeadLetterList:
    """One page of a connector's dead letters, oldest first (the ``dead_letters`` query).

    ``status`` lists only the newest 20. Raises like :func:`connector_status`.
    """
    page = DeadLetterPage(offset=offset, limit=limit)
    return await _query(
        client,
        workspace_id,
        timeout,
        lambda handle: handle.query(ConnectWorkflow.dead_letters, page, rpc_timeout=timeout),
    )


async def _query(client: Client, workspace_id: str, timeout: timedelta, ask: Callable[[Any], Awaitable[T]]) -> T:
    """Run one query on a workspace's connector within ``timeout``, mapping failures to one-line errors."""
    handle = client.get_workflow_handle_for(ConnectWorkflow.run, workflow_id(workspace_id))
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            return await ask(handle)
    except TimeoutError:
        raise await _no_answer(client, workspace_id, timeout, None) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id, err) from None
        # A client-side rpc_timeout surfaces as CANCELLED "Timeout expired", the server's as DEADLINE_EXCEEDED.
        if err.status == RPCStatusCode.DEADLINE_EXCEEDED or "timeout expired" in err.message.lower():
            raise await _no_answer(client, workspace_id, timeout, None) from None
        raise ConnectorError(f"query failed: {err.message}") from None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        raise ConnectorError(f"query failed: {err}") from None
    except (KeyError, CodecError) as err:
        encrypted = _encrypted_answer(workspace_id, err)
        if encrypted is None:
            raise
        raise encrypted from None


query_status = connector_status
"""Alias of :func:`connector_status`."""


def _not_found(workspace_id: str, err: RPCError | None = None) -> ConnectorError:
    """No such connector; or, when the server says so (``NOT_FOUND`` naming a namespace), no such namespace."""
    if err is not None and err.message.lower().startswith("namespace"):
        return ConnectorError(f"{err.message.rstrip('.')}: check --namespace or TEMPORAL_NAMESPACE")
    return ConnectorError(
        f"no connector for workspace {workspace_id}: start one with `molecule-connect run {workspace_id} ...`"
    )


async def _update(
    client: Client, workspace_id: str, update: Any, arg: Any = None, *, timeout: timedelta = CONTROL_TIMEOUT
) -> Any:
    """Send one update to the workspace's connector and wait for its result, at most ``timeout``.

    Raises:
        ConnectorError: Not running, or the update was refused (its validator's message).
        NoAnswerError: No worker polls the connector's task queue, or none answered within ``timeout``.
    """
    task_queue = await _require_worker(client, workspace_id, timeout)
    handle = client.get_workflow_handle_for(ConnectWorkflow.run, workflow_id(workspace_id))
    args = () if arg is None else (arg,)
    update_id = str(uuid.uuid4())
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            while True:
                try:
                    return await handle.execute_update(update, *args, id=update_id, rpc_timeout=timeout)
                except RPCError as err:
                    if not _update_dropped(err):
                        raise
                await asyncio.sleep(UPDATE_RETRY_DELAY_S)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise await _no_answer(client, workspace_id, timeout, task_queue) from None
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        raise ConnectorError(f"{workflow_id(workspace_id)} refused: {message}") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id, err) from None
        raise ConnectorError(f"{workflow_id(workspace_id)}: {err.message}") from None
    except (KeyError, CodecError) as err:
        encrypted = _encrypted_answer(workspace_id, err, applied=True)
        if encrypted is None:
            raise
        raise encrypted from None


UPDATE_RETRY_DELAY_S = 0.2
"""Pause before sending an update again that the server dropped with its workflow task (see ``_update_dropped``)."""


def _update_dropped(err: RPCError) -> bool:
    """The server dropped the update, unapplied, because its workflow task failed.

    This happens when the update's workflow task completes the workflow (``drain`` of an idle connector) while an
    activity completion (the cancelled heartbeat or poll) arrives: the server refuses to close a workflow with new
    events, fails the task and the update with it (``FAILED_PRECONDITION``). The same update, sent again with the same
    id, is applied on the next workflow task.
    """
    return err.status == RPCStatusCode.FAILED_PRECONDITION and "workflow task failure" in err.message.lower()


async def pause_connector(client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT) -> StatusResult:
    """``pause`` update: returns once in-flight dispatches settled. Raises ``ConnectorError``/``NoAnswerError``."""
    return await _update(client, workspace_id, ConnectWorkflow.pause, timeout=timeout)


async def resume_connector(client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT) -> StatusResult:
    """``resume`` update. Raises ``ConnectorError``/``NoAnswerError``."""
    return await _update(client, workspace_id, ConnectWorkflow.resume, timeout=timeout)


async def drain_connector(client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT) -> StatusResult:
    """``drain`` update: the connector delivers what it fetched, then completes. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.drain, timeout=timeout)


async def set_cursor(
    client: Client, workspace_id: str, row_id: str, *, timeout: timedelta = CONTROL_TIMEOUT
) -> StatusResult:
    """``set_cursor`` update (a row id UUID, or ``latest``). Raises ``ConnectorError`` (e.g. not a UUID)."""
    return await _update(
        client, workspace_id, ConnectWorkflow.set_cursor, SetCursorInput(row_id=row_id), timeout=timeout
    )


async def redrive(
    client: Client, workspace_id: str, row_id: str | None, *, timeout: timedelta = CONTROL_TIMEOUT
) -> DeadLetterActionResult:
    """``redrive`` update: one dead letter by row id, or all with ``None``. Raises ``ConnectorError``."""
    selection = DeadLetterSelection(row_id=row_id)
    return await _update(client, workspace_id, ConnectWorkflow.redrive, selection, timeout=timeout)


async def discard(
    client: Client, workspace_id: str, row_id: str | None, *, timeout: timedelta = CONTROL_TIMEOUT
) -> DeadLetterActionResult:
    """``discard`` update: one dead letter by row id, or all with ``None``. Raises ``ConnectorError``."""
    selection = DeadLetterSelection(row_id=row_id)
    return await _update(client, workspace_id, ConnectWorkflow.discard, selection, timeout=timeout)


async def configure(
    client: Client, workspace_id: str, changes: dict[str, object], *, timeout: timedelta = CONTROL_TIMEOUT
) -> StatusResult:
    """``configure`` update with ``ConnectSettings`` field changes. Raises ``ConnectorError`` on a bad value."""
    return await _update(
        client, workspace_id, ConnectWorkflow.configure, ConfigureInput(changes=changes), timeout=timeout
    )


# --- many connectors: visibility listing and concurrent status queries ----------------------------------------------

STATUS_QUERY_TIMEOUT = CONTROL_TIMEOUT
"""How long one ``status`` query may take in a fleet view before its row shows the error instead (no worker, ...)."""

STATUS_QUERY_CONCURRENCY = 16
"""Status queries in flight at once when querying many connectors: enough to hide latency, gentle on the frontend."""

RUNNING_CONNECTORS_QUERY = 'WorkflowType = "ConnectWorkflow" AND ExecutionStatus = "Running"'
"""Visibility list filter for running connectors (works on the dev server's SQLite visibility too)."""


@dataclass(frozen=True)
class RunningConnector:
    """A running ``ConnectWorkflow`` as visibility lists it.

    Attributes:
        workspace_id: From the ``WorkspaceId`` search attribute, else the workflow id without ``connect-``.
        task_queue: Where its workers listen.
        fleet: The fleet that started it (memo :data:`FLEET_MEMO_KEY`), None when started by hand.
    """

    workspace_id: str
    task_queue: str
    fleet: str | None = None


@dataclass(frozen=True)
class ConnectorRow:
    """One connector in a fleet view: its ``status``, or why the query failed (then ``status`` is None).

    Attributes:
        workspace_id: The workspace.
        status: The ``status`` query's answer, or None when it failed.
        error: One line: why there is no status (not found, no worker, query failed).
        no_worker: The query failed because no worker polls the connector's task queue.
        encrypted: The answer is encrypted with keys this client lacks (``error`` says which variable to set).
    """

    workspace_id: str
    status: StatusResult | None
    error: str | None = None
    no_worker: bool = False
    encrypted: bool = False


async def list_connectors(
    client: Client, *, task_queue: str | None = None, task_queues: Sequence[str] = ()
) -> list[RunningConnector]:
    """List running connectors from Temporal visibility, sorted by workspace id.

    Visibility is eventually consistent: a connector started a moment ago may be missing on a real cluster.

    Args:
        client: Connected client.
        task_queue: Only connectors on this task queue (``TaskQueue = "..."``); all when None.
        task_queues: Only connectors on one of these task queues (combined with ``task_queue``).

    Returns:
        One entry per running ``connect-*`` workflow.

    Raises:
        ConnectorError: The server refused the list query (e.g. no advanced visibility on an old cluster).
    """
    query = RUNNING_CONNECTORS_QUERY
    queues = sorted({*task_queues, *([task_queue] if task_queue else [])})
    if queues:
        query += " AND (" + " OR ".join(f'TaskQueue = "{_visibility_literal(q)}"' for q in queues) + ")"
    found: list[RunningConnector] = []
    try:
        async for execution in client.list_workflows(query):
            workspace_id = execution.typed_search_attributes.get(SEARCH_ATTRIBUTE_WORKSPACE_ID)
            if not workspace_id:
                workspace_id = execution.id.removeprefix(WORKFLOW_ID_PREFIX)
            fleet = await _fleet_of(execution.memo)
            found.append(RunningConnector(workspace_id=workspace_id, task_queue=execution.task_queue, fleet=fleet))
    except RPCError as err:
        raise ConnectorError(f"cannot list connectors ({query}): {err.message}") from None
    return sorted(found, key=lambda c: c.workspace_id)


async def _fleet_of(memo: Callable[[], Awaitable[Mapping[str, Any]]]) -> str | None:
    try:
        value = (await memo()).get(FLEET_MEMO_KEY)
    except Exception:  # an undecodable memo (e.g. encrypted with a key this client lacks): not a fleet's
        return None
    return value if isinstance(value, str) else None


def _visibility_literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


async def connector_rows(
    client: Client,
    workspace_ids: Sequence[str],
    *,
    timeout: timedelta = STATUS_QUERY_TIMEOUT,
    concurrency: int = STATUS_QUERY_CONCURRENCY,
    task_queues: Mapping[str, str] | None = None,
) -> list[ConnectorRow]:
    """Query ``status`` of many connectors concurrently; a failed query becomes a row with its error.

    Args:
        client: Connected client.
        workspace_ids: The workspaces, in the order the rows should have.
        timeout: Limit of each query.
        concurrency: Queries in flight at once.
        task_queues: Workspace id → task queue, when known (from :func:`list_connectors`): a connector whose task
            queue no worker polls becomes a ``no_worker`` row at once, without waiting for its query to time out.

    Returns:
        One row per workspace id, in the given order.
    """
    limit = asyncio.Semaphore(concurrency)
    unpolled: set[str] = set()
    if task_queues:
        queues = sorted(set(task_queues.values()))
        ages = await asyncio.gather(*(last_poll_age(client, q, timeout=timeout) for q in queues))
        unpolled = {q for q, age in zip(queues, ages, strict=True) if age is None}

    async def row(workspace_id: str) -> ConnectorRow:
        queue = (task_queues or {}).get(workspace_id)
        if queue is not None and queue in unpolled:
            advice = no_worker_advice(workspace_id, queue)
            return ConnectorRow(workspace_id, None, f"no worker polls its task queue: {advice}", no_worker=True)
        async with limit:
            try:
                return ConnectorRow(workspace_id, await connector_status(client, workspace_id, timeout=timeout))
            except NoAnswerError as err:
                return ConnectorRow(workspace_id, None, str(err), no_worker=not err.worker_polling)
            except EncryptedAnswerError as err:
                return ConnectorRow(workspace_id, None, err.short, encrypted=True)
            except ConnectorError as err:
                return ConnectorRow(workspace_id, None, str(err))

    return list(await asyncio.gather(*(row(w) for w in workspace_ids)))


# --- what runs, compared with what is asked -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorInfo:
    """A running connector's fixed fields, read without a worker (describe and the run's first history event).

    Attributes:
        run_id: The current run.
        task_queue: Where it runs.
        input: The run's start input (backend with options, platform URL, settings as of this run's start); None
            when the first history event cannot be read (e.g. encrypted with a key this client lacks).
            Continue-as-new carries the backend and URL unchanged.
        fleet: The fleet that started it (memo :data:`FLEET_MEMO_KEY`), None when started by hand.
    """

    run_id: str
    task_queue: str
    input: ConnectInput | None
    fleet: str | None = None


async def describe_connector(
    client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT
) -> ConnectorInfo | None:
    """Describe a workspace's running connector without needing a worker: None when none is running.

    Raises:
        ConnectorError: The server refused the describe.
    """
    try:
        description = await client.get_workflow_handle(workflow_id(workspace_id)).describe(rpc_timeout=timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise ConnectorError(f"describe {workflow_id(workspace_id)} failed: {err.message}") from None
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    return ConnectorInfo(
        run_id=description.run_id,
        task_queue=description.task_queue or "",
        input=await _start_input(client, workspace_id, description.run_id, timeout),
        fleet=await _fleet_of(description.memo),
    )


@dataclass(frozen=True)
class ConnectorSnapshot:
    """A running connector's fixed fields and status, for comparing it with a desired ``ConnectInput``.

    Attributes:
        task_queue: Where it runs.
        input: The run's start input (its backend with options: ``status`` names the backend only); None when
            the first history event cannot be read. Continue-as-new carries the backend unchanged.
        status: The ``status`` query's answer (current settings included).
    """

    task_queue: str
    input: ConnectInput | None
    status: StatusResult


async def running_connector(
    client: Client, workspace_id: str, *, timeout: timedelta = STATUS_QUERY_TIMEOUT
) -> ConnectorSnapshot | None:
    """Describe a workspace's connector: None when none is running, else its snapshot.

    Raises:
        ConnectorError: It runs but cannot be described or queried within ``timeout`` (``NoAnswerError``: no
            worker answered).
    """
    info = await describe_connector(client, workspace_id, timeout=timeout)
    if info is None:
        return None
    status = await connector_status(client, workspace_id, timeout=timeout)
    return ConnectorSnapshot(task_queue=info.task_queue, input=info.input, status=status)


async def _start_input(client: Client, workspace_id: str, run_id: str, timeout: timedelta) -> ConnectInput | None:
    handle = client.get_workflow_handle(workflow_id(workspace_id), run_id=run_id)
    try:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=timeout):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            decoded = await client.data_converter.decode(payloads, [ConnectInput])
            return decoded[0] if decoded and isinstance(decoded[0], ConnectInput) else None
    except (RPCError, ValueError, TypeError, KeyError):  # KeyError: encrypted, and this client has no keys
        return None  # the caller falls back to the backend name in ``status``
    return None


def backend_text(spec: BackendSpec) -> str:
    """A backend with its options, e.g. ``exec(cmd='cat')``, or just its name without options."""
    options = " ".join(f"{k}={v!r}" for k, v in sorted(spec.options.items()))
    return f"{spec.name}({options})" if options else spec.name


def fixed_differences(
    desired: ConnectInput,
    *,
    platform_url: str | None,
    backend: BackendSpec | None,
    task_queue: str | None,
    desired_task_queue: str | None,
) -> list[str]:
    """What differs between a running connector's fixed fields and a desired definition (pure).

    Platform URL, backend (with options) and task queue are fixed for a run: changing one needs a new run. A field
    given as None (unknown, or not asked for) is not compared.

    Args:
        desired: The definition asked for.
        platform_url: The running connector's platform URL.
        backend: The running connector's backend.
        task_queue: The running connector's task queue.
        desired_task_queue: The task queue asked for.

    Returns:
        One ``"<field> <running> → <desired>"`` item per difference, e.g. ``"backend echo → exec(cmd='cat')"``.
    """
    fixed = []
    if platform_url is not None and platform_url != desired.platform_url:
        fixed.append(f"platform_url {platform_url} → {desired.platform_url}")
    if backend is not None and backend != desired.backend:
        fixed.append(f"backend {backend_text(backend)} → {backend_text(desired.backend)}")
    if task_queue is not None and desired_task_queue is not None and task_queue != desired_task_queue:
        fixed.append(f"task_queue {task_queue} → {desired_task_queue}")
    return fixed


def settings_changes(
    current: ConnectSettings, desired: ConnectSettings, fields: frozenset[str] | None
) -> dict[str, Any]:
    """The ``configure`` changes that bring ``current`` to ``desired``, limited to ``fields`` (all when None)."""
    have = current.model_dump(mode="json")
    want = desired.model_dump(mode="json")
    return {k: v for k, v in want.items() if (fields is None or k in fields) and have.get(k) != v}


# --- honest start: reuse, configure, refuse or replace ---------------------------------------------------------------

StartAction = Literal["start", "reuse", "replace"]


@dataclass(frozen=True)
class StartPlan:
    """What :func:`carry_out_start` will do, decided by :func:`plan_start` before any worker runs.

    Attributes:
        action: ``start`` (nothing runs), ``reuse`` (the same definition runs: maybe configure settings) or
            ``replace`` (drain the running or drained connector, start the new definition with its state).
        task_queue: Where the connector runs after the start: the asked task queue, else the running one's.
        old_task_queue: For ``replace`` of a running connector: where the old one runs (its worker must drain it).
        moved: For ``reuse``: the connector runs on another task queue than the caller's default.
        differences: For ``replace``: what differs.
        carried: For ``replace`` of an already drained connector: the state to carry.
    """

    action: StartAction
    task_queue: str
    old_task_queue: str | None = None
    moved: bool = False
    differences: tuple[str, ...] = ()
    carried: Carried | None = None


@dataclass(frozen=True)
class Carried:
    """What a replaced connector hands on to the next definition.

    Attributes:
        state: Its final state (cursor, dedupe windows, dead letters, counters); nothing pending after a drain.
        settings: Its settings when it was drained (``configure`` changes included), None when unknown.
    """

    state: ConnectState
    settings: ConnectSettings | None


@dataclass(frozen=True)
class StartOutcome:
    """What a start did, for one line of output.

    Attributes:
        workflow_id: The connector.
        task_queue: Where it runs (always the workflow's real task queue).
        action: ``started``, ``unchanged``, ``configured`` or ``replaced``.
        changes: For ``configured``: the settings applied.
        differences: For ``replaced``: what changed.
        moved: It runs on another task queue than the caller's default.
    """

    workflow_id: str
    task_queue: str
    action: Literal["started", "unchanged", "configured", "replaced"]
    changes: Mapping[str, Any] = field(default_factory=dict)
    differences: tuple[str, ...] = ()
    moved: bool = False

    def describe(self) -> str:
        """One line, e.g. ``connect-ws-1 running on task queue molecule-connect.ws-1 (started)``."""
        what = {
            "started": "started",
            "unchanged": "already running, same definition",
            "configured": "already running; settings applied with configure: "
            + " ".join(f"{k}={v}" for k, v in self.changes.items()),
            "replaced": "replaced: drained, then started with its cursor; " + "; ".join(self.differences),
        }[self.action]
        line = f"{self.workflow_id} running on task queue {self.task_queue} ({what})"
        if self.moved:
            line += "; it was started on this task queue before and stays there"
        return line


async def plan_start(
    client: Client,
    input: ConnectInput,
    *,
    task_queue: str | None,
    default_task_queue: str,
    replace: bool = False,
    timeout: timedelta = CONTROL_TIMEOUT,
) -> StartPlan:
    """Compare a desired connector with what runs, without needing a worker (describe and history only).

    Args:
        client: Connected client.
        input: The definition asked for.
        task_queue: The task queue asked for explicitly (``--task-queue``), None when not given: then a running
            connector is kept where it runs, and a new one starts on ``default_task_queue``.
        default_task_queue: Where a new connector starts when no task queue was asked for.
        replace: Replace a running connector whose platform URL, backend or task queue differ (and carry the state
            of a connector that was drained).
        timeout: Limit of each RPC.

    Returns:
        The plan for :func:`carry_out_start`.

    Raises:
        ConnectorError: The platform URL, backend or task queue differ and ``replace`` is False; the message says
            what differs and what to do.
    """
    info = await describe_connector(client, input.workspace_id, timeout=timeout)
    if info is None:
        carried = await _drained_result(client, input.workspace_id, timeout) if replace else None
        action: StartAction = "replace" if carried else "start"
        return StartPlan(action=action, task_queue=task_queue or default_task_queue, carried=carried)
    differences = fixed_differences(
        input,
        platform_url=info.input.platform_url if info.input else None,
        backend=info.input.backend if info.input else None,
        task_queue=info.task_queue,
        desired_task_queue=task_queue,
    )
    if differences and not replace:
        wf_id = workflow_id(input.workspace_id)
        raise ConnectorError(
            f"{wf_id} already runs with another definition ({'; '.join(differences)}): "
            f"`molecule-connect drain {input.workspace_id}` then start it again, or pass --replace to drain it and "
            "start this definition with its cursor"
        )
    if differences:
        return StartPlan(
            action="replace",
            task_queue=task_queue or info.task_queue,
            old_task_queue=info.task_queue,
            differences=tuple(differences),
        )
    moved = task_queue is None and info.task_queue != default_task_queue
    return StartPlan(action="reuse", task_queue=info.task_queue, moved=moved)


async def _drained_result(client: Client, workspace_id: str, timeout: timedelta) -> Carried | None:
    """The state of the connector's latest run when it completed drained with one, else None."""
    handle = client.get_workflow_handle(workflow_id(workspace_id), result_type=ConnectResult)
    try:
        description = await handle.describe(rpc_timeout=timeout)
        if description.status != WorkflowExecutionStatus.COMPLETED:
            return None
        result = await handle.result(rpc_timeout=timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise ConnectorError(f"cannot read {workflow_id(workspace_id)}'s last run: {err.message}") from None
    except Exception:  # a failed or undecodable run carries nothing
        return None
    if not isinstance(result, ConnectResult) or result.state is None:
        return None
    started = await _start_input(client, workspace_id, description.run_id, timeout)
    return Carried(state=result.state, settings=started.settings if started else None)


async def carry_out_start(
    client: Client,
    input: ConnectInput,
    plan: StartPlan,
    *,
    settings_fields: frozenset[str] = frozenset(),
    memo: Mapping[str, Any] | None = None,
    timeout: timedelta = CONTROL_TIMEOUT,
    drain_timeout: timedelta | None = None,
) -> StartOutcome:
    """Carry out a :func:`plan_start` plan. ``reuse`` and ``replace`` need a worker on the connector's task queue.

    Args:
        client: Connected client.
        input: The definition asked for.
        plan: From :func:`plan_start`.
        settings_fields: ``ConnectSettings`` fields the caller set explicitly; on ``reuse`` those that differ from
            the running connector's are applied with ``configure`` (the others are left as they are).
        memo: Memo of a newly started workflow.
        timeout: Limit of each query and update.
        drain_timeout: For ``replace``: how long the old connector may take to deliver what it fetched and
            complete (default ``timeout``).

    Returns:
        What was done, on which task queue.

    Raises:
        ConnectorError: A start, query or update failed (``NoAnswerError``: no worker answered).
    """
    wf_id = workflow_id(input.workspace_id)
    if plan.action == "start":
        await start_connector(client, input, task_queue=plan.task_queue, memo=memo)
        return StartOutcome(wf_id, plan.task_queue, "started")
    if plan.action == "reuse":
        outcome = StartOutcome(wf_id, plan.task_queue, "unchanged", moved=plan.moved)
        if not settings_fields:
            return outcome
        status = await connector_status(client, input.workspace_id, timeout=timeout)
        changes = settings_changes(status.settings, input.settings, settings_fields)
        if not changes:
            return outcome
        await configure(client, input.workspace_id, changes, timeout=timeout)
        return StartOutcome(wf_id, plan.task_queue, "configured", changes=changes, moved=plan.moved)
    carried = plan.carried or await drain_and_wait(
        client, input.workspace_id, timeout=timeout, drain_timeout=drain_timeout or timeout
    )
    settings = input.settings
    if carried.settings is not None:  # keep what the old connector was configured with, unless set explicitly now
        explicit = {k: v for k, v in input.settings.model_dump().items() if k in settings_fields}
        settings = carried.settings.model_copy(update=explicit)
    successor = input.model_copy(update={"state": carried.state, "settings": settings})
    await start_connector(client, successor, task_queue=plan.task_queue, memo=memo)
    differences = plan.differences or ("state of the drained connector carried over",)
    return StartOutcome(wf_id, plan.task_queue, "replaced", differences=differences)


async def drain_and_wait(
    client: Client, workspace_id: str, *, timeout: timedelta = CONTROL_TIMEOUT, drain_timeout: timedelta
) -> Carried:
    """Drain a connector and wait until it completed; return its final state and its settings.

    Raises:
        ConnectorError: The drain was refused, or the run ended without a state (``NoAnswerError``: no worker
            answered, or it did not complete within ``drain_timeout``).
    """
    draining = await drain_connector(client, workspace_id, timeout=timeout)
    handle = client.get_workflow_handle(workflow_id(workspace_id), result_type=ConnectResult)
    try:
        async with asyncio.timeout(drain_timeout.total_seconds()):
            result = await handle.result()
    except TimeoutError:
        wf_id = workflow_id(workspace_id)
        raise NoAnswerError(
            f"{wf_id} is draining but did not complete within {drain_timeout.total_seconds():g}s (it delivers what it "
            "fetched first): run the same command again to finish the replacement, or give a longer --timeout",
            workflow_id=wf_id,
            task_queue="",
            worker_polling=True,
        ) from None
    except Exception as err:
        raise ConnectorError(f"{workflow_id(workspace_id)} did not complete drained: {err}") from None
    if not isinstance(result, ConnectResult) or result.state is None:
        raise ConnectorError(
            f"{workflow_id(workspace_id)} completed without its state: start it again without --replace"
        )
    return Carried(state=result.state, settings=draining.settings)
