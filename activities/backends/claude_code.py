"""The ``claude-code`` backend: answers each message with ``claude -p``, one Claude session per conversation.

Contract (docs/architecture.md §3):

- The message text goes to ``claude -p`` on stdin; its stdout (minus one trailing newline) is the reply, one
  text part. ``-o args="--model sonnet --allowedTools Read"`` adds arguments, split like a shell line and
  passed as argv (never through a shell). The process discipline is the ``exec`` backend's
  (:func:`~activities.backends.process.run.run_in_group`): its own process group, killed (SIGTERM, ``-o grace``,
  SIGKILL) on timeout (``-o timeout``, default 5 min) and on cancellation.
- **Environment.** An allowlist (:mod:`activities.backends.process.environment`): the base variables every command gets
  (``PATH``, ``HOME``, ``USER``, ...), what Claude Code reads (:data:`CLAUDE_CODE_VARIABLES`: ``ANTHROPIC_*``,
  ``CLAUDE_CODE_*``, ``CLAUDE_CONFIG_DIR``, the proxy and CA variables), ``-o pass_env`` (e.g. ``AWS_*`` for
  Bedrock), and the ``MOLECULE_*`` message metadata unless ``-o env=false``. The worker's secrets never.
- **Failures.** A run that exits non-zero because Claude Code cannot run at all (not logged in, invalid or
  disabled API key, no credit, unknown model, unknown option or bad option value: :data:`CANNOT_RUN`, matched on
  stdout and stderr, where the real CLI prints them) raises :class:`BackendConfigError` with Claude's own words,
  which blocks the connector until fixed instead of dead-lettering every message. Any other non-zero exit is an
  :class:`~activities.backends.process.run.ExecFailedError` (retried) with the end of stderr, or of stdout when stderr
  is empty. Values of secret-looking variables passed to Claude are removed from both.
- **Sessions.** A conversation (the dispatch lane: ``contextId``, else the sender) maps to one Claude session
  whose id is deterministic: ``uuid5(SESSION_NAMESPACE, workspace_id + newline + lane)``, so any worker, before
  or after a restart, derives the same id. Claude Code creates a session with ``--session-id <id>``, which
  fails with ``Error: Session ID <id> is already in use.`` once Claude holds a transcript of that id in the
  project directory, and continues one with ``--resume <id>``, which fails with
  ``No conversation found with session ID: <id>`` when it holds none (or one without a conversation).
- **Knowing "first".** A marker file per conversation under ``-o state_dir`` (default: the worker's state directory,
  :mod:`activities.local_state`, ``claude-code/sessions/<id>``) records that the session exists and which id it has,
  written after a successful run. Marker present → ``--resume``; absent → ``--session-id``. The marker is only a
  hint that saves a failed start; Claude's own answer decides: "already in use" (the worker died after Claude
  recorded the session but before the marker was written, the state directory was lost, or Claude recorded the
  session of a run that then failed, e.g. not logged in) is rerun with ``--resume``, and "No conversation found"
  (Claude's storage was wiped, or ``-o cwd`` changed: Claude keeps sessions per project directory) with
  ``--session-id``. When Claude refuses both for one id (a transcript cut short before its first message, e.g.
  Claude killed as it started), the conversation moves on to the next id of a deterministic chain
  (:func:`next_session_id`), at most :data:`MAX_SESSION_IDS` ids per message. All runs of a message share the one
  ``-o timeout``. So the choice is correct across worker restarts and crashes; keep ``-o cwd`` stable for a
  conversation to continue. ``-o sessions=false`` runs every message in a fresh session.
- The lanes of ``ConnectWorkflow`` run one conversation's messages in order, so one session is never resumed
  by two runs at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator, model_validator

from activities import local_state
from activities.a2a import TextPart
from activities.backends.base import BackendConfigError, BackendRequest, BackendResponse
from activities.backends.options import BackendOptions, Duration, parse_options
from activities.backends.process import (
    BASE_VARIABLES,
    CLAUDE_CODE_VARIABLES,
    ChildEnvInfo,
    ExecFailedError,
    ProcessOutcome,
    child_env,
    parse_pass_env,
    redact,
    run_in_group,
    stdout_text,
)

logger = logging.getLogger(__name__)

SESSION_NAMESPACE = uuid.UUID("6b1f3c52-9a0e-5d4b-8c71-2f0d9e6a4b13")
"""UUIDv5 namespace of Claude session ids. Changing it starts every conversation afresh."""
SESSION_FLAGS = frozenset({"--session-id", "--resume", "-r", "--continue", "-c", "--fork-session"})
"""Flags the backend manages itself; ``-o args`` may hold them only with ``-o sessions=false``."""
MAX_SESSION_IDS = 4
"""How many ids of a conversation's chain (:func:`next_session_id`) one message may try."""

