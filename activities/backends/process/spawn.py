"""Starting a backend command without forking the worker, on any event loop.

``asyncio.create_subprocess_exec`` is cheap on asyncio's own loop (``subprocess.Popen`` uses ``vfork``), but on
uvloop, the worker's default loop (:mod:`worker.loop`), libuv's ``uv_spawn`` **forks** the whole worker: the loop
stops for the copy of every page table, and the cost grows with the worker's memory (measured: 5.6 ms per spawn at
50 MiB of heap, 19 ms at 300 MiB, against 1.3 ms with ``vfork``; benchmarks/RESULTS.md, finding 6).

:func:`spawn` therefore starts the command with :class:`subprocess.Popen` (``vfork`` + ``exec``) on three pipes it
makes itself, hands its ends of them to the running loop (``connect_write_pipe`` / ``connect_read_pipe``), and learns
of its exit from a Linux pidfd (``os.pidfd_open``, Linux ≥ 5.3) watched by the loop: no fork, no watcher thread,
and no SIGCHLD handler of anyone else's reaps our child. Where pidfds are missing (macOS, old kernels, seccomp) it
falls back to ``asyncio.create_subprocess_exec``.

Both paths return an object with the :class:`Child` shape: ``pid``, ``stdin`` (a :class:`asyncio.StreamWriter`),
``stdout`` / ``stderr`` (:class:`asyncio.StreamReader`) and ``await wait()``.
"""

from __future__ import annotations

import asyncio
import functools
import io
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
    # The three pipes are made here, not by Popen, so that each parent end has exactly one owner (see _loop_pipe).
    stdin_child, stdin_ours = os.pipe()
    stdout_ours, stdout_child = os.pipe()
    stderr_ours, stderr_child = os.pipe()
    ours = [stdin_ours, stdout_ours, stderr_ours]
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin_child,
            stdout=stdout_child,
            stderr=stderr_child,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (stdin_child, stdout_child, stderr_child):
            os.close(fd)
    try:
        child = _PidfdChild(popen)
    except BaseException:
        popen.kill()
        popen.wait()  # killed: returns at once
        for fd in ours:
            os.close(fd)
        raise
    try:
        await child.connect(stdin_ours, stdout_ours, stderr_ours)
    except BaseException:
        popen.kill()
        child.close_unconnected()
        raise
    return child


def _loop_pipe(loop: asyncio.AbstractEventLoop, fd: int, mode: str) -> io.FileIO:
    """A file object for one of our pipe ends, to hand to ``connect_read_pipe`` / ``connect_write_pipe``.

    Who closes the descriptor differs by loop. asyncio's pipe transports close the file object, so it must own the
    descriptor. uvloop's let libuv close the descriptor and then close the file object as well
    (``UVSocketHandle._close``), which, with a second owner, closes whatever the descriptor number has been reused
    for by then: under load, another command's pipe (commands hung, or failed with EBADF). So on uvloop the file
    object does not own it (``closefd=False``).
    """
    owns = not type(loop).__module__.startswith("uvloop")
    return io.FileIO(fd, mode, closefd=owns)


class _ReadPipeProtocol(asyncio.StreamReaderProtocol):
    """Feeds a :class:`asyncio.StreamReader` and lets the transport close at end of file.

    ``StreamReaderProtocol.eof_received`` asks to keep the transport half open (it is made for sockets); asyncio's
    pipe transports close anyway, uvloop's obey and would hold the descriptor until garbage collection.
    """

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class _PidfdChild:
    """A :class:`subprocess.Popen` child attached to the running loop: pipes as streams, exit seen by a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        self._unconnected: list[int] = []
        self._loop.add_reader(self._pidfd, self._reap)
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @property
    def pid(self) -> int:
        """The command's process id (also its process group id)."""
        return self._popen.pid

    async def connect(self, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        """Hand our ends of the three pipes to the loop; its transports close them from here on."""
        self._unconnected = [stdin_fd, stdout_fd, stderr_fd]
        self.stdout = await self._reader(stdout_fd)
        self.stderr = await self._reader(stderr_fd)
        # A write pipe's protocol needs flow control for drain(); StreamReaderProtocol brings it.
        stdin_pipe = self._hand_over(stdin_fd, "wb")
        transport, protocol = await self._loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), stdin_pipe
        )
        self.stdin = asyncio.StreamWriter(transport, protocol, None, self._loop)

    async def _reader(self, fd: int) -> asyncio.StreamReader:
        reader = asyncio.StreamReader()
        pipe = self._hand_over(fd, "rb")
        await self._loop.connect_read_pipe(lambda: _ReadPipeProtocol(reader), pipe)
        return reader

    def _hand_over(self, fd: int, mode: str) -> io.FileIO:
        """Give up our claim on ``fd`` to the transport about to be made of it (which closes it, even if it fails)."""
        self._unconnected.remove(fd)
        return _loop_pipe(self._loop, fd, mode)

    def close_unconnected(self) -> None:
        """Close the pipe ends not yet handed to the loop (after a failed :meth:`connect`)."""
        for fd in self._unconnected:
            os.close(fd)
        self._unconnected.clear()

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
