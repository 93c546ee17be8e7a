"""The request budget: how many platform requests a worker process may send, and how often an idle inbox is read.

A platform answers ``429`` past 600 requests/min per client IP (PROTOCOL.md §2), and every connector served by one
worker process shares that IP. So all of a process's platform requests draw from one token bucket per platform
(:class:`RequestBudgets`), sized below the limit, and idle inboxes are read less often (:func:`next_poll_interval`),
so a fleet stays inside the budget without each connector knowing about the others.

Contract of :class:`RequestBudget`:

- Rate and burst: tokens refill at ``per_minute / 60`` per second up to ``burst``; one request takes one token, so
  in any window of ``T`` seconds at most ``burst + T * per_minute / 60`` requests start.
- Classes (:class:`Priority`): a waiting heartbeat gets the next token before any other request, and a waiting
  reply or register before any inbox read. Inbox reads also leave ``reserve`` tokens in the bucket, so heartbeats
  and replies normally find a token at once even while reads use the whole budget. Reads come last because they
  are the elastic part: a read that waits only lengthens the poll interval, while a reply that waits holds
  delivered work (a worker killed meanwhile leaves it to its activity timeout), and replies cannot starve reads for
  long, as they only come from what reads delivered.
- Fair: within a class, requests are served in arrival order. A cancelled waiter leaves the queue, and a token
  handed to a waiter cancelled before it could use it goes back into the bucket.
- ``per_minute <= 0`` means unlimited: nothing ever waits.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

DEFAULT_PER_MINUTE = 480
"""Default budget per platform: the platform's 600 requests/min/IP (PROTOCOL.md §2) with 20 % headroom for other
clients on the same IP (the ``molecule`` CLI, a second worker briefly overlapping during a deploy)."""
DEFAULT_BURST = 20
"""Default bucket size: a worker restart re-registers and re-polls its workspaces at once; 20 lets a small fleet
start without queueing, while the platform's sliding minute window still sees at most 20 + 480 requests."""

