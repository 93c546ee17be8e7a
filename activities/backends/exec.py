"""The ``exec`` backend: runs a command for each message; the text goes to its stdin, its stdout is the reply.

Contract (DESIGN.md §3):

- ``-o cmd`` is split like a POSIX shell line (``shlex``) and run **without** a shell: no pipes, globs or
  ``$VAR`` expansion, so message text can never be interpreted. For shell syntax, run a shell yourself:
  ``-o cmd="sh -c 'tr a-z A-Z | rev'"``. The program is looked up (``PATH``, or as a path) when the backend
  is created, so a typo blocks the workspace at start rather than failing every message.
- stdin: the message text in UTF-8, or with ``-o stdin=json`` the whole :class:`BackendRequest` as one JSON
  object (snake_case fields; ``message`` in A2A camelCase). stdout, decoded as UTF-8 (invalid bytes replaced)
  minus one trailing newline, is the reply: one text part. Empty output is an empty reply, not an error: the
  command decided what to say. More than :data:`MAX_STDOUT_BYTES` of output is a :class:`BackendError`, not a
  truncated reply, so a runaway command is dead-lettered instead of flooding the conversation.
- A non-zero exit is an :class:`ExecFailedError` (a :class:`BackendError`) carrying the status and the end of
  stderr; exceeding ``-o timeout`` is ``BackendError("exec: timed out after 60s")``. Dispatch retries both.
- The command leads its own process group. On timeout, cancellation (re-raised) or any other failure the
  whole group gets SIGTERM, ``-o grace`` to exit, then SIGKILL, and the child is reaped. Processes it leaves
  running in the background after a successful run are sent SIGTERM.
- Environment: the worker's, without ``MOLECULE_*`` variables whose name contains ``TOKEN`` or ``SECRET`` (a
  workspace token is never handed to the command), plus with ``-o env=true`` the message's ids
  (:func:`metadata_env`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from activities.a2a import TextPart
from activities.backends.base import BackendConfigError, BackendError, BackendRequest, BackendResponse
from activities.backends.options import BackendOptions, Duration, format_duration, parse_options
from activities.backends.process_group import group_alive, signal_group, terminate_group

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
    cwd: str | None = None
    """Working directory of the command (default: the worker's)."""
    stdin: Literal["text", "json"] = "text"
    """What the command reads: the message text, or the whole request as one JSON object."""
    grace: Duration = timedelta(seconds=2)
    """How long the process group may take to exit after SIGTERM before it gets SIGKILL."""

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

    def __init__(self, program: str, returncode: int, stderr_tail: str) -> None:
        if returncode < 0:
            try:
                outcome = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                outcome = f"was killed by signal {-returncode}"
        else:
            outcome = f"exited with status {returncode}"
        super().__init__(f"exec: {program!r} {outcome}: {stderr_tail or '(stderr empty)'}")
        self.returncode = returncode
        self.stderr_tail = stderr_tail


def metadata_env(request: BackendRequest) -> dict[str, str]:
    """The ``MOLECULE_*`` variables that ``-o env=true`` adds for one message; never a token.

    Args:
        request: The inbound message.

    Returns:
        ``MOLECULE_WORKSPACE_ID``, ``MOLECULE_ROW_ID``, ``MOLECULE_SOURCE_ID`` (empty for the canvas),
        ``MOLECULE_CONTEXT_ID`` (empty when absent), ``MOLECULE_MESSAGE_ID`` and ``MOLECULE_ATTEMPT``
        (1-based).
    """
    return {
        "MOLECULE_WORKSPACE_ID": request.workspace_id,
        "MOLECULE_ROW_ID": request.row_id,
        "MOLECULE_SOURCE_ID": request.source_id or "",
        "MOLECULE_CONTEXT_ID": request.message.context_id or "",
        "MOLECULE_MESSAGE_ID": request.message.message_id,
        "MOLECULE_ATTEMPT": str(request.attempt),
    }


def _is_molecule_secret(name: str) -> bool:
    """Whether a worker variable may hold a workspace token or secret, so it stays out of the child's env."""
    upper = name.upper()
    return upper.startswith("MOLECULE_") and ("TOKEN" in upper or "SECRET" in upper)


class ExecBackend:
    """Run a command per message: the text on stdin, stdout as the reply; see the module docstring.

    Stateless between messages, so concurrent dispatches may share one instance.
    """

    summary: ClassVar[str] = "Run a command per message: message text on stdin, its stdout is the reply."
    options_model: ClassVar[type[BackendOptions]] = ExecOptions

    def __init__(self, options: Mapping[str, str]) -> None:
        """Validate the options and check that the program and working directory exist.

        Args:
            options: ``cmd`` (required), ``timeout``, ``env``, ``cwd``, ``stdin``, ``grace``; see
                :class:`ExecOptions`.

        Raises:
            BackendConfigError: An unknown or malformed option, a missing ``cmd``, a ``cwd`` that is not a
                directory, or a program that is not on ``PATH`` / not an executable file.
        """
        self.options = parse_options(ExecOptions, options, backend="exec")
        self._argv = self.options.argv
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
            One :class:`~activities.a2a.TextPart` with the command's stdout (possibly empty).

        Raises:
            ExecFailedError: The command exited non-zero or was killed by a signal.
            BackendError: It ran longer than ``-o timeout``, printed more than :data:`MAX_STDOUT_BYTES`, or
                could not be started for a passing reason (e.g. too many open files).
            BackendConfigError: The program or working directory vanished since the backend was created.
            asyncio.CancelledError: The dispatch was cancelled; the process group was killed first.
        """
        log_fields = {
            "workspace_id": request.workspace_id,
            "row_id": request.row_id,
            "message_id": request.message.message_id,
            "attempt": request.attempt,
        }
        if self.options.stdin == "json":
            stdin_bytes = request.model_dump_json().encode()
        else:
            stdin_bytes = request.text.encode()
        process = await self._spawn(request)
        logger.debug("exec: started %r as pid %d", self._argv[0], process.pid, extra=log_fields)
        try:
            async with asyncio.timeout(self.options.timeout.total_seconds()):
                stdout, stderr_tail = await _communicate(process, stdin_bytes)
                returncode = await process.wait()
        except TimeoutError:
            await terminate_group(process, self.options.grace)
            raise BackendError(f"exec: timed out after {format_duration(self.options.timeout)}") from None
        except BaseException:
            # Cancellation, or output over the cap: no process of this message may outlive the call.
            await terminate_group(process, self.options.grace)
            raise
        if group_alive(process.pid):
            logger.debug(
                "exec: %r left processes running; sending them SIGTERM", self._argv[0], extra=log_fields
            )
            signal_group(process.pid, signal.SIGTERM)
        logger.debug("exec: %r exited with %d", self._argv[0], returncode, extra=log_fields)
        if returncode != 0:
            raise ExecFailedError(self._argv[0], returncode, stderr_tail)
        return BackendResponse(parts=[TextPart(text=_reply_text(stdout))])

    async def close(self) -> None:
        """Nothing to release: each message's processes end with its :meth:`handle` call."""

    async def _spawn(self, request: BackendRequest) -> asyncio.subprocess.Process:
        """Start the command as the leader of a new session and process group, with pipes on stdin/out/err."""
        env = {name: value for name, value in os.environ.items() if not _is_molecule_secret(name)}
        if self.options.env:
            env.update(metadata_env(request))
        try:
            return await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.options.cwd,
                env=env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
            where = f" in {self.options.cwd!r}" if self.options.cwd else ""
            raise BackendConfigError(
                f"exec: cannot run {self._argv[0]!r}{where}: {err.strerror}; "
                f"check -o cmd and -o cwd ({_SHELL_HINT})"
            ) from err
        except OSError as err:
            raise BackendError(f"exec: cannot start {self._argv[0]!r}: {err.strerror or err}") from err


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


async def _communicate(process: asyncio.subprocess.Process, stdin_bytes: bytes) -> tuple[bytes, str]:
    """Feed stdin while reading stdout and stderr, so a command that writes before reading never stalls.

    Returns:
        All of stdout, and the stripped tail of stderr.

    Raises:
        BackendError: stdout grew beyond :data:`MAX_STDOUT_BYTES`.
    """
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError("exec: the command was started without pipes")
    feeder = asyncio.create_task(_feed(process.stdin, stdin_bytes))
    stderr_reader = asyncio.create_task(_read_tail(process.stderr))
    try:
        stdout = await _read_capped(process.stdout, MAX_STDOUT_BYTES)
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
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # The command exited or closed stdin without reading everything; its exit status and output decide.
        pass
    finally:
        stdin.close()


def _reply_text(stdout: bytes) -> str:
    """The reply text: stdout as UTF-8 (invalid bytes replaced) minus one trailing newline (LF or CRLF)."""
    text = stdout.decode("utf-8", errors="replace")
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read a stream to its end, refusing more than ``limit`` bytes."""
    output = bytearray()
    while chunk := await stream.read(_READ_SIZE):
        output += chunk
        if len(output) > limit:
            raise BackendError(f"exec: output exceeded {limit} bytes; the reply was not sent")
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
