"""The process code under the command backends (``exec``, ``claude-code``): how a command is started, run and ended.

Modules:

- ``spawn``: starts a command with ``vfork`` and watches its exit through a pidfd, on asyncio's loop and on uvloop.
- ``group``: a command's process group: whether it still runs, and ending it (SIGTERM, grace, SIGKILL).
- ``run``: runs one command to its end (stdin fed, stdout capped, stderr's tail kept, timeout); its outcome.
- ``environment``: the command's environment: an allowlist, ``-o pass_env``, never a worker secret.

Contract:

- A command runs without a shell, from an argv, and never by forking the worker.
- It leads its own process group. No process of a message outlives the call that ran it: on timeout, cancellation or
  output over the cap the whole group is ended (the cancellation is re-raised); what is left in the background after
  a normal exit is sent SIGTERM.
- Its environment is built from names, never inherited: the worker's secrets never reach it, and secret-looking
  values it was given are removed from the error text it causes.
- A program or directory that cannot be used is a ``BackendConfigError`` (the workspace is blocked); a timeout, an
  output over the cap or a non-zero exit (``ExecFailedError``) is a ``BackendError`` (the message is retried).
"""

from activities.backends.process.environment import (
    BASE_VARIABLES,
    CLAUDE_CODE_VARIABLES,
    ChildEnvInfo,
    child_env,
    parse_pass_env,
    redact,
)
from activities.backends.process.run import ExecFailedError, ProcessOutcome, run_in_group, stdout_text

__all__ = [
    "BASE_VARIABLES",
    "CLAUDE_CODE_VARIABLES",
    "ChildEnvInfo",
    "ExecFailedError",
    "ProcessOutcome",
    "child_env",
    "parse_pass_env",
    "redact",
    "run_in_group",
    "stdout_text",
]
