"""When each inbox is read: the read planner, and a worker process's request budgets per platform.

A worker process sends a platform three kinds of requests, all drawn from one budget of ``B`` requests/min
(:class:`activities.budget.RequestBudget`: 480 by default, split between the workers of one host by
``worker.budget_share``):

- heartbeats: 2 per workspace-minute (one every 30 s, docs/protocol.md §3.2), so ``H = 2N`` for ``N`` workspaces;
- work: registers, replies and re-reads of large bodies, ``R`` per minute (counted over the last minute);
- inbox reads: what is left, ``A = B - 2N - R`` per minute (never less than :data:`MIN_READ_SHARE` of ``B``).

Heartbeats and work are not planned, only counted (:meth:`ReadPlanner.note_request`): the bucket serves them
before any read. :class:`ReadPlanner` hands the ``A`` reads/min to the inboxes. An inbox asks before each read
(:meth:`ReadPlanner.wait_for_read`) and may read once ``poll_interval_s`` has passed since its last read (at once
after a read that returned rows). While the inboxes together want no more than that (``Σ 60 / poll_interval_s
<= A``), this is all there is: every inbox is read every ``poll_interval_s`` however long it has been quiet, and a
lone workspace never slows down. When they want more, reads are paced at ``A`` per minute and each goes to the
inbox that has waited longest since its last read (round robin, not first come first served): inboxes at one
``poll_interval_s`` are each read every ``I = 60 N / A`` seconds, and an inbox with a longer ``poll_interval_s``
than ``I`` keeps its own. The first message after a quiet spell so waits at most ``max(poll_interval_s, I)`` for
its read, plus the delivery itself.

With the defaults (``B = 480``, ``poll_interval_s = 1``, no replies) ``I`` is 1 s for 1 workspace, 1.3 s for 10,
7.9 s for 50, 21.4 s for 100 and 150 s for 200 (:func:`read_interval`). From 240 workspaces the heartbeats alone
take the whole budget: the planner is *overloaded* (:attr:`ReadPlanner.overloaded`, a warning in the log,
:meth:`ReadPlanner.describe` for ``status``) and the workspaces must be spread over workers on more client IPs.

A new worker process starts at the planned rate: reads are paced from the first one, with no more than one second's
worth of unused reads saved up, so a restart never reads every inbox each second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE, Clock, Priority, RequestBudget, Sleep
from activities.messages import Model

HEARTBEATS_PER_MIN = 2.0
"""Heartbeats one workspace sends per minute (every 30 s, docs/protocol.md §3.2)."""
HEARTBEAT_SEEN_S = 90.0
"""A workspace counts as heartbeating for this long after its last heartbeat (three beats)."""
WORK_WINDOW_S = 60.0
"""Registers and replies are counted over this window."""
MIN_READ_SHARE = 0.05
"""Inbox reads are planned at least at this share of the budget, even when heartbeats and replies take it all."""
READ_BURST_S = 1.0
"""Reads not used when due are saved up for at most this long, so a quiet minute never turns into a burst."""
FORGET_AFTER_S = 600.0
"""An inbox that stopped polling keeps its place in the round robin this long, in case its next poll comes."""
PLAN_EVERY_S = 1.0
"""The plan's numbers are recomputed at most this often (and whenever a workspace comes or goes)."""

logger = logging.getLogger(__name__)


class BudgetPlan(Model):
    """How a worker process spends its request budget for one platform right now (:meth:`ReadPlanner.describe`).

    Frozen and JSON-ready, so a session activity can carry it to its workflow's ``status``.
    """

    platform: str
    """The platform's origin (scheme, host and port)."""
    budget_per_min: float
    """The configured budget; ``0``: unlimited."""
    effective_per_min: float | None
    """The budget this process may use now: its share of the host's budget, lowered after ``429`` answers."""
    share: float
    """This process's share of the host's budget (1.0 when it is the only worker sharing it)."""
    throttle: float
    """What recent ``429`` answers leave of the rate (1.0: none lately)."""
    workspaces: int
    """Workspaces polling or heartbeating through this process."""
    heartbeats_per_min: float
    """Their heartbeats: 2 per workspace."""
    work_per_min: float
    """Registers, replies and body re-reads over the last minute."""
    reads_per_min: float | None
    """What is left for inbox reads; ``None``: unlimited."""
    read_demand_per_min: float
    """Reads the polling inboxes would make at their ``poll_interval_s``."""
    read_interval_s: float | None
    """When the budget is short: the interval every inbox with a shorter ``poll_interval_s`` is read at (the
    worst-case wait of a first message for its read); ``None``: every inbox is read at its ``poll_interval_s``."""
    overloaded: bool
    """Heartbeats alone take the whole budget."""
    advice: str | None = None
    """One line saying what to do when overloaded."""


