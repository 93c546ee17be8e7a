"""The ``exec`` backend: runs a command for each message; the text goes to its stdin, its stdout is the reply.

Contract (DESIGN.md §3):

- ``-o cmd`` is split like a POSIX shell line (``shlex``) and run **without** a shell: no pipes, globs or
  ``$VAR`` expansion, so message text can never be interpreted. For shell syntax, run a shell yourself:
  ``-o cmd="sh -c 'tr a-z A-Z | rev'"``. The program is looked up (``PATH``, or as a path) when the backend
  is created, so a typo blocks the workspace at start rather than failing every message.
- stdin: the message text in UTF-8, or with ``-o stdin=json`` (alias ``-o format=json``) the whole
  :class:`BackendRequest` as one JSON object (snake_case fields; ``message`` in A2A camelCase). stdout, decoded
  as UTF-8 (invalid bytes replaced) minus one trailing newline, is the reply: one text part. Empty output is an
  empty reply, not an error: the command decided what to say. More than :data:`MAX_STDOUT_BYTES` of output is a
  :class:`BackendError`, not a truncated reply, so a runaway command is dead-lettered instead of flooding the
  conversation.
- JSON mode (``stdin=json``) also reads stdout that is one JSON object with a ``parts`` list as A2A v0.3 parts
  (``{"parts": [{"kind": "text", "text": "hi"}, {"kind": "data", "data": {...}}]}``), so a command can reply
  with files and data; each part is validated (a bad one is a :class:`BackendError`). Any other stdout, JSON
  or not, is plain text as above.
- A non-zero exit is an :class:`ExecFailedError` (a :class:`BackendError`) carrying the status and the end of
  stderr; exceeding ``-o timeout`` is ``BackendError("exec: timed out after 60s")``. Dispatch retries both.
- The command leads its own process group. On timeout, cancellation (re-raised) or any other failure the
  whole group gets SIGTERM, ``-o grace`` to exit, then SIGKILL, and the child is reaped. Processes it leaves
  running in the background after a successful run are sent SIGTERM.
- Environment: built from an allowlist, never inherited (:mod:`activities.backends.environment`): ``PATH``,
  ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR`` when the worker
  has them, the variables named by ``-o pass_env=NAME,PREFIX_*``, and with ``-o env=true`` the message's ids
  (:func:`~activities.backends.environment.metadata_env`). The worker's secrets (codec keys, tokens, Temporal
  API key and TLS paths) never reach the command, and the values of secret-looking variables it was given are
  removed from the stderr an error carries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal

import orjson
from pydantic import TypeAdapter, ValidationError, field_validator, model_validator

from activities.a2a import DataPart, FilePart, Part, TextPart
from activities.backends.base import BackendConfigError, BackendError, BackendRequest, BackendResponse
from activities.backends.environment import BASE_VARIABLES, ChildEnvInfo, child_env, parse_pass_env, redact
from activities.backends.options import BackendOptions, Duration, format_duration, parse_options
from activities.backends.process_group import group_alive, signal_group, terminate_group
from activities.backends.spawn import Child, spawn

logger = logging.getLogger(__name__)

MAX_STDOUT_BYTES = 8 * 1024 * 1024
"""Most output one reply may have (8 MiB); read at call time, so tests may lower it."""
STDERR_TAIL_CHARS = 500
"""How much of the end of stderr an :class:`ExecFailedError` carries."""
_READ_SIZE = 64 * 1024
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


class ExecFailedError(BackendError):
    """The command exited with a non-zero status or was killed by a signal.

    Attributes:
        returncode: The exit status, or ``-N`` when signal ``N`` ended the command.
        stderr_tail: At most the last :data:`STDERR_TAIL_CHARS` characters of stderr, stripped.
    """

    def __init__(self, program: str, returncode: int, stderr_tail: str, *, backend: str = "exec") -> None:
        if returncode < 0:
            try:
                outcome = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                outcome = f"was killed by signal {-returncode}"
        else:
            outcome = f"exited with status {returncode}"
        super().__init__(f"{backend}: {program!r} {outcome}: {stderr_tail or '(stderr empty)'}")
        self.returncode = returncode
        self.stderr_tail = stderr_tail


@dataclass(frozen=True)
class ProcessOutcome:
    """How a command run by :func:`run_in_group` ended."""

    returncode: int
    """The exit status, or ``-N`` when signal ``N`` ended it."""
    stdout: bytes
    """All of its standard output (at most :data:`MAX_STDOUT_BYTES`)."""
    stderr_tail: str
    """At most the last :data:`STDERR_TAIL_CHARS` characters of its standard error, stripped."""


async def run_in_group(
    argv: Sequence[str],
    stdin_bytes: bytes,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout: timedelta,
    grace: timedelta,
    backend: str,
    hint: str,
    log_fields: Mapping[str, Any],
) -> ProcessOutcome:
    """Run a command as the leader of its own process group, feeding stdin and reading stdout and stderr.

    The shared process discipline of the command backends (``exec``, ``claude-code``): no shell, started by
    :func:`~activities.backends.spawn.spawn` (``vfork``, never a fork of the worker), a new session and process
    group, the whole group ended on timeout, cancellation or output over the cap (SIGTERM,
    ``grace``, SIGKILL), and processes left in the background after a normal exit sent SIGTERM.

    Args:
        argv: The program and its arguments.
        stdin_bytes: Everything the command reads; stdin is closed after it.
        env: The command's whole environment.
        cwd: Its working directory; ``None`` for the worker's.
        timeout: How long it may run.
        grace: How long its group may take to exit after SIGTERM.
        backend: The backend name that prefixes error messages.
        hint: Advice appended when the program cannot be run (which option to check).
        log_fields: ``extra=`` of the DEBUG log lines (workspace, row, message, attempt).

    Returns:
        Its exit status, stdout and the tail of stderr; a non-zero status is the caller's to judge.

    Raises:
        BackendError: It ran longer than ``timeout``, printed more than :data:`MAX_STDOUT_BYTES`, or could not
            be started for a passing reason (e.g. too many open files).
        BackendConfigError: The program or working directory does not exist or is not executable.
        asyncio.CancelledError: The caller was cancelled; the process group was ended first.
    """
    try:
        process = await spawn(argv, env=env, cwd=cwd)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        where = f" in {cwd!r}" if cwd else ""
        raise BackendConfigError(f"{backend}: cannot run {argv[0]!r}{where}: {err.strerror}; {hint}") from err
    except OSError as err:
        raise BackendError(f"{backend}: cannot start {argv[0]!r}: {err.strerror or err}") from err
    logger.debug("%s: started %r as pid %d", backend, argv[0], process.pid, extra=log_fields)
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            stdout, stderr_tail = await _communicate(process, stdin_bytes, backend)
            returncode = await process.wait()
    except TimeoutError:
        await terminate_group(process, grace)
        raise BackendError(f"{backend}: timed out after {format_duration(timeout)}") from None
    except BaseException:
        # Cancellation, or output over the cap: no process of this message may outlive the call.
        await terminate_group(process, grace)
        raise
    if group_alive(process.pid):
        logger.debug("%s: %r left processes running; sending them SIGTERM", backend, argv[0], extra=log_fields)
        signal_group(process.pid, signal.SIGTERM)
    logger.debug("%s: %r exited with %d", backend, argv[0], returncode, extra=log_fields)
    return ProcessOutcome(returncode=returncode, stdout=stdout, stderr_tail=stderr_tail)


def stdout_text(stdout: bytes) -> str:
    """A command's reply text: stdout as UTF-8 (invalid bytes replaced) minus one trailing newline (LF or CRLF)."""
    text = stdout.decode("utf-8", errors="replace")
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


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
            logger.warning(
                "exec: cmd contains %s but runs without a shell; %s", " ".join(operators), _SHELL_HINT
            )

    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Run the command on one message.

        Args:
            request: The inbound message.

        Returns:
            One :class:`~activities.a2a.TextPart` with the command's stdout (possibly empty); in JSON mode the
            parts of a ``{"parts": [...]}`` stdout instead.

        Raises:
            ExecFailedError: The command exited non-zero or was killed by a signal.
            BackendError: It ran longer than ``-o timeout``, printed more than :data:`MAX_STDOUT_BYTES`, could
                not be started for a passing reason (e.g. too many open files), or printed ``{"parts": ...}``
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


