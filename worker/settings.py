"""Names shared with the workflow, for the CLI and clients: the task queue, workflow ids and search attributes.

They are defined once, in the workflow's leaf module ``workflows.names`` (they live outside the process: the task
queue and workflow id are typed at ``temporal workflow start``, the search attributes are registered on the server
and queried from the Web UI; docs/architecture.md §2), and re-exported here. The state directory lives in
``activities.local_state``.
"""

from __future__ import annotations

from workflows.names import (
    SEARCH_ATTRIBUTE_PHASE,
    SEARCH_ATTRIBUTE_WORKSPACE_ID,
    TASK_QUEUE,
    WORKFLOW_ID_PREFIX,
    run_task_queue,
    workflow_id,
)

__all__ = [
    "SEARCH_ATTRIBUTE_PHASE",
    "SEARCH_ATTRIBUTE_WORKSPACE_ID",
    "TASK_QUEUE",
    "WORKFLOW_ID_PREFIX",
    "run_task_queue",
    "workflow_id",
]
