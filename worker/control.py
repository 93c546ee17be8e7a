"""Client-side operations on connectors: start (idempotently) and query, shared by the CLI, the demo and tests.

Each function takes a connected ``temporalio.client.Client`` (with the pydantic data converter) and raises
:class:`ConnectorError` with a one-line, actionable message for what a user can get wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from worker.settings import SEARCH_ATTRIBUTE_WORKSPACE_ID, TASK_QUEUE, WORKFLOW_ID_PREFIX, workflow_id
from workflows.connect import ConnectWorkflow
from workflows.messages import (
    ConfigureInput,
    ConnectInput,
    DeadLetterActionResult,
    DeadLetterSelection,
    SetCursorInput,
    StatusResult,
)


class ConnectorError(RuntimeError):
    """A connector operation failed for a reason the user can act on; the message is one line."""


async def start_connector(
    client: Client, input: ConnectInput, *, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[ConnectWorkflow, object]:
    """Start the workspace's ``ConnectWorkflow``, or attach to the running one (DESIGN.md §2, workflow identity).

    ``id_conflict_policy=USE_EXISTING`` makes this idempotent and is the single-instance lock: a second start for the
    same workspace returns the running workflow and its original input is kept (change settings with ``configure``).

    Args:
        client: Connected client.
        input: Workspace, platform URL, backend and settings.
        task_queue: Where workers listen.

    Returns:
        A handle on ``connect-<workspace_id>``.

    Raises:
        ConnectorError: The server refused the start (e.g. the ``WorkspaceId`` search attribute is not registered).
    """
    try:
        return await client.start_workflow(
            ConnectWorkflow.run,
            input,
            id=workflow_id(input.workspace_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SEARCH_ATTRIBUTE_WORKSPACE_ID, input.workspace_id)]
            ),
        )
    except RPCError as err:
        if "search attribute" in err.message.lower():
            raise ConnectorError(
                f"cannot start {workflow_id(input.workspace_id)}: {err.message}; register it with "
                "`temporal operator search-attribute create --name WorkspaceId --type Keyword`"
            ) from None
        raise ConnectorError(f"cannot start {workflow_id(input.workspace_id)}: {err.message}") from None


async def connector_status(client: Client, workspace_id: str) -> StatusResult:
    """Query ``status`` of a workspace's connector.

    Raises:
        ConnectorError: No such workflow, it is not running, or no worker answered the query.
    """
    handle = client.get_workflow_handle_for(ConnectWorkflow.run, workflow_id(workspace_id))
    try:
        return await handle.query(ConnectWorkflow.status)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id) from None
        raise ConnectorError(f"status of {workflow_id(workspace_id)} failed: {err.message}") from None


def _not_found(workspace_id: str) -> ConnectorError:
    return ConnectorError(
        f"no connector for workspace {workspace_id}: start one with `molecule-connect run {workspace_id} ...`"
    )


async def _update(client: Client, workspace_id: str, update: Any, arg: Any = None) -> Any:
    """Send one update to the workspace's connector, mapping refusals to ``ConnectorError``."""
    handle = client.get_workflow_handle_for(ConnectWorkflow.run, workflow_id(workspace_id))
    try:
        if arg is None:
            return await handle.execute_update(update)
        return await handle.execute_update(update, arg)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = getattr(cause, "message", None) or str(cause or err)
        raise ConnectorError(f"{workflow_id(workspace_id)} refused: {message}") from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id) from None
        raise ConnectorError(f"{workflow_id(workspace_id)}: {err.message}") from None


async def pause_connector(client: Client, workspace_id: str) -> StatusResult:
    """``pause`` update: returns once in-flight dispatches settled. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.pause)


async def resume_connector(client: Client, workspace_id: str) -> StatusResult:
    """``resume`` update. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.resume)


async def drain_connector(client: Client, workspace_id: str) -> StatusResult:
    """``drain`` update: the connector delivers what it fetched, then completes. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.drain)


async def set_cursor(client: Client, workspace_id: str, row_id: str) -> StatusResult:
    """``set_cursor`` update (a row id UUID, or ``latest``). Raises ``ConnectorError`` (e.g. not a UUID)."""
    return await _update(client, workspace_id, ConnectWorkflow.set_cursor, SetCursorInput(row_id=row_id))


async def redrive(client: Client, workspace_id: str, row_id: str | None) -> DeadLetterActionResult:
    """``redrive`` update: one dead letter by row id, or all with ``None``. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.redrive, DeadLetterSelection(row_id=row_id))


async def discard(client: Client, workspace_id: str, row_id: str | None) -> DeadLetterActionResult:
    """``discard`` update: one dead letter by row id, or all with ``None``. Raises ``ConnectorError``."""
    return await _update(client, workspace_id, ConnectWorkflow.discard, DeadLetterSelection(row_id=row_id))


async def configure(client: Client, workspace_id: str, changes: dict[str, object]) -> StatusResult:
    """``configure`` update with ``ConnectSettings`` field changes. Raises ``ConnectorError`` on a bad value."""
    return await _update(client, workspace_id, ConnectWorkflow.configure, ConfigureInput(changes=changes))


