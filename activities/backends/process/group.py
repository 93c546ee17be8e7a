"""Process groups of backend commands: telling whether one still runs, and ending it with a grace period.

A command spawned with ``start_new_session=True`` leads a new session and process group whose id is its pid,
so everything it starts (``sh -c 'a | b'``, background jobs) is signalled at once with ``os.killpg``. Killing
only the direct child would leave its children running, holding our pipes open, doing work nobody will read.

POSIX only (``os.killpg``). A group member that escapes with its own ``setsid`` is out of reach, as with any
process-group kill.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from activities.backends.process.spawn import Child

logger = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.05
"""How often the grace period checks whether the group has exited; short, as a scan costs ~1 ms."""
_PROC = Path("/proc")


def signal_group(pgid: int, signum: int) -> bool:
    """Send a signal to every process of a group.

    Args:
        pgid: The process group id (the pid of a child spawned with ``start_new_session=True``).
        signum: The signal, e.g. ``signal.SIGTERM``; ``0`` only checks that the group exists.

    Returns:
        ``True`` if it was sent; ``False`` if the group no longer exists (or its id is someone else's now).
    """
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Tell whether any process of a group is still running.

    Zombies do not count: they have exited and only wait to be reaped, which inside a container whose init
    does not reap orphans may be never. On Linux the group's members are read from ``/proc``; elsewhere a
    zombie member counts as running, which only makes :func:`terminate_group` wait out its grace period.

    Args:
        pgid: The process group id.

    Returns:
        ``True`` while some member has not exited.
    """
    if not signal_group(pgid, 0):
        return False
    if not _PROC.is_dir():
        return True
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesized command name: state, ppid, pgrp, ... (proc(5)).
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
    return False


async def terminate_group(process: Child, grace: timedelta) -> None:
    """End a child's whole process group: SIGTERM, up to ``grace`` to exit, then SIGKILL; then reap the child.

    Safe to call when the group has already exited. If the caller is cancelled during the grace period, the
    group is still sent SIGKILL before the cancellation propagates. Output left in the child's stdout and
    stderr is discarded, so nothing may be reading them any more.

    Args:
        process: A child spawned with ``start_new_session=True`` (its pid is the group id).
        grace: How long the group may take to exit after SIGTERM.
    """
    pgid = process.pid
    if group_alive(pgid):
        signal_group(pgid, signal.SIGTERM)
        try:
            await _wait_group_exit(pgid, grace)
        finally:
            if group_alive(pgid):
                logger.warning(
                    "process group %d still running %.1f s after SIGTERM; sending SIGKILL",
                    pgid,
                    grace.total_seconds(),
                )
                signal_group(pgid, signal.SIGKILL)
    try:
        # Reading the pipes to their end lets their transports close (a reader paused on a full buffer never
        # sees end of file). Bounded, as an escaped grandchild may hold them open.
        await asyncio.wait_for(
            asyncio.gather(_discard(process.stdout), _discard(process.stderr), process.wait()),
            timeout=max(grace.total_seconds(), 1.0),
        )
    except TimeoutError:
        logger.warning("process %d: pipes still open after its group was killed; not waiting for them", pgid)


async def _discard(stream: asyncio.StreamReader | None) -> None:
    """Read a pipe to its end, dropping what it holds."""
    if stream is not None:
        while await stream.read(64 * 1024):
            pass


async def _wait_group_exit(pgid: int, grace: timedelta) -> None:
    """Return when no member of the group runs, or when ``grace`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace.total_seconds()
    while group_alive(pgid) and loop.time() < deadline:
        await asyncio.sleep(_POLL_INTERVAL_S)