def reads_per_min(per_minute: float, heartbeats_per_min: float, work_per_min: float) -> float:
    """Inbox reads per minute that a budget leaves after heartbeats and work (see the module docstring)."""
    return max(per_minute - heartbeats_per_min - work_per_min, MIN_READ_SHARE * per_minute)


def shared_interval(poll_intervals_s: Sequence[float], reads_per_minute: float) -> float | None:
    """The interval ``I`` at which inboxes are read when ``reads_per_minute`` cannot serve them all.

    Solves ``Σ 60 / max(p, I) = reads_per_minute`` over the inboxes' ``poll_interval_s`` values ``p``: inboxes with
    ``p < I`` are read every ``I``, the others every ``p`` (max-min fair).

    Returns:
        ``I`` in seconds; ``None`` when every inbox fits at its own ``poll_interval_s``.
    """
    if not poll_intervals_s or sum(60.0 / p for p in poll_intervals_s) <= reads_per_minute:
        return None
    low, high = min(poll_intervals_s), 60.0 * len(poll_intervals_s) / reads_per_minute
    for _ in range(60):
        middle = (low + high) / 2
        if sum(60.0 / max(p, middle) for p in poll_intervals_s) > reads_per_minute:
            low = middle
        else:
            high = middle
    return high


def read_interval(
    per_minute: float, workspaces: int, poll_interval_s: float = 1.0, work_per_min: float = 0.0
) -> float | None:
    """The planned interval between two reads of each inbox when ``workspaces`` poll at ``poll_interval_s``.

    This is also the worst-case wait of a first message for its read (the README's table).

    Returns:
        Seconds; ``None`` when their heartbeats alone take the budget (overloaded).
    """
    if per_minute <= 0 or workspaces <= 0:
        return poll_interval_s
    heartbeats = HEARTBEATS_PER_MIN * workspaces
    if heartbeats >= per_minute:
        return None
    reads = reads_per_min(per_minute, heartbeats, work_per_min)
    return shared_interval([poll_interval_s] * workspaces, reads) or poll_interval_s


def overload_advice(platform: str, workspaces: int, per_minute: float) -> str:
    """The one line said when ``workspaces`` cannot be carried by ``per_minute`` requests/min."""
    # N workspaces at a 1 s poll are each read every 60 N / (B - 2N) s: at most every 30 s while N <= B / 4.
    return (
        f"{workspaces} workspaces on {platform or 'the platform'} need {HEARTBEATS_PER_MIN * workspaces:.0f} "
        f"heartbeats/min, more than the {per_minute:.0f} requests/min this worker may send: heartbeats come late and "
        f"inboxes are hardly read; {int(per_minute // 4)} workspaces per {per_minute:.0f}/min keep every inbox "
        "read at least every 30 s: spread the workspaces over workers on more client IPs (README: Request budget)"
    )


@dataclasses.dataclass
class _Reader:
    joined: float
    interval_s: float = 1.0
    last_read: float | None = None
    due: bool = False
    """The last read returned rows: the next may start at once."""
    left: float | None = None


@dataclasses.dataclass(frozen=True)
class _Numbers:
    budget: float
    workspaces: int
    heartbeats: float
    work: float
    reads: float | None
    overloaded: bool