# --- many connectors: visibility listing and concurrent status queries ----------------------------------------------

STATUS_QUERY_TIMEOUT = timedelta(seconds=5)
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
    """

    workspace_id: str
    task_queue: str


@dataclass(frozen=True)
class ConnectorRow:
    """One connector in a fleet view: its ``status``, or why the query failed (then ``status`` is None).

    Attributes:
        workspace_id: The workspace.
        status: The ``status`` query's answer, or None when it failed.
        error: One line: why there is no status (not found, timed out, query failed).
    """

    workspace_id: str
    status: StatusResult | None
    error: str | None = None


async def list_connectors(client: Client, *, task_queue: str | None = None) -> list[RunningConnector]:
    """List running connectors from Temporal visibility, sorted by workspace id.

    Visibility is eventually consistent: a connector started a moment ago may be missing on a real cluster.

    Args:
        client: Connected client.
        task_queue: Only connectors on this task queue (``TaskQueue = "..."``); all when None.

    Returns:
        One entry per running ``connect-*`` workflow.

    Raises:
        ConnectorError: The server refused the list query (e.g. no advanced visibility on an old cluster).
    """
    query = RUNNING_CONNECTORS_QUERY
    if task_queue:
        query += f' AND TaskQueue = "{_visibility_literal(task_queue)}"'
    found: list[RunningConnector] = []
    try:
        async for execution in client.list_workflows(query):
            workspace_id = execution.typed_search_attributes.get(SEARCH_ATTRIBUTE_WORKSPACE_ID)
            if not workspace_id:
                workspace_id = execution.id.removeprefix(WORKFLOW_ID_PREFIX)
            found.append(RunningConnector(workspace_id=workspace_id, task_queue=execution.task_queue))
    except RPCError as err:
        raise ConnectorError(f"cannot list connectors ({query}): {err.message}") from None
    return sorted(found, key=lambda c: c.workspace_id)


def _visibility_literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


async def query_status(client: Client, workspace_id: str, *, timeout: timedelta = STATUS_QUERY_TIMEOUT) -> StatusResult:
    """Query ``status`` of a workspace's connector, giving up after ``timeout``.

    Raises:
        ConnectorError: No such workflow, no worker answered within ``timeout``, or the query failed.
    """
    handle = client.get_workflow_handle_for(ConnectWorkflow.run, workflow_id(workspace_id))
    try:
        return await handle.query(ConnectWorkflow.status, rpc_timeout=timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(workspace_id) from None
        # A client-side rpc_timeout surfaces as CANCELLED "Timeout expired", the server's as DEADLINE_EXCEEDED.
        if err.status == RPCStatusCode.DEADLINE_EXCEEDED or "timeout expired" in err.message.lower():
            raise ConnectorError(
                f"no answer within {timeout.total_seconds():g}s: is a worker running on its task queue?"
            ) from None
        raise ConnectorError(f"status query failed: {err.message}") from None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        raise ConnectorError(f"status query failed: {err}") from None


async def connector_rows(
    client: Client,
    workspace_ids: Sequence[str],
    *,
    timeout: timedelta = STATUS_QUERY_TIMEOUT,
    concurrency: int = STATUS_QUERY_CONCURRENCY,
) -> list[ConnectorRow]:
    """Query ``status`` of many connectors concurrently; a failed query becomes a row with its error.

    Args:
        client: Connected client.
        workspace_ids: The workspaces, in the order the rows should have.
        timeout: Limit of each query.
        concurrency: Queries in flight at once.

    Returns:
        One row per workspace id, in the given order.
    """
    limit = asyncio.Semaphore(concurrency)

    async def row(workspace_id: str) -> ConnectorRow:
        async with limit:
            try:
                return ConnectorRow(workspace_id, await query_status(client, workspace_id, timeout=timeout))
            except ConnectorError as err:
                return ConnectorRow(workspace_id, None, str(err))

    return list(await asyncio.gather(*(row(w) for w in workspace_ids)))


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
        ConnectorError: It runs but cannot be described or queried within ``timeout`` (e.g. no worker).
    """
    handle = client.get_workflow_handle(workflow_id(workspace_id))
    try:
        description = await handle.describe(rpc_timeout=timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise ConnectorError(f"describe {workflow_id(workspace_id)} failed: {err.message}") from None
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    status = await query_status(client, workspace_id, timeout=timeout)
    return ConnectorSnapshot(
        task_queue=description.task_queue or "",
        input=await _start_input(client, workspace_id, description.run_id, timeout),
        status=status,
    )


async def _start_input(client: Client, workspace_id: str, run_id: str, timeout: timedelta) -> ConnectInput | None:
    handle = client.get_workflow_handle(workflow_id(workspace_id), run_id=run_id)
    try:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=timeout):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            decoded = await client.data_converter.decode(payloads, [ConnectInput])
            return decoded[0] if decoded and isinstance(decoded[0], ConnectInput) else None
    except (RPCError, ValueError, TypeError):
        return None  # the caller falls back to the backend name in ``status``
    return None
