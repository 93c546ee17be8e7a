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

# Shared with the workflow: defined in its leaf module (workflows.names), re-exported here for the CLI and clients.
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
    "STATE_DIR_ENV",
    "TASK_QUEUE",
    "WORKFLOW_ID_PREFIX",
    "run_task_queue",
    "state_dir",
    "workflow_id",
]

STATE_DIR_ENV = "MOLECULE_CONNECT_STATE_DIR"
"""Environment variable overriding the state directory."""

_APP_NAME = "molecule-connect"


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
