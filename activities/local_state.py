"""The state directory: where molecule-connect keeps what must outlive a process on this machine.

The embedded Temporal dev server keeps its database and server record there (``worker.devserver``), ``dev-platform``
its SQLite file, and the ``claude-code`` backend its session markers (``claude-code/sessions/``). It is read from the
environment only, so the worker and the activities it runs agree on it without passing it around.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

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
