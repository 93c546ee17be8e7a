"""Shared names: the task queue, workflow ids and search attributes.

These values are defined once here because they live outside the process: the task queue and workflow id
are typed at `temporal workflow start`, and the search attributes are registered on the server and queried from
the Web UI (DESIGN.md §2, §4). The state directory is `activities.local_state`.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "molecule-connect"
"""Default task queue of `worker`, `start` and fleets: a pool of interchangeable workers (DESIGN.md §2)."""


def run_task_queue(workspace_id: str) -> str:
    """Return the task queue `run WORKSPACE_ID` uses by default: one of its own, so `run`s never share activities.

    Every worker on a task queue may be handed any activity of any connector on it, so a queue's workers must hold
    the tokens of all its workspaces; a `run` holds one workspace's token, so it gets a queue of its own.

    Args:
        workspace_id: Molecule workspace id, e.g. `"ws-1"`.

    Returns:
        `"molecule-connect.<workspace_id>"`, e.g. `"molecule-connect.ws-1"`.

    Raises:
        ValueError: If `workspace_id` is empty or only whitespace.
    """
    if not workspace_id.strip():
        raise ValueError("workspace id must not be empty")
    return f"{TASK_QUEUE}.{workspace_id}"


WORKFLOW_ID_PREFIX = "connect-"
"""Prefix of the workflow id; `connect-<workspace_id>` makes at most one connector per workspace."""

SEARCH_ATTRIBUTE_WORKSPACE_ID: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("WorkspaceId")
"""Keyword search attribute holding the workspace id, e.g. `WorkspaceId = "ws-1"` in the Web UI."""

SEARCH_ATTRIBUTE_PHASE: SearchAttributeKey[str] = SearchAttributeKey.for_keyword("ConnectorPhase")
"""Keyword search attribute holding the connector phase (`registering`, `connected`, `blocked`, ...)."""


def workflow_id(workspace_id: str) -> str:
    """Return the `ConnectWorkflow` id for a workspace.

    Args:
        workspace_id: Molecule workspace id (PROTOCOL.md), e.g. `"ws-1"`.

    Returns:
        `"connect-<workspace_id>"`, e.g. `"connect-ws-1"`.

    Raises:
        ValueError: If `workspace_id` is empty or only whitespace.
    """
    if not workspace_id.strip():
        raise ValueError("workspace id must not be empty")
    return f"{WORKFLOW_ID_PREFIX}{workspace_id}"
