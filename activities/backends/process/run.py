"""Running one command to its end: stdin fed, stdout read under a cap, the tail of stderr kept, its group ended.

This is the process discipline of the command backends (``exec``, ``claude-code``): no shell, started by
:func:`~activities.backends.process.spawn.spawn` (``vfork``, never a fork of the worker) in a new session and process
group; the whole group ended (SIGTERM, a grace period, SIGKILL: :mod:`activities.backends.process.group`) on
timeout, cancellation or output over :data:`MAX_STDOUT_BYTES`; processes left in the background after a normal exit
sent SIGTERM. What the exit status means is the backend's to judge: :class:`ExecFailedError` is the error of a
command that failed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from activities.backends.base import BackendConfigError, BackendError
from activities.backends.options import format_duration
from activities.backends.process.group import group_alive, signal_group, terminate_group
from activities.backends.process.spawn import Child, spawn

logger = logging.getLogger(__name__)

MAX_STDOUT_BYTES = 8 * 1024 * 1024
"""Most output one reply may have (8 MiB); read at call time, so tests may lower it."""
STDERR_TAIL_CHARS = 500
"""How much of the end of stderr an :class:`ExecFailedError` carries."""
_READ_SIZE = 64 * 1024


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
    :func:`~activities.backends.process.spawn.spawn` (``vfork``, never a fork of the worker), a new session and
    process group, the whole group ended on timeout, cancellation or output over the cap (SIGTERM,
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
