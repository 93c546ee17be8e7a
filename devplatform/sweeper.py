"""The stale sweep: silent external workspaces go back to ``awaiting_agent`` (docs/protocol.md §1.6).

Production runs it every 15 s with a 90 s window; both are
:class:`~devplatform.settings.PlatformSettings` fields.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from devplatform.db import Database
from devplatform.settings import PlatformSettings

logger = logging.getLogger(__name__)


def sweep_stale(db: Database, stale_after_s: float) -> list[str]:
    """Run one sweep.

    Args:
        db: Database.
        stale_after_s: Heartbeats older than this many seconds are stale.

    Returns:
        Ids of the workspaces moved from ``online``/``degraded`` to ``awaiting_agent``.
    """
    stale = db.sweep_stale(db.now() - timedelta(seconds=stale_after_s))
    if stale:
        logger.info("stale workspaces back to awaiting_agent", extra={"workspace_ids": stale})
    return stale


async def run_stale_sweep(db: Database, settings: PlatformSettings) -> None:
    """Sweep every ``settings.sweep_every_s`` until cancelled (the app's lifespan owns this task).

    A failing sweep is logged and the loop goes on: one bad pass must not end liveness tracking.
    """
    while True:
        await asyncio.sleep(settings.sweep_every_s)
        try:
            sweep_stale(db, settings.stale_after_s)
        except Exception:
            logger.exception("stale sweep failed")
