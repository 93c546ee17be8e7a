"""Helpers of the command backends' tests: watching processes through /proc, waiting for a condition."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The process state letter from /proc (``Z`` for a zombie), or ``None`` once it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def process_running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return process_state(pid) not in (None, "Z", "X")


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` every 20 ms; fail the test if it is still false after ``timeout_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