_LOGIN_HINT = (
    "log in to Claude Code as the user running the worker (run claude, then /login), or set ANTHROPIC_API_KEY "
    "in the worker's environment (passed to Claude by default)"
)
_ACCOUNT_HINT = "check the Anthropic account and the organization of the key"
_ARGS_HINT = "check -o args (claude --help lists the options)"
CANNOT_RUN: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Not logged in\b"), _LOGIN_HINT),
    (re.compile(r"\bInvalid API key\b"), _LOGIN_HINT),
    (re.compile(r"^OAuth token revoked\b"), _LOGIN_HINT),
    (re.compile(r"\b(Please run|Run) /login\b"), _LOGIN_HINT),
    (re.compile(r"\bdisabled API key authentication\b|\bbelongs to a disabled organization\b"), _ACCOUNT_HINT),
    (re.compile(r"\bdoes not have access to Claude\b"), _ACCOUNT_HINT),
    (re.compile(r"^Credit balance is too low\b"), "add credit to the Anthropic account"),
    (re.compile(r"^There's an issue with the selected model\b"), "check --model in -o args"),
    (
        re.compile(
            r"^error: (unknown option|unknown command|too many arguments|missing required argument|option '|"
            r"required option)"
        ),
        _ARGS_HINT,
    ),
)
"""What Claude Code prints (on stdout or stderr, exit status 1) when it cannot answer any message: a line pattern
and what the operator should do. Texts as ``@anthropic-ai/claude-code`` 2.1 prints them (tests keep the exact
outputs as fixtures): ``Not logged in · Please run /login``, ``Invalid API key · Fix external API key``,
``Credit balance is too low``, ``There's an issue with the selected model (<model>). ...``,
``error: unknown option '--x'``, ``error: option '--model <model>' argument missing``."""
_MIN_RETRY_TIMEOUT = timedelta(seconds=1)
_OUTPUT_TAIL_BYTES = 2000
_REASON_CHARS = 300
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


def next_session_id(session: str) -> str:
    """The id a conversation moves on to when Claude can neither resume nor reuse ``session``.

    Deterministic, so a worker that lost its markers walks the same chain from :func:`session_id` and finds the
    conversation where another worker left it.

    Args:
        session: The unusable session id.

    Returns:
        A UUID string.
    """
    return str(uuid.uuid5(SESSION_NAMESPACE, f"{session}\nnext"))


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
            BackendConfigError: Claude Code cannot run at all (:data:`CANNOT_RUN`: not logged in, invalid API
                key, unknown model or option, ...), with its own words; or the program or working directory
                vanished since the backend was created.
            ExecFailedError: Claude exited non-zero for another reason (after the session fallbacks of the
                module docstring).
            BackendError: It ran longer than ``-o timeout`` or printed more than the exec output cap.
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
            outcome = await self._run_in_session(run, session_id(request.workspace_id, request.lane), log_fields)
        if outcome.returncode != 0:
            raise _failure(self.options.bin, outcome, env)
        return BackendResponse(parts=[TextPart(text=stdout_text(outcome.stdout))])

    async def _run_in_session(self, run: _Run, conversation: str, log_fields: dict[str, Any]) -> ProcessOutcome:
        """Run Claude in the conversation's session, falling back between the flags and along the id chain.

        Args:
            run: The runs of this message.
            conversation: The conversation's first session id (:func:`session_id`), which names its marker.
            log_fields: ``extra=`` of the log lines.

        Returns:
            The outcome of the last run: a success, or a failure other than the session errors (or the session
            error of the last id tried).
        """
        assert self._markers is not None
        marker = self._markers / conversation
        known = _read_marker(marker, conversation)
        session, resume = (known, True) if known is not None else (conversation, False)
        tried = {(session, resume)}
        ids = 1
        while True:
            outcome = await run.once(["--resume" if resume else "--session-id", session])
            refusal = _session_refusal(outcome, session)
            if refusal is None:
                break
            resume = refusal == "in use"
            if (session, resume) not in tried:
                logger.debug(
                    "claude-code: session %s %s; rerunning with %s",
                    session,
                    refusal,
                    "--resume" if resume else "--session-id",
                    extra=log_fields,
                )
            elif ids < MAX_SESSION_IDS:
                following = next_session_id(session)
                logger.warning(
                    "claude-code: Claude can neither resume nor reuse session %s (its transcript holds no "
                    "conversation); the conversation continues in session %s",
                    session,
                    following,
                    extra=log_fields,
                )
                session, resume, ids = following, False, ids + 1
            else:
                break
            tried.add((session, resume))
        if outcome.returncode == 0 and known != session:
            _write_marker(marker, session)
        return outcome

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


