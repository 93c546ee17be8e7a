"""Client-side operations on connectors: start (idempotently) and query, shared by the CLI, the demo and tests.

Each function takes a connected ``temporalio.client.Client`` (with the pydantic data converter) and raises
:class:`ConnectorError` with a one-line, actionable message for what a user can get wrong.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from workflows.connect import ConnectWorkflow
from workflows.messages import ConnectInput, StatusResult
from worker.settings import SEARCH_ATTRIBUTE_WORKSPACE_ID, TASK_QUEUE, workflow_id


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
            search_attributes=TypedSearchAttributes([SEARCH_ATTRIBUTE_WORKSPACE_ID.value_set(input.workspace_id)]),
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
            raise ConnectorError(
                f"no connector for workspace {workspace_id}: start one with `molecule-connect run {workspace_id} ...`"
            ) from None
        raise ConnectorError(f"status of {workflow_id(workspace_id)} failed: {err.message}") from None
