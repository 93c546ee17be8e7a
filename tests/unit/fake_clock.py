"""A monotonic clock for unit tests that moves only when told, waking the sleepers due by then in order."""

from __future__ import annotations

import asyncio
import heapq
import itertools


async def settle() -> None:
    """Let every task that can run do so (a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


class FakeClock:
    """Monotonic time that moves only in :meth:`advance`; :meth:`sleep` is its ``asyncio.sleep``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._order), wake))
        await wake

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its due time and letting it run."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, wake = heapq.heappop(self._sleepers)
            if wake.done():  # the sleeper was cancelled
                continue
            self.now = max(self.now, due)
            wake.set_result(None)
            await settle()
        self.now = target
        await settle()
