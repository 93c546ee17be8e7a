"""The ``exec`` backend: runs a command for each message; the text goes to its stdin, its stdout is the reply.

Contract (docs/architecture.md §3):

- ``-o cmd`` is split like a POSIX shell line (``shlex``) and run **without** a shell: no pipes, globs or
  ``$VAR`` expansion, so message text can never be interpreted. For shell syntax, run a shell yourself:
  ``-o cmd="sh -c 'tr a-z A-Z | rev'"``. The program is looked up (``PATH``, or as a path) when the backend
  is created, so a typo blocks the workspace at start rather than failing every message.
- stdin: the message text in UTF-8, or with ``-o stdin=json`` (alias ``-o format=json``) the whole
  :class:`BackendRequest` as one JSON object (snake_case fields; ``message`` in A2A camelCase). stdout, decoded
  as UTF-8 (invalid bytes replaced) minus one trailing newline, is the reply: one text part. Empty output is an
  empty reply, not an error: the command decided what to say. More than 8 MiB of output
  (:data:`~activities.backends.process.run.MAX_STDOUT_BYTES`) is a :class:`BackendError`, not a truncated reply,
  so a runaway command is dead-lettered instead of flooding the conversation.
- JSON mode (``stdin=json``) also reads stdout that is one JSON object with a ``parts`` list as A2A v0.3 parts
  (``{"parts": [{"kind": "text", "text": "hi"}, {"kind": "data", "data": {...}}]}``), so a command can reply
  with files and data; each part is validated (a bad one is a :class:`BackendError`). Any other stdout, JSON
  or not, is plain text as above.
- A non-zero exit is an :class:`~activities.backends.process.run.ExecFailedError` (a :class:`BackendError`)
  carrying the status and the end of stderr; exceeding ``-o timeout`` is
  ``BackendError("exec: timed out after 60s")``. Dispatch retries both.
- The command leads its own process group (:func:`~activities.backends.process.run.run_in_group`). On timeout,
  cancellation (re-raised) or any other failure the whole group gets SIGTERM, ``-o grace`` to exit, then SIGKILL,
  and the child is reaped. Processes it leaves running in the background after a successful run are sent SIGTERM.
- Environment: built from an allowlist, never inherited (:mod:`activities.backends.process.environment`): ``PATH``,
  ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR`` when the worker
  has them, the variables named by ``-o pass_env=NAME,PREFIX_*``, and with ``-o env=true`` the message's ids
  (:func:`~activities.backends.process.environment.metadata_env`). The worker's secrets (codec keys, tokens, Temporal
  API key and TLS paths) never reach the command, and the values of secret-looking variables it was given are
  removed from the stderr an error carries.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal

import orjson
from pydantic import TypeAdapter, ValidationError, field_validator, model_validator

from activities.a2a import DataPart, FilePart, Part, TextPart
from activities.backends.base import BackendConfigError, BackendError, BackendRequest, BackendResponse
from activities.backends.options import BackendOptions, Duration, parse_options
from activities.backends.process import (
    BASE_VARIABLES,
    ChildEnvInfo,
    ExecFailedError,
    child_env,
    parse_pass_env,
    redact,
    run_in_group,
    stdout_text,
)

logger = logging.getLogger(__name__)

_SHELL_HINT = "shell syntax needs -o cmd=\"sh -c '...'\""
_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", "<", ">", ">>", "2>", "2>&1"})


class ExecOptions(BackendOptions):
    """Options of the ``exec`` backend (``-o cmd='tr a-z A-Z' -o timeout=30s``)."""

    cmd: str
    """Command line, split like a shell line, run without a shell (for pipes or $VARS: cmd="sh -c '...'")."""
    timeout: Duration = timedelta(seconds=60)
    """How long one message may run (500ms, 30s, 5m, 1h or bare seconds) before its processes are killed."""
    env: bool = True
    """Add MOLECULE_WORKSPACE_ID, _ROW_ID, _SOURCE_ID, _CONTEXT_ID, _MESSAGE_ID and _ATTEMPT to the env."""
    pass_env: str = ""
    """Worker variables the command also gets, by name (comma-separated; PREFIX* for a prefix, e.g.
    "OPENAI_API_KEY,AWS_*"); it otherwise sees only PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_*, TZ, TMPDIR."""
    cwd: str | None = None
    """Working directory of the command (default: the worker's)."""
    stdin: Literal["text", "json"] = "text"
    """What the command reads: the message text, or the whole request as one JSON object (then a stdout of
    {"parts": [...]} is read as A2A parts)."""
    grace: Duration = timedelta(seconds=2)
    """How long the process group may take to exit after SIGTERM before it gets SIGKILL."""
    format: Literal["text", "json"] = "text"
    """Alias: format=json sets stdin=json (the whole request on stdin, {"parts": [...]} accepted on stdout)."""

    @model_validator(mode="before")
    @classmethod
    def _format_sets_stdin(cls, data: Any) -> Any:
        """Apply ``format=json`` to ``stdin``, refusing a contradicting ``stdin=text``."""
        if isinstance(data, dict) and data.get("format") == "json":
            if data.get("stdin", "json") != "json":
                raise ValueError("format=json means stdin=json; drop one of them")
            data = {**data, "stdin": "json"}
        return data

    @field_validator("cmd")
    @classmethod
    def _splits_into_argv(cls, cmd: str) -> str:
        """Reject command lines that :func:`shlex.split` cannot split or that name no program."""
        try:
            argv = shlex.split(cmd)
        except ValueError as err:
            raise ValueError(f"cannot split command line ({err})") from None
        if not argv:
            raise ValueError("empty command line")
        return cmd

    @field_validator("cwd", mode="before")
    @classmethod
    def _empty_is_unset(cls, cwd: Any) -> Any:
        """Read ``-o cwd=`` as "the worker's directory"."""
        return None if cwd == "" else cwd

    @field_validator("pass_env")
    @classmethod
    def _pass_env_names(cls, pass_env: str) -> str:
        """Refuse values, malformed names and the worker's secrets (:func:`parse_pass_env`); normalize the list."""
        return ",".join(parse_pass_env(pass_env))

    @property
    def argv(self) -> list[str]:
        """The program and its arguments, as :func:`shlex.split` reads ``cmd``."""
        return shlex.split(self.cmd)


_PARTS = TypeAdapter(list[Part])


def json_reply_parts(text: str) -> list[TextPart | FilePart | DataPart] | None:
    """Read JSON-mode stdout: the parts of a ``{"parts": [...]}`` object, or ``None`` for plain text.

    Args:
        text: The decoded stdout.

    Returns:
        The validated parts (one empty text part for ``{"parts": []}``), or ``None`` when ``text`` is not a
        JSON object with a ``parts`` key.

    Raises:
        BackendError: ``parts`` is not a list of valid A2A v0.3 parts (each needs ``kind``: text, file or data).
    """
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        document = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or "parts" not in document:
        return None
    try:
        parts = _PARTS.validate_python(document["parts"])
    except ValidationError as err:
        first = err.errors()[0]
        where = "parts" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise BackendError(
            f'exec: stdout is JSON with "parts" but {where} is invalid: {first["msg"]} '
            '(expected e.g. {"parts": [{"kind": "text", "text": "hi"}]})'
        ) from None
    return list(parts) or [TextPart(text="")]


class ExecBackend:
    """Run a command per message: the text on stdin, stdout as the reply; see the module docstring.

    Stateless between messages, so concurrent dispatches may share one instance.
    """

    summary: ClassVar[str] = "Run a command per message: message text on stdin, its stdout is the reply."
    options_model: ClassVar[type[BackendOptions]] = ExecOptions
    child_env_info: ClassVar[ChildEnvInfo] = ChildEnvInfo(inherited=BASE_VARIABLES)

    def __init__(self, options: Mapping[str, str]) -> None:
        """Validate the options and check that the program and working directory exist.

        Args:
            options: ``cmd`` (required), ``timeout``, ``env``, ``pass_env``, ``cwd``, ``stdin``, ``grace``,
                ``format``; see :class:`ExecOptions`.

        Raises:
            BackendConfigError: An unknown or malformed option, a missing ``cmd``, a ``pass_env`` naming a value,
                a worker secret or a metadata variable, a ``cwd`` that is not a directory, or a program that is not
                on ``PATH`` / not an executable file.
        """
        self.options = parse_options(ExecOptions, options, backend="exec")
        self._argv = self.options.argv
        self._env_patterns = (*BASE_VARIABLES, *parse_pass_env(self.options.pass_env))
        cwd = self.options.cwd
        if cwd is not None and not os.path.isdir(cwd):
            raise BackendConfigError(f"exec: -o cwd={cwd!r} is not a directory")
        _check_program(self._argv[0], cwd)
        operators = sorted(_SHELL_OPERATORS.intersection(self._argv[1:]))
        if operators:
            logger.warning("exec: cmd contains %s but runs without a shell; %s", " ".join(operators), _SHELL_HINT)

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Run the command on one message.

        Args:
            request: The inbound message.

        Returns:
            One :class:`~activities.a2a.TextPart` with the command's stdout (possibly empty); in JSON mode the
            parts of a ``{"parts": [...]}`` stdout instead.

        Raises:
            ExecFailedError: The command exited non-zero or was killed by a signal.
            BackendError: It ran longer than ``-o timeout``, printed more than the output cap (8 MiB),
                could not be started for a passing reason (e.g. too many open files), or printed ``{"parts": ...}``
                in JSON mode with invalid parts.
            BackendConfigError: The program or working directory vanished since the backend was created.
            asyncio.CancelledError: The dispatch was cancelled; the process group was killed first.
        """
        log_fields = {
            "workspace_id": request.workspace_id,
            "row_id": request.row_id,
            "message_id": request.message.message_id,
            "attempt": request.attempt,
        }
        json_mode = self.options.stdin == "json"
        stdin_bytes = request.model_dump_json().encode() if json_mode else request.text.encode()
        env = child_env(os.environ, self._env_patterns, request if self.options.env else None)
        outcome = await run_in_group(
            self._argv,
            stdin_bytes,
            env=env,
            cwd=self.options.cwd,
            timeout=self.options.timeout,
            grace=self.options.grace,
            backend="exec",
            hint=f"check -o cmd and -o cwd ({_SHELL_HINT})",
            log_fields=log_fields,
        )
        if outcome.returncode != 0:
            raise ExecFailedError(self._argv[0], outcome.returncode, redact(outcome.stderr_tail, env))
        text = stdout_text(outcome.stdout)
        parts = json_reply_parts(text) if json_mode else None
        return BackendResponse(parts=parts if parts is not None else [TextPart(text=text)])

    async def close(self) -> None:
        """Nothing to release: each message's processes end with its :meth:`handle` call."""


def _check_program(program: str, cwd: str | None) -> None:
    """Fail early when the program cannot be found, the way ``execvp`` would look for it.

    Raises:
        BackendConfigError: A path that is not an executable file, or a bare name not on ``PATH``.
    """
    if os.sep in program:
        # A relative path is resolved against the command's working directory, as subprocess does on POSIX.
        path = os.path.join(cwd, program) if cwd else program
        if not os.path.isfile(path):
            raise BackendConfigError(f"exec: command {program!r} not found; check -o cmd ({_SHELL_HINT})")
        if not os.access(path, os.X_OK):
            raise BackendConfigError(f"exec: command {program!r} is not executable; chmod +x it")
    elif shutil.which(program) is None:
        raise BackendConfigError(
            f"exec: command {program!r} not found on PATH; give its full path or fix PATH ({_SHELL_HINT})"
        )
