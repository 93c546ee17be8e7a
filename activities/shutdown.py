"""Waiting inside an activity without holding up the worker's graceful shutdown."""

from __future__ import annotations

import asyncio

from temporalio import activity


async def sleep_until_shutdown(seconds: float) -> bool:
    """Sleep ``seconds`` inside an activity, waking early when the worker shuts down.

    Returns:
        ``True`` when the worker is shutting down: long-running activities (``session``, ``hold_lease``) then
        return at once, so a graceful shutdown only waits for dispatches; the workflow schedules the next run on
        whichever worker is up.
    """
    if activity.is_worker_shutdown():
        return True
    shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
    try:
        await asyncio.wait({shutdown}, timeout=seconds)
    finally:
        shutdown.cancel()
    return activity.is_worker_shutdown()
