"""The event loop every command runs on: uvloop when it is installed, else asyncio's default loop.

uvloop (libuv) makes the worker's sockets and callbacks cheaper: the platform HTTP calls and the SDK's bridge
callbacks are most of a busy worker's CPU (benchmarks/RESULTS.md). Workflow code is unaffected: the SDK runs each
workflow on its own deterministic event loop, whatever loop the worker uses. ``MOLECULE_CONNECT_EVENT_LOOP=asyncio``
turns uvloop off (e.g. to rule it out when debugging).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "MOLECULE_CONNECT_EVENT_LOOP"
"""``uvloop`` (default) or ``asyncio``."""


def uses_uvloop() -> bool:
    """Whether :func:`run` runs on uvloop: installed, and not turned off by ``MOLECULE_CONNECT_EVENT_LOOP``."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop (see the module docstring) and return its result."""
    if uses_uvloop():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
