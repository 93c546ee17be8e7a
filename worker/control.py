"""Client-side operations on connectors: start (idempotently) and query, shared by the CLI, the demo and tests.

Each function takes a connected ``temporalio.client.Client`` (with the pydantic data converter) and raises
:class:`ConnectorError` with a one-line, actionable message for what a user can get wrong.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from worker.settings import SEARCH_ATTRIBUTE_WORKSPACE_ID, TASK_QUEUE, workflow_id
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
