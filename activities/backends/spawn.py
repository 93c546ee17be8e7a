"""Starting a backend command without forking the worker, on any event loop.

``asyncio.create_subprocess_exec`` is cheap on asyncio's own loop (``subprocess.Popen`` uses ``vfork``), but on
uvloop, the worker's default loop (:mod:`worker.loop`), libuv's ``uv_spawn`` **forks** the whole worker: the loop
stops for the copy of every page table, and the cost grows with the worker's memory (measured: 5.6 ms per spawn at
50 MiB of heap, 19 ms at 300 MiB, against 1.3 ms with ``vfork``; benchmarks/RESULTS.md, finding 6).

:func:`spawn` therefore starts the command with :class:`subprocess.Popen` (``vfork`` + ``exec``), hands its three
pipes to the running loop (``connect_write_pipe`` / ``connect_read_pipe``, which take ownership of them), and learns
of its exit from a Linux pidfd (``os.pidfd_open``, Linux ≥ 5.3) watched by the loop: no fork, no watcher thread,
and no SIGCHLD handler of anyone else's reaps our child. Where pidfds are missing (macOS, old kernels, seccomp) it
falls back to ``asyncio.create_subprocess_exec``.

Both paths return an object with the :class:`Child` shape: ``pid``, ``stdin`` (a :class:`asyncio.StreamWriter`),
``stdout`` / ``stderr`` (:class:`asyncio.StreamReader`) and ``await wait()``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol


class Child(Protocol):
    """A running command with its three pipes; :class:`asyncio.subprocess.Process` has this shape too."""

    @property
    def pid(self) -> int:
        """The command's process id, which is also its process group id."""
        ...

    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int:
        """Wait for the command to exit; its status, or ``-N`` when signal ``N`` ended it."""
        ...


@functools.cache
def pidfd_supported() -> bool:
    """Whether this system can watch a child's exit through a pidfd (``os.pidfd_open``; Linux ≥ 5.3)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


async def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None) -> Child:
    """Start ``argv`` in a new session (so it leads its own process group) with piped stdin, stdout and stderr.

    Args:
        argv: The program and its arguments; run without a shell.
        env: Its whole environment.
        cwd: Its working directory; ``None`` for the worker's.

    Returns:
        The running :class:`Child`. Reaping is taken care of: the child is reaped as soon as it exits, whether
        or not anyone awaits ``wait()``.

    Raises:
        FileNotFoundError, PermissionError, NotADirectoryError: The program or ``cwd`` cannot be used.
        OSError: Any other reason the command could not be started (e.g. too many open files).
    """
    if not pidfd_supported():
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    child = _PidfdChild(popen)
    try:
        await child.connect()
    except BaseException:
        popen.kill()
        child.close_pipes()
        raise
    return child


class _PidfdChild:
    """A :class:`subprocess.Popen` child attached to the running loop: pipes as streams, exit seen by a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        self._loop.add_reader(self._pidfd, self._reap)
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @property
    def pid(self) -> int:
        """The command's process id (also its process group id)."""
        return self._popen.pid

    async def connect(self) -> None:
        """Hand the three pipes to the loop; the transports own (and close) them from here on."""
        stdin_pipe, stdout_pipe, stderr_pipe = self._popen.stdin, self._popen.stdout, self._popen.stderr
        assert stdin_pipe is not None and stdout_pipe is not None and stderr_pipe is not None
        self.stdout = await self._reader(stdout_pipe)
        self.stderr = await self._reader(stderr_pipe)
        # A write pipe's protocol needs flow control for drain(); StreamReaderProtocol brings it.
        transport, protocol = await self._loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), stdin_pipe
        )
        self.stdin = asyncio.StreamWriter(transport, protocol, None, self._loop)
        self._popen.stdin = self._popen.stdout = self._popen.stderr = None

    async def _reader(self, pipe: object) -> asyncio.StreamReader:
        reader = asyncio.StreamReader()
        await self._loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader

    def close_pipes(self) -> None:
        """Close whatever pipe was not yet handed to the loop (after a failed :meth:`connect`)."""
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                pipe.close()
        if self.stdin is not None:
            self.stdin.close()

    def _reap(self) -> None:
        """The pidfd is readable: the child has exited. Reap it and stop watching."""
        returncode = self._popen.poll()
        if returncode is None:  # not reaped yet; cannot happen once the pidfd is readable, but never block the loop
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        """Wait for the command to exit; its status, or ``-N`` when signal ``N`` ended it."""
        return await asyncio.shield(self._exited)
