"""Shared names and locations: the task queue, workflow ids, search attributes and the state directory.

These values are defined once here because they live outside the process: the task queue and workflow id
are typed at `temporal workflow start`, the search attributes are registered on the server and queried from
the Web UI, and the state directory holds the embedded dev server's database across runs (DESIGN.md §2, §4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs
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

STATE_DIR_ENV = "MOLECULE_CONNECT_STATE_DIR"
"""Environment variable overriding the state directory."""

_APP_NAME = "molecule-connect"


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


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the directory for local state (embedded Temporal database, server record, logs), creating it.

    The directory is `$MOLECULE_CONNECT_STATE_DIR` (`~` expanded) when set and non-empty, else
    `platformdirs.user_state_dir("molecule-connect")` (e.g. `~/.local/state/molecule-connect` on Linux).
    A directory created here gets mode 0700; an existing one keeps its mode, so pointing the variable at a
    shared directory never changes that directory's permissions.

    Args:
        environ: Environment to read, `os.environ` by default.

    Returns:
        Absolute path of an existing directory.

    Raises:
        OSError: If the directory cannot be created.
    """
    configured = environ.get(STATE_DIR_ENV, "").strip()
    path = Path(configured).expanduser() if configured else Path(platformdirs.user_state_dir(_APP_NAME))
    path = path.absolute()
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; the database and server record must stay private.
        path.chmod(0o700)
    return path
