"""The request budget: how many platform requests a worker process may send, and in which order.

A platform answers ``429`` past 600 requests/min per client IP (docs/protocol.md §2), and every connector served by
one worker process shares that IP. So all of a process's platform requests draw from one token bucket per platform
(:class:`RequestBudget`), sized below the limit; when each inbox is read within it is planned by
:class:`activities.planner.ReadPlanner`, which also keeps the buckets per platform (``RequestBudgets``).

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
- Shared: :meth:`RequestBudget.set_share` scales rate and burst to this process's share of a budget that several
  worker processes behind one IP split (``worker.budget_share``).
- Told off: :meth:`RequestBudget.throttled` (the platform answered ``429``) sends nothing before ``Retry-After`` and
  lowers the rate to half for at least :data:`THROTTLE_HOLD_S`, then brings it back over :data:`THROTTLE_RECOVER_S`:
  a ``429`` means something else on our IP uses the limit too, so retrying at the old rate would only collect more.
- ``per_minute <= 0`` means unlimited: nothing ever waits, and ``429`` answers change no rate.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

DEFAULT_PER_MINUTE = 480
"""Default budget per platform: the platform's 600 requests/min/IP (docs/protocol.md §2) with 20 % headroom for other
clients on the same IP (the ``molecule`` CLI, a second worker briefly overlapping during a deploy)."""
DEFAULT_BURST = 20
"""Default bucket size: a worker restart re-registers and re-polls its workspaces at once; 20 lets a small fleet
start without queueing, while the platform's sliding minute window still sees at most 20 + 480 requests."""

THROTTLE_CUT = 0.5
"""Each ``429`` (at most one per :data:`THROTTLE_MIN_GAP_S`) multiplies the rate by this."""
THROTTLE_FLOOR = 0.125
"""The rate never falls below this fraction of the budget, however many ``429`` answers come."""
THROTTLE_HOLD_S = 60.0
"""The lowered rate holds this long after a ``429`` (or ``Retry-After``, when longer): the platform counts requests
over a sliding minute."""
THROTTLE_RECOVER_S = 120.0
"""Then the rate climbs back linearly to the full budget over this long."""
THROTTLE_MIN_GAP_S = 5.0
"""Answers of requests that were in flight together count as one ``429``."""
MIN_SHARE = 0.01
"""The smallest share of a host's budget a worker process is left with (``set_share``)."""

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
        """The configured budget (requests/min); :attr:`effective_per_minute` is what applies now."""
        self.burst = burst
        self.reserve = reserve
        self.clock = clock
        self.sleep = sleep
        self._share = 1.0
        self._capacity = float(burst)
        self._cut = 1.0
        self._cut_until = -math.inf
        self._last_cut = -math.inf
        self._rate = per_minute / 60.0
        self._tokens = float(burst)
        self._updated = clock()
        self._queues: tuple[deque[asyncio.Future[None]], ...] = tuple(deque() for _ in Priority)
        self._timer: asyncio.Task[None] | None = None
        self._timer_due = 0.0
        self.granted = 0
        """Requests let through so far."""
        self.queued = 0
        """Requests that had to wait for a token so far."""
        self.throttles = 0
        """``429`` answers reported through :meth:`throttled` so far."""

    @property
    def unlimited(self) -> bool:
        """Whether the budget is disabled (``per_minute <= 0``)."""
        return self.per_minute <= 0

    @property
    def waiting(self) -> int:
        """Requests currently waiting for a token."""
        return sum(not t.done() for queue in self._queues for t in queue)

    @property
    def share(self) -> float:
        """This process's share of the budget (1.0 unless several workers split it, see :meth:`set_share`)."""
        return self._share

    def throttle(self, now: float | None = None) -> float:
        """The factor the last ``429`` answers leave on the rate now: 1.0 when none came lately."""
        now = self.clock() if now is None else now
        if now < self._cut_until:
            return self._cut
        recovered = (now - self._cut_until) / THROTTLE_RECOVER_S
        return min(1.0, self._cut + (1.0 - self._cut) * recovered)

    def effective_per_minute(self, now: float | None = None) -> float:
        """Requests per minute this bucket lets through now: the budget × share × throttle (``0``: unlimited)."""
        if self.unlimited:
            return 0.0
        return self.per_minute * self._share * self.throttle(now)

    def set_share(self, share: float) -> None:
        """Use ``share`` (clamped to ``[MIN_SHARE, 1]``) of the budget: rate and burst scale with it.

        The burst never falls below ``reserve + 1``, so inbox reads can still start.
        """
        self._refill()
        self._share = min(max(share, MIN_SHARE), 1.0)
        self._capacity = max(float(self.reserve + 1), math.ceil(self.burst * self._share))
        self._tokens = min(self._tokens, self._capacity)
        self._rate = self.effective_per_minute(self._updated) / 60.0

    def throttled(self, retry_after_s: float | None = None) -> None:
        """The platform answered ``429``: send nothing before ``Retry-After``, and lower the rate for a while.

        Args:
            retry_after_s: The answer's ``Retry-After`` in seconds, when it had one.
        """
        if self.unlimited:
            return
        self._refill()
        now = self._updated
        self.throttles += 1
        if now - self._last_cut >= THROTTLE_MIN_GAP_S:
            self._cut = max(THROTTLE_FLOOR, self.throttle(now) * THROTTLE_CUT)
            self._last_cut = now
        self._cut_until = max(self._cut_until, now + max(THROTTLE_HOLD_S, retry_after_s or 0.0))
        self._rate = self.effective_per_minute(now) / 60.0
        if retry_after_s:
            # Negative tokens: the bucket is empty until Retry-After has passed, for every class.
            self._tokens = min(self._tokens, -retry_after_s * self._rate)

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
                self._tokens = min(self._capacity, self._tokens + 1.0)
                self.granted -= 1
            self._dispatch()
            raise

    def _need(self, priority: Priority) -> float:
        return 1.0 + self.reserve if priority == Priority.POLL else 1.0

    def _refill(self) -> None:
        # The rate of the span just ended is the one set at its start: a throttle only ever lowers it at once, and
        # its recovery is then credited a little late, never early.
        now = self.clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._rate = self.effective_per_minute(now) / 60.0

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
        due = self.clock() + delay
        if self._timer is not None and not self._timer.done():
            if self._timer_due <= due:
                return
            # A heartbeat or reply arrived behind reads that need more tokens (the reserve): wake sooner.
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().create_task(self._wake(delay))

    async def _wake(self, delay: float) -> None:
        await self.sleep(delay)
        self._timer = None
        self._dispatch()
