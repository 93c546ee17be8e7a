"""The command backends' tests (``exec``, ``claude-code``, :mod:`activities.backends.process`) run every async test
once on asyncio's loop and once on uvloop, the worker's default (worker/loop.py): process spawning and pipes differ
between the two, and a bug of one loop (uvloop's closed stdin pipe) went unseen while the tests knew only the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Loops to run each async test of this directory on (pytest-asyncio hook): asyncio's, and uvloop if installed."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
