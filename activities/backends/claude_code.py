"""The ``claude-code`` backend: answers each message with ``claude -p``, one Claude session per conversation.

Contract (DESIGN.md §3):

- The message text goes to ``claude -p`` on stdin; its stdout (minus one trailing newline) is the reply, one
  text part. ``-o args="--model sonnet --allowedTools Read"`` adds arguments, split like a shell line and
  passed as argv (never through a shell). The process discipline is the ``exec`` backend's
  (:func:`~activities.backends.exec.run_in_group`): its own process group, killed (SIGTERM, ``-o grace``,
  SIGKILL) on timeout (``-o timeout``, default 5 min) and on cancellation; a non-zero exit is an
  :class:`~activities.backends.exec.ExecFailedError` with the end of stderr.
- **Environment.** An allowlist (:mod:`activities.backends.environment`): the base variables every command gets
  (``PATH``, ``HOME``, ``USER``, ...), what Claude Code reads (``CLAUDE_CODE_VARIABLES``: ``ANTHROPIC_*``,
  ``CLAUDE_CODE_*``, ``CLAUDE_CONFIG_DIR``, the proxy and CA variables), ``-o pass_env`` (e.g. ``AWS_*`` for
  Bedrock), and the ``MOLECULE_*`` message metadata unless ``-o env=false``. The worker's secrets never.
- **Sessions.** A conversation (the dispatch lane: ``contextId``, else the sender) maps to one Claude session
  whose id is deterministic: ``uuid5(SESSION_NAMESPACE, workspace_id + newline + lane)``, so any worker, before
  or after a restart, derives the same id. Claude Code creates a session with ``--session-id <id>`` (which
  fails with "already in use" once the session exists) and continues one with ``--resume <id>`` (which fails
  with "No conversation found" before it exists).
- **Knowing "first".** A marker file per session under ``-o state_dir`` (default: the worker's state
  directory, ``claude-code/sessions/<id>``) records that the session exists, written after a successful run.
  Marker present → ``--resume``; absent → ``--session-id``. The marker is only a hint that saves a failed
  start; Claude's own answer decides: ``--session-id`` failing with "already in use" (the worker died after
  Claude recorded the session but before the marker was written, or the state directory was lost) is rerun
  with ``--resume``, and ``--resume`` failing with "No conversation found" (Claude's storage was wiped, or
  ``-o cwd`` changed: Claude keeps sessions per project directory) is rerun with ``--session-id``. Both retries
  share the one ``-o timeout``. So the choice is correct across worker restarts and crashes; keep ``-o cwd``
  stable for a conversation to continue. ``-o sessions=false`` runs every message in a fresh session.
- The lanes of ``ConnectWorkflow`` run one conversation's messages in order, so one session is never resumed
  by two runs at once.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator, model_validator

from activities.a2a import TextPart
from activities.backends.base import BackendConfigError, BackendRequest, BackendResponse
from activities.backends.environment import (
    BASE_VARIABLES,
    CLAUDE_CODE_VARIABLES,
    ChildEnvInfo,
    child_env,
    parse_pass_env,
    redact,
)
from activities.backends.exec import ExecFailedError, ProcessOutcome, run_in_group, stdout_text
from activities.backends.options import BackendOptions, Duration, parse_options

logger = logging.getLogger(__name__)

SESSION_NAMESPACE = uuid.UUID("6b1f3c52-9a0e-5d4b-8c71-2f0d9e6a4b13")
"""UUIDv5 namespace of Claude session ids. Changing it starts every conversation afresh."""
SESSION_FLAGS = frozenset({"--session-id", "--resume", "-r", "--continue", "-c", "--fork-session"})
"""Flags the backend manages itself; ``-o args`` may hold them only with ``-o sessions=false``."""
_IN_USE = "already in use"
_NOT_FOUND = "no conversation found"
_MIN_RETRY_TIMEOUT = timedelta(seconds=1)
_INSTALL_HINT = "install Claude Code (npm install -g @anthropic-ai/claude-code) or pass -o bin=/path/to/claude"


class ClaudeCodeOptions(BackendOptions):
    """Options of the ``claude-code`` backend (``-o args="--model sonnet" -o timeout=10m``)."""

    bin: str = "claude"
    """The Claude Code program: a name looked up on PATH, or a path."""
    args: str = ""
    """Extra arguments after `claude -p`, split like a shell line, passed without a shell (e.g. "--model sonnet
    --allowedTools Read,Grep")."""
    timeout: Duration = timedelta(minutes=5)
    """How long one message may run (500ms, 30s, 5m, 1h or bare seconds) before Claude's processes are killed."""
    env: bool = True
    """Add MOLECULE_WORKSPACE_ID, _ROW_ID, _SOURCE_ID, _CONTEXT_ID, _MESSAGE_ID and _ATTEMPT to the env."""
    pass_env: str = ""
    """Worker variables Claude also gets, by name (comma-separated; PREFIX* for a prefix, e.g. "AWS_*" for
    Bedrock); besides PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_*, TZ, TMPDIR, ANTHROPIC_*, CLAUDE_CODE_*,
    CLAUDE_CONFIG_DIR, HTTP(S)_PROXY, NO_PROXY and NODE_EXTRA_CA_CERTS."""
    cwd: str | None = None
    """Working directory of Claude (its project; default: the worker's). Claude keeps sessions per directory."""
    sessions: bool = True
    """One Claude session per conversation (--session-id, then --resume); false: a fresh session per message."""
    state_dir: str | None = None
    """Where session markers live (default: the worker's state directory); keep it across restarts."""
    grace: Duration = timedelta(seconds=2)
    """How long Claude's process group may take to exit after SIGTERM before it gets SIGKILL."""

    @field_validator("args")
    @classmethod
    def _args_split(cls, args: str) -> str:
        """Reject argument lines that :func:`shlex.split` cannot split."""
        try:
            shlex.split(args)
        except ValueError as err:
            raise ValueError(f"cannot split argument line ({err})") from None
        return args

    @field_validator("bin")
    @classmethod
    def _bin_not_empty(cls, program: str) -> str:
        if not program.strip():
            raise ValueError("empty program name")
        return program

    @field_validator("pass_env")
    @classmethod
    def _pass_env_names(cls, pass_env: str) -> str:
        """Refuse values, malformed names and the worker's secrets (:func:`parse_pass_env`); normalize the list."""
        return ",".join(parse_pass_env(pass_env))

    @field_validator("cwd", "state_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """Read ``-o cwd=`` and ``-o state_dir=`` as "the default"."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _no_session_flags(self) -> ClaudeCodeOptions:
        """Keep session flags out of ``args`` while the backend manages sessions."""
        if self.sessions:
            managed = sorted(SESSION_FLAGS.intersection(self.extra_args))
            if managed:
                raise ValueError(
                    f"option 'args' must not hold {', '.join(managed)}: the backend picks the session per "
                    "conversation (or pass -o sessions=false)"
                )
        return self

    @property
    def extra_args(self) -> list[str]:
        """``args`` as argv elements."""
        return shlex.split(self.args)


def session_id(workspace_id: str, lane: str) -> str:
    """The Claude session id of one conversation: the same for every message, worker and restart.

    Args:
        workspace_id: Our workspace id (two workspaces never share a session).
        lane: The conversation key of :class:`~activities.backends.base.BackendRequest` (``contextId``, else
            the sender, else ``canvas``).

    Returns:
        A UUID string (Claude Code requires UUIDs).
    """
    return str(uuid.uuid5(SESSION_NAMESPACE, f"{workspace_id}\n{lane}"))


class ClaudeCodeBackend:
    """Answer with ``claude -p``, continuing one Claude session per conversation; see the module docstring.

    Concurrent dispatches may share one instance: state lives in marker files and in Claude's own storage.
    """

    summary: ClassVar[str] = "Answer with Claude Code (claude -p), one Claude session per conversation."
    options_model: ClassVar[type[BackendOptions]] = ClaudeCodeOptions
    child_env_info: ClassVar[ChildEnvInfo] = ChildEnvInfo(inherited=(*BASE_VARIABLES, *CLAUDE_CODE_VARIABLES))

    def __init__(self, options: Mapping[str, str]) -> None:
        """Validate the options, find the program and create the session marker directory.

        Args:
            options: ``bin``, ``args``, ``timeout``, ``env``, ``pass_env``, ``cwd``, ``sessions``, ``state_dir``,
                ``grace``; see :class:`ClaudeCodeOptions`.

        Raises:
            BackendConfigError: An unknown or malformed option, session flags in ``args``, a ``pass_env`` naming
                a value, a worker secret or a metadata variable, a ``cwd`` that is not a directory, a program that
                cannot be found, or a state directory that cannot be created.
        """
        self.options = parse_options(ClaudeCodeOptions, options, backend="claude-code")
        self._env_patterns = (*BASE_VARIABLES, *CLAUDE_CODE_VARIABLES, *parse_pass_env(self.options.pass_env))
        cwd = self.options.cwd
        if cwd is not None and not os.path.isdir(cwd):
            raise BackendConfigError(f"claude-code: -o cwd={cwd!r} is not a directory")
        self._program = _find_program(self.options.bin, cwd)
        self._markers: Path | None = None
        if self.options.sessions:
            self._markers = _marker_dir(self.options.state_dir)

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Run ``claude -p`` on one message in its conversation's session.

        Args:
            request: The inbound message.

        Returns:
            One :class:`~activities.a2a.TextPart` with Claude's answer (its stdout).

        Raises:
            ExecFailedError: Claude exited non-zero (other than the session fallbacks of the module docstring).
            BackendError: It ran longer than ``-o timeout`` or printed more than the exec output cap.
            BackendConfigError: The program or working directory vanished since the backend was created.
            asyncio.CancelledError: The dispatch was cancelled; Claude's process group was killed first.
        """
        log_fields = {
            "workspace_id": request.workspace_id,
            "row_id": request.row_id,
            "message_id": request.message.message_id,
            "attempt": request.attempt,
        }
        env = child_env(os.environ, self._env_patterns, request if self.options.env else None)
        run = _Run(self._program, self.options, request.text.encode(), env, log_fields)
        if self._markers is None:
            outcome = await run.once([])
        else:
            session = session_id(request.workspace_id, request.lane)
            marker = self._markers / session
            resume = marker.exists()
            outcome = await run.once(["--resume" if resume else "--session-id", session])
            fallback = _fallback(outcome, resume)
            if fallback is not None:
                logger.debug("claude-code: session %s: %s", session, fallback, extra=log_fields)
                resume = not resume
                if not resume:
                    marker.unlink(missing_ok=True)
                outcome = await run.once(["--resume" if resume else "--session-id", session])
            if outcome.returncode == 0:
                marker.touch(exist_ok=True)
        if outcome.returncode != 0:
            stderr_tail = redact(outcome.stderr_tail, env)
            raise ExecFailedError(self.options.bin, outcome.returncode, stderr_tail, backend="claude-code")
        return BackendResponse(parts=[TextPart(text=stdout_text(outcome.stdout))])

    async def close(self) -> None:
        """Nothing to release: each message's processes end with its :meth:`handle` call."""


class _Run:
    """The runs of ``claude`` for one message, sharing its input, environment and one ``-o timeout``."""

    def __init__(
        self,
        program: str,
        options: ClaudeCodeOptions,
        stdin: bytes,
        env: dict[str, str],
        log_fields: dict[str, Any],
    ) -> None:
        self._program = program
        self._options = options
        self._stdin = stdin
        self._env = env
        self._log_fields = log_fields
        self._spent = timedelta(0)

    async def once(self, session_args: list[str]) -> ProcessOutcome:
        """Run ``claude -p <session args> <extra args>`` with what remains of the timeout."""
        options = self._options
        remaining = max(options.timeout - self._spent, _MIN_RETRY_TIMEOUT)
        started = time.monotonic()
        try:
            return await run_in_group(
                [self._program, "-p", *session_args, *options.extra_args],
                self._stdin,
                env=self._env,
                cwd=options.cwd,
                timeout=remaining,
                grace=options.grace,
                backend="claude-code",
                hint="check -o bin and -o cwd",
                log_fields=self._log_fields,
            )
        finally:
            self._spent += timedelta(seconds=time.monotonic() - started)


def _fallback(outcome: ProcessOutcome, resumed: bool) -> str | None:
    """Why a failed run should be retried with the other session flag, or ``None`` when it should not."""
    if outcome.returncode == 0:
        return None
    said = f"{outcome.stderr_tail}\n{outcome.stdout[-2000:].decode(errors='replace')}".lower()
    if resumed and _NOT_FOUND in said:
        return "not found by --resume; starting it with --session-id"
    if not resumed and _IN_USE in said:
        return "already exists; continuing it with --resume"
    return None


def _find_program(program: str, cwd: str | None) -> str:
    """The program as it will be run: a path checked for being executable, or a name found on PATH.

    Raises:
        BackendConfigError: Not found, or not executable.
    """
    if os.sep in program:
        path = os.path.join(cwd, program) if cwd and not os.path.isabs(program) else program
        if not os.path.isfile(path):
            raise BackendConfigError(f"claude-code: program {program!r} not found; {_INSTALL_HINT}")
        if not os.access(path, os.X_OK):
            raise BackendConfigError(f"claude-code: program {program!r} is not executable; chmod +x it")
        return program
    if shutil.which(program) is None:
        raise BackendConfigError(f"claude-code: program {program!r} not found on PATH; {_INSTALL_HINT}")
    return program


def _marker_dir(configured: str | None) -> Path:
    """Create (mode 0700) and return the session marker directory.

    Raises:
        BackendConfigError: It cannot be created.
    """
    if configured is not None:
        base = Path(configured).expanduser()
    else:
        from worker.settings import state_dir

        base = state_dir() / "claude-code"
    markers = base / "sessions"
    try:
        markers.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise BackendConfigError(
            f"claude-code: cannot create session directory {str(markers)!r}: {err.strerror or err}; "
            "set -o state_dir=DIR"
        ) from err
    return markers