class ReadPlanner:
    """Plans the inbox reads of one worker process on one platform (the arithmetic is in the module docstring).

    One per platform, shared by every connector of the process (:meth:`RequestBudgets.planner_for`). Time comes from
    the budget's ``clock`` and ``sleep``, so tests drive it with a fake clock.

    Use: ``await wait_for_read(workspace_id, poll_interval_s)`` before each inbox read; ``note_rows(workspace_id)``
    after a read that returned rows; ``done(workspace_id)`` when the workspace stops polling; ``note_request`` for
    every other request (``activities.platform`` does it for each request it sends); ``describe()`` for status.

    Args:
        budget: The platform's request bucket: its effective rate is what the plan divides.
        platform: The platform's origin, for logs and :meth:`describe`.
    """

    def __init__(self, budget: RequestBudget, *, platform: str = "") -> None:
        self.platform = platform
        self._budget = budget
        self._clock: Clock = budget.clock
        self._sleep: Sleep = budget.sleep
        self._readers: dict[str, _Reader] = {}
        self._polling: set[str] = set()
        self._heartbeats: dict[str, float] = {}
        self._work: deque[float] = deque()
        self._queue: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._numbers: _Numbers | None = None
        self._planned_at = -math.inf
        self._overloaded = False
        self._tokens = 1.0
        self._updated = self._clock()
        self._rate = 0.0
        self._capacity = 1.0
        self._timer: asyncio.Task[None] | None = None
        self._timer_due = 0.0
        self.reads = 0
        """Reads granted so far."""
        self.queued = 0
        """Reads that waited for the budget (not only for their ``poll_interval_s``) so far."""

    # --- what connectors call ---------------------------------------------------------------------------------

    async def wait_for_read(self, workspace_id: str, poll_interval_s: float) -> None:
        """Wait until this inbox may be read: ``poll_interval_s`` after its last read, and its turn in the budget.

        The first call makes the workspace a polling one (counted in the plan) until :meth:`done`.

        Raises:
            asyncio.CancelledError: The caller was cancelled; a read granted meanwhile goes back to the budget.
        """
        now = self._clock()
        reader = self._readers.get(workspace_id)
        if reader is None:
            reader = self._readers[workspace_id] = _Reader(joined=now)
        reader.interval_s = poll_interval_s
        reader.left = None
        if workspace_id not in self._polling:
            self._polling.add(workspace_id)
            self._numbers = None
        if reader.last_read is not None and not reader.due:
            wait_s = reader.last_read + poll_interval_s - now
            if wait_s > 0:
                await self._sleep(wait_s)
        if not self._budget.unlimited:
            await self._take_turn(reader)
        reader.last_read = self._clock()
        reader.due = False
        self.reads += 1

    def note_rows(self, workspace_id: str) -> None:
        """The last read returned rows: the next read may start at once (more may be waiting)."""
        reader = self._readers.get(workspace_id)
        if reader is not None:
            reader.due = True

    def done(self, workspace_id: str) -> None:
        """The workspace stopped polling: it no longer counts in the plan.

        Its place in the round robin is kept for :data:`FORGET_AFTER_S`, should it poll again.
        """
        now = self._clock()
        if workspace_id in self._polling:
            self._polling.discard(workspace_id)
            self._numbers = None
        reader = self._readers.get(workspace_id)
        if reader is not None:
            reader.left = now
        forgotten = [w for w, r in self._readers.items() if r.left is not None and now - r.left > FORGET_AFTER_S]
        for workspace in forgotten:
            del self._readers[workspace]

    def note_request(self, workspace_id: str, priority: Priority) -> None:
        """Count a request sent outside the plan: a heartbeat (its workspace counts as served) or work."""
        if priority == Priority.HEARTBEAT:
            if workspace_id not in self._heartbeats and workspace_id not in self._polling:
                self._numbers = None
            self._heartbeats[workspace_id] = self._clock()
        elif priority == Priority.WORK:
            self._work.append(self._clock())

    # --- what status shows ------------------------------------------------------------------------------------

    @property
    def workspaces(self) -> int:
        """Workspaces polling or heartbeating through this process now."""
        return self._plan(self._clock()).workspaces

    @property
    def overloaded(self) -> bool:
        """Whether heartbeats alone take the whole budget (see :func:`overload_advice`)."""
        return self._plan(self._clock()).overloaded

    def describe(self) -> BudgetPlan:
        """The plan now, for ``status`` and the logs."""
        now = self._clock()
        self._numbers = None
        numbers = self._plan(now)
        intervals = [self._readers[w].interval_s for w in self._polling]
        demand = sum(60.0 / p for p in intervals if p > 0)
        interval = None if numbers.reads is None else shared_interval(intervals, numbers.reads)
        return BudgetPlan(
            platform=self.platform,
            budget_per_min=self._budget.per_minute,
            effective_per_min=None if self._budget.unlimited else round(numbers.budget, 1),
            share=round(self._budget.share, 4),
            throttle=round(self._budget.throttle(now), 4),
            workspaces=numbers.workspaces,
            heartbeats_per_min=numbers.heartbeats,
            work_per_min=numbers.work,
            reads_per_min=None if numbers.reads is None else round(numbers.reads, 1),
            read_demand_per_min=round(demand, 1),
            read_interval_s=None if interval is None else round(interval, 2),
            overloaded=numbers.overloaded,
            advice=overload_advice(self.platform, numbers.workspaces, numbers.budget) if numbers.overloaded else None,
        )

    # --- the plan -----------------------------------------------------------------------------------------------

    def _plan(self, now: float) -> _Numbers:
        if self._numbers is not None and now - self._planned_at < PLAN_EVERY_S:
            return self._numbers
        if any(now - seen > HEARTBEAT_SEEN_S for seen in self._heartbeats.values()):
            self._heartbeats = {w: seen for w, seen in self._heartbeats.items() if now - seen <= HEARTBEAT_SEEN_S}
        while self._work and now - self._work[0] > WORK_WINDOW_S:
            self._work.popleft()
        budget = self._budget.effective_per_minute(now)
        workspaces = len(self._polling | self._heartbeats.keys())
        heartbeats = HEARTBEATS_PER_MIN * workspaces
        work = float(len(self._work))
        unlimited = self._budget.unlimited
        overloaded = not unlimited and workspaces > 0 and heartbeats >= budget
        numbers = _Numbers(
            budget=budget,
            workspaces=workspaces,
            heartbeats=heartbeats,
            work=work,
            reads=None if unlimited else reads_per_min(budget, heartbeats, work),
            overloaded=overloaded,
        )
        if overloaded != self._overloaded:
            self._overloaded = overloaded
            if overloaded:
                logger.warning("request budget overloaded: %s", overload_advice(self.platform, workspaces, budget))
            else:
                logger.info("request budget no longer overloaded: %d workspaces on %s", workspaces, self.platform)
        self._numbers, self._planned_at = numbers, now
        return numbers

    def _refill(self) -> None:
        now = self._clock()
        numbers = self._plan(now)
        tokens = self._tokens + (now - self._updated) * self._rate
        self._rate = (numbers.reads or 0.0) / 60.0
        self._capacity = max(1.0, self._rate * READ_BURST_S)
        self._tokens = min(self._capacity, tokens)
        self._updated = now

    async def _take_turn(self, reader: _Reader) -> None:
        """Take one read from the budget: at once when one is free and no inbox waits, else in round-robin order."""
        self._refill()
        while self._queue and self._queue[0][2].done():
            heapq.heappop(self._queue)
        if not self._queue and self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waited_since = reader.last_read if reader.last_read is not None else reader.joined
        heapq.heappush(self._queue, (waited_since, next(self._order), ticket))
        self.queued += 1
        self._dispatch()
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._refill()
                self._tokens = min(self._capacity, self._tokens + 1.0)
            self._dispatch()
            raise

    def _dispatch(self) -> None:
        """Hand reads to the inboxes that waited longest; arm the timer for the next read when some must wait."""
        self._refill()
        while self._queue:
            ticket = self._queue[0][2]
            if ticket.done():  # cancelled while waiting
                heapq.heappop(self._queue)
                continue
            if self._tokens + 1e-9 < 1.0:
                self._arm((1.0 - self._tokens) / self._rate)
                return
            heapq.heappop(self._queue)
            self._tokens = max(self._tokens - 1.0, 0.0)
            ticket.set_result(None)

    def _arm(self, delay: float) -> None:
        due = self._clock() + delay
        if self._timer is not None and not self._timer.done():
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().create_task(self._wake(delay))

    async def _wake(self, delay: float) -> None:
        await self._sleep(delay)
        self._timer = None
        self._dispatch()