def _said(outcome: ProcessOutcome) -> list[str]:
    """The non-empty lines Claude printed, stderr's tail then stdout's, stripped."""
    stdout_tail = outcome.stdout[-_OUTPUT_TAIL_BYTES:].decode(errors="replace")
    lines = f"{outcome.stderr_tail}\n{stdout_tail}".splitlines()
    return [line.strip() for line in lines if line.strip()]


def _session_refusal(outcome: ProcessOutcome, session: str) -> str | None:
    """Which session error a failed run reports for ``session`` (``in use``, ``not found``), or ``None``."""
    if outcome.returncode == 0:
        return None
    said = "\n".join(_said(outcome))
    if f"Session ID {session} is already in use" in said:
        return "in use"
    if f"No conversation found with session ID: {session}" in said:
        return "not found"
    return None


def _failure(program: str, outcome: ProcessOutcome, env: Mapping[str, str]) -> Exception:
    """The error of a failed run: :class:`BackendConfigError` when Claude cannot run at all, else a retried one.

    The reason carries Claude's own words (secret values of ``env`` removed), never the message.
    """
    lines = [redact(line, env) for line in _said(outcome)]
    for line in lines:
        for pattern, hint in CANNOT_RUN:
            if pattern.search(line):
                return BackendConfigError(f"claude-code: Claude Code cannot run: {_clip(line)}; {hint}")
    detail = redact(outcome.stderr_tail, env)
    if not detail and lines:
        detail = f"(stderr empty; stdout ends with: {_clip(lines[-1])})"
    return ExecFailedError(program, outcome.returncode, detail, backend="claude-code")


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


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
        base = local_state.state_dir() / "claude-code"
    markers = base / "sessions"
    try:
        markers.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise BackendConfigError(
            f"claude-code: cannot create session directory {str(markers)!r}: {err.strerror or err}; "
            "set -o state_dir=DIR"
        ) from err
    return markers


def _read_marker(marker: Path, conversation: str) -> str | None:
    """The session a conversation's marker names, or ``None`` without a marker.

    An empty marker (as written before session chains existed) or one that is not a UUID names the
    conversation's first id.
    """
    try:
        text = marker.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        logger.warning("claude-code: cannot read session marker %s: %s", marker, err.strerror or err)
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return conversation


def _write_marker(marker: Path, session: str) -> None:
    """Record that ``session`` exists for the marker's conversation (atomically: a crash leaves the old one).

    A marker that cannot be written is logged, not raised: the reply is good, and the next message finds the
    session through Claude's own refusal.
    """
    partial = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(session + "\n")
        os.replace(partial, marker)
    except OSError as err:
        logger.warning("claude-code: cannot write session marker %s: %s", marker, err.strerror or err)
        with contextlib.suppress(OSError):
            partial.unlink()