IDLE_AFTER_S = 60.0
"""An inbox with no rows for this long counts as idle and its reads start to back off."""
IDLE_GROWTH = 1.5
"""Each empty read of an idle inbox lengthens the pause by this factor."""
IDLE_MAX_INTERVAL_S = 10.0
"""Longest pause between reads of an idle inbox (unless ``poll_interval_s`` is longer): the worst-case extra
latency of the first message after a quiet spell."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Priority(enum.IntEnum):
    """Request classes of the budget, served in this order (lower first) when requests wait."""

    HEARTBEAT = 0
    """``POST /registry/heartbeat``: liveness."""
    WORK = 1
    """Register and replies: finishing work already taken on."""
    POLL = 2
    """Inbox reads: the elastic part of the traffic; they leave the reserve to the others."""


def next_poll_interval(base_s: float, previous_s: float, quiet_s: float) -> float:
    """The pause before the next read of an inbox whose last read was empty.

    For the first :data:`IDLE_AFTER_S` without rows the pause is ``base_s`` (``poll_interval_s``); after that each
    empty read lengthens it by :data:`IDLE_GROWTH`, up to ``max(IDLE_MAX_INTERVAL_S, base_s)``. The caller snaps
    back to ``base_s`` when rows arrive by resetting ``quiet_s``.

    Args:
        base_s: The connector's ``poll_interval_s``.
        previous_s: The pause used after the previous empty read (``base_s`` for the first one).
        quiet_s: Seconds since rows last arrived (or since polling started).

    Returns:
        Seconds to pause.
    """
    if quiet_s < IDLE_AFTER_S:
        return base_s
    return min(max(previous_s, base_s) * IDLE_GROWTH, max(IDLE_MAX_INTERVAL_S, base_s))


class RequestBudget:
    """A token bucket for the requests to one platform (contract in the module docstring).

    Args:
        per_minute: Sustained requests per minute; ``<= 0`` disables the budget.
        burst: Bucket size (at least 1): requests that may start at once after a quiet spell.
        reserve: Tokens inbox reads leave for heartbeats and replies; default ``burst // 10`` (at least 1 when
            ``burst > 1``).
        clock: Monotonic seconds (injectable for tests).
        sleep: ``asyncio.sleep`` (injectable for tests, together with ``clock``).

    Raises:
        ValueError: ``burst < 1`` or a ``reserve`` outside ``[0, burst)``.
    """

    def __init__(
        self,
        per_minute: float = DEFAULT_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        reserve: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if burst < 1:
            raise ValueError(f"request burst must be at least 1, not {burst}")
        reserve = min(max(1, burst // 10), burst - 1) if reserve is None else reserve
        if not 0 <= reserve < burst:
            raise ValueError(f"request reserve must be in [0, {burst}), not {reserve}")
        self.per_minute = per_minute
        self.burst = burst
        self.reserve = reserve
        self._rate = per_minute / 60.0
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._queues: tuple[deque[asyncio.Future[None]], ...] = tuple(deque() for _ in Priority)
        self._timer: asyncio.Task[None] | None = None
        self._timer_due = 0.0
        self.granted = 0
        """Requests let through so far."""
        self.queued = 0
        """Requests that had to wait for a token so far."""

    @property
    def unlimited(self) -> bool:
        """Whether the budget is disabled (``per_minute <= 0``)."""
        return self._rate <= 0

    @property
    def waiting(self) -> int:
        """Requests currently waiting for a token."""
        return sum(not t.done() for queue in self._queues for t in queue)

    def try_acquire(self, priority: Priority = Priority.WORK) -> bool:
        """Take a token if one is available to this class right now, without waiting.

        Returns:
            ``True`` when the request may be sent.
        """
        if self.unlimited:
            self.granted += 1
            return True
        self._refill()
        ok = not any(self._queues[: priority + 1]) and self._tokens >= self._need(priority)
        if ok:
            self._tokens -= 1.0
            self.granted += 1
        return ok

    async def acquire(self, priority: Priority = Priority.WORK) -> None:
        """Wait for a token: FIFO within the class, classes in :class:`Priority` order.

        Raises:
            asyncio.CancelledError: The caller was cancelled while waiting; the token, if already handed over,
                goes back into the bucket.
        """
        if self.try_acquire(priority):
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].append(ticket)
        self.queued += 1
        self._dispatch()
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._refill()
                self._tokens = min(float(self.burst), self._tokens + 1.0)
                self.granted -= 1
            self._dispatch()
            raise

    def _need(self, priority: Priority) -> float:
        return 1.0 + self.reserve if priority == Priority.POLL else 1.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def _dispatch(self) -> None:
        """Hand tokens to waiters in order; arm the timer for the next token when some must still wait."""
        self._refill()
        while True:
            priority = next((p for p in Priority if self._queues[p]), None)
            if priority is None:
                return
            queue = self._queues[priority]
            if queue[0].done():  # cancelled while waiting
                queue.popleft()
                continue
            need = self._need(priority)
            # The epsilon absorbs float error after sleeping exactly the computed delay.
            if self._tokens + 1e-9 < need:
                self._arm((need - self._tokens) / self._rate)
                return
            self._tokens = max(self._tokens - 1.0, 0.0)
            self.granted += 1
            queue.popleft().set_result(None)

    def _arm(self, delay: float) -> None:
        due = self._clock() + delay
        if self._timer is not None and not self._timer.done():
            if self._timer_due <= due:
                return
            # A heartbeat or reply arrived behind reads that need more tokens (the reserve): wake sooner.
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().create_task(self._wake(delay))

    async def _wake(self, delay: float) -> None:
        await self._sleep(delay)
        self._timer = None
        self._dispatch()


class RequestBudgets:
    """One :class:`RequestBudget` per platform (scheme, host and port of its base URL), made on first use.

    One instance per worker process, shared by every connector it serves: the platform limits by client IP, not
    by workspace.

    Args:
        per_minute: Requests per minute per platform; ``<= 0`` means unlimited.
        burst: Bucket size per platform.
    """

    def __init__(self, per_minute: float = DEFAULT_PER_MINUTE, burst: int = DEFAULT_BURST) -> None:
        RequestBudget(per_minute, burst)  # validate now, not at the first request
        self.per_minute = per_minute
        self.burst = burst
        self._budgets: dict[str, RequestBudget] = {}

    def for_url(self, platform_url: str) -> RequestBudget:
        """The budget of the platform at ``platform_url``."""
        parts = urlsplit(platform_url)
        key = f"{parts.scheme}://{parts.netloc}".lower()
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RequestBudget(self.per_minute, self.burst)
        return budget