def platform_origin(platform_url: str) -> str:
    """The key of a platform's budget: scheme, host and port of its base URL, lower case."""
    parts = urlsplit(platform_url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class RequestBudgets:
    """One :class:`RequestBudget` and one :class:`ReadPlanner` per platform (its origin), made on first use.

    One instance per worker process, shared by every connector it serves: the platform limits by client IP, not
    by workspace.

    Args:
        per_minute: Requests per minute per platform; ``<= 0`` means unlimited.
        burst: Bucket size per platform.
        clock: Monotonic seconds (injectable for tests).
        sleep: ``asyncio.sleep`` (injectable for tests, together with ``clock``).

    Attributes:
        on_new_platform: Called with the origin and budget of each platform when first used (``worker.budget_share``
            sets this host's share on it before its first request).
    """

    def __init__(
        self,
        per_minute: float = DEFAULT_PER_MINUTE,
        burst: int = DEFAULT_BURST,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        RequestBudget(per_minute, burst)  # validate now, not at the first request
        self.per_minute = per_minute
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._platforms: dict[str, tuple[RequestBudget, ReadPlanner]] = {}
        self.on_new_platform: Callable[[str, RequestBudget], None] | None = None

    def _entry(self, platform_url: str) -> tuple[RequestBudget, ReadPlanner]:
        key = platform_origin(platform_url)
        entry = self._platforms.get(key)
        if entry is None:
            budget = RequestBudget(self.per_minute, self.burst, clock=self._clock, sleep=self._sleep)
            entry = self._platforms[key] = (budget, ReadPlanner(budget, platform=key))
            if self.on_new_platform is not None:
                self.on_new_platform(key, budget)
        return entry

    def for_url(self, platform_url: str) -> RequestBudget:
        """The budget of the platform at ``platform_url``."""
        return self._entry(platform_url)[0]

    def planner_for(self, platform_url: str) -> ReadPlanner:
        """The read planner of the platform at ``platform_url``."""
        return self._entry(platform_url)[1]

    def platforms(self) -> dict[str, tuple[RequestBudget, ReadPlanner]]:
        """Every platform used so far: origin → (budget, planner)."""
        return dict(self._platforms)

    def describe(self) -> list[BudgetPlan]:
        """The plan of every platform used so far."""
        return [planner.describe() for _, planner in self._platforms.values()]