async def _communicate(process: Child, stdin_bytes: bytes, backend: str) -> tuple[bytes, str]:
    """Feed stdin while reading stdout and stderr, so a command that writes before reading never stalls.

    Returns:
        All of stdout, and the stripped tail of stderr.

    Raises:
        BackendError: stdout grew beyond :data:`MAX_STDOUT_BYTES`.
    """
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError(f"{backend}: the command was started without pipes")
    feeder = asyncio.create_task(_feed(process.stdin, stdin_bytes))
    stderr_reader = asyncio.create_task(_read_tail(process.stderr))
    try:
        stdout = await _read_capped(process.stdout, MAX_STDOUT_BYTES, backend)
        stderr_tail = await stderr_reader
        await feeder
    finally:
        feeder.cancel()
        stderr_reader.cancel()
        await asyncio.gather(feeder, stderr_reader, return_exceptions=True)
    return stdout, stderr_tail


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the input and close stdin, so the command sees end of file."""
    try:
        # uvloop closes a write pipe as soon as its reader is gone, and then refuses writes (RuntimeError).
        if not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # The command exited or closed stdin without reading everything; its exit status and output decide.
        pass
    finally:
        stdin.close()


async def _read_capped(stream: asyncio.StreamReader, limit: int, backend: str) -> bytes:
    """Read a stream to its end, refusing more than ``limit`` bytes."""
    output = bytearray()
    while chunk := await stream.read(_READ_SIZE):
        output += chunk
        if len(output) > limit:
            raise BackendError(f"{backend}: output exceeded {limit} bytes; the reply was not sent")
    return bytes(output)


async def _read_tail(stream: asyncio.StreamReader) -> str:
    """Read a stream to its end, keeping only its last :data:`STDERR_TAIL_CHARS` characters, stripped."""
    # Four bytes per character at most in UTF-8; the rest is dropped as it arrives, so memory stays bounded.
    keep = 4 * STDERR_TAIL_CHARS
    tail = bytearray()
    while chunk := await stream.read(_READ_SIZE):
        tail += chunk
        del tail[:-keep]
    return tail.decode("utf-8", errors="replace").strip()[-STDERR_TAIL_CHARS:].strip()
