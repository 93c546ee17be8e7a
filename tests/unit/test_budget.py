"""The request budget's token bucket (rate, burst, heartbeat priority, cancellation) on a fake clock, and the idle
poll backoff schedule."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.a2a import TextPart
from activities.budget import (
    IDLE_AFTER_S,
    IDLE_MAX_INTERVAL_S,
    Priority,
    RequestBudget,
    RequestBudgets,
    next_poll_interval,
)
from activities.messages import PlatformTarget, PolledRow, PollInput, ReplyInput, RowPointer
from activities.platform import PlatformActivities


class FakeClock:
    """Monotonic time that moves only in ``advance``, waking the budget's sleeper at its due time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    async def advance(self, seconds: float) -> None:
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


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def budget(clock: FakeClock, per_minute: float = 60, burst: int = 5, **kwargs) -> RequestBudget:
    return RequestBudget(per_minute, burst, clock=clock, sleep=clock.sleep, **kwargs)


def start(bucket: RequestBudget, n: int, priority: Priority = Priority.WORK) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(bucket.acquire(priority)) for _ in range(n)]


def done(tasks: list[asyncio.Task[None]]) -> int:
    return sum(t.done() for t in tasks)


async def test_budget_burst_starts_at_once_then_one_token_per_interval() -> None:
    """60/min and burst 5 (reserve 1): four inbox reads go at once, then one per second."""
    clock = FakeClock()
    bucket = budget(clock)
    tasks = start(bucket, 10, Priority.POLL)
    await settle()
    assert done(tasks) == 4
    await clock.advance(0.99)
    assert done(tasks) == 4
    await clock.advance(0.01)
    assert done(tasks) == 5
    await clock.advance(3.0)
    assert done(tasks) == 8
    assert bucket.waiting == 2


async def test_budget_rate_caps_requests_in_any_window() -> None:
    """Over 30 s at 120/min, at most burst + 30 * 2 requests start, and the queue drains at the rate."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=120, burst=10)
    tasks = start(bucket, 200)
    await clock.advance(30.0)
    assert done(tasks) <= 10 + 60
    assert done(tasks) >= 60
    assert bucket.granted == done(tasks)
    for task in tasks:
        task.cancel()
    await settle()
    assert bucket.waiting == 0


async def test_budget_refills_only_up_to_burst_after_idle() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=5, reserve=0)
    await asyncio.gather(*start(bucket, 5))
    await clock.advance(3600.0)
    tasks = start(bucket, 8)
    await settle()
    assert done(tasks) == 5


async def test_budget_heartbeat_and_reply_use_reserve_while_polls_queue() -> None:
    """Polls saturate the bucket; a heartbeat and a reply still go at once from the reserve polls leave."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=5, reserve=2)
    polls = start(bucket, 20, Priority.POLL)
    await settle()
    assert done(polls) == 3
    [heartbeat] = start(bucket, 1, Priority.HEARTBEAT)
    [reply] = start(bucket, 1, Priority.WORK)
    await settle()
    assert heartbeat.done() and reply.done()


async def test_budget_heartbeat_never_waits_behind_queued_polls() -> None:
    """With the reserve spent, the next token goes to the heartbeat, not to the polls queued before it."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=2)
    polls = start(bucket, 5, Priority.POLL)
    first = start(bucket, 1, Priority.HEARTBEAT)
    await settle()
    assert done(polls) == 1 and done(first) == 1
    await clock.advance(0.5)
    second = start(bucket, 1, Priority.HEARTBEAT)
    await settle()
    assert done(second) == 0
    await clock.advance(0.5)
    assert done(second) == 1
    assert done(polls) == 1  # the poll queued since t=0 waits for the reserve to refill as well
    await clock.advance(2.0)
    assert done(polls) == 2


async def test_budget_reply_served_before_polls_queued_earlier() -> None:
    """Saturated by polls, the budget hands its next token to a reply: reads are the elastic part."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=2, reserve=0)
    polls = start(bucket, 6, Priority.POLL)
    await settle()
    assert done(polls) == 2
    [reply] = start(bucket, 1, Priority.WORK)
    await clock.advance(1.0)
    assert reply.done() and done(polls) == 2
    await clock.advance(1.0)
    assert done(polls) == 3


async def test_budget_cancelled_waiter_leaves_queue_and_next_is_served() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=1, reserve=0)
    await bucket.acquire()
    first, second = start(bucket, 2)
    await settle()
    first.cancel()
    await clock.advance(1.0)
    assert second.done() and first.cancelled()
    assert bucket.waiting == 0


async def test_budget_zero_is_unlimited() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=0)
    tasks = start(bucket, 1000)
    await settle()
    assert done(tasks) == 1000
    assert bucket.unlimited


def test_budget_rejects_bad_burst_and_reserve() -> None:
    with pytest.raises(ValueError, match="burst"):
        RequestBudget(60, 0)
    with pytest.raises(ValueError, match="reserve"):
        RequestBudget(60, 2, reserve=2)


def test_budgets_shared_per_platform_origin() -> None:
    budgets = RequestBudgets(per_minute=100, burst=7)
    a = budgets.for_url("https://Platform.example")
    assert budgets.for_url("https://platform.example/") is a
    assert budgets.for_url("http://127.0.0.1:8080") is not a
    assert (a.per_minute, a.burst) == (100, 7)


# --- idle poll backoff --------------------------------------------------------------------------------------


def test_poll_interval_busy_minute_stays_at_base() -> None:
    assert next_poll_interval(1.0, 1.0, IDLE_AFTER_S - 0.1) == 1.0


def test_poll_interval_idle_grows_by_half_up_to_ten_seconds() -> None:
    intervals = [1.0]
    for _ in range(8):
        intervals.append(next_poll_interval(1.0, intervals[-1], IDLE_AFTER_S + 1))
    assert intervals[:4] == [1.0, 1.5, 2.25, 3.375]
    assert intervals[-1] == IDLE_MAX_INTERVAL_S
    assert all(b >= a for a, b in itertools.pairwise(intervals))


def test_poll_interval_longer_base_is_never_shortened() -> None:
    assert next_poll_interval(30.0, 30.0, 3600) == 30.0


# --- PlatformActivities: idle backoff in the poll loop, budget waits --------------------------------------------

WS = "11111111-1111-4111-8111-111111111111"


class Inbox:
    """A scripted inbox over ``MockTransport``: answers ``rows`` to every read and counts the requests."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/activity"):
            return httpx.Response(200, json=self.rows)
        return httpx.Response(200, json={"status": "ok"})


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


def poll_input(**overrides: Any) -> PollInput:
    values: dict[str, Any] = {
        "target": PlatformTarget(workspace_id=WS, platform_url="https://platform.test"),
        "cursor": RowPointer(row_id=str(uuid.UUID(int=1))),
        "seeded": True,
        "poll_interval_s": 1.0,
        "max_wait_s": 120.0,
    }
    return PollInput(**{**values, **overrides})


async def test_poll_idle_inbox_backs_off_after_quiet_minute_and_snaps_back_on_rows(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads stay at poll_interval_s for a minute, then slow to 10 s, stay slow in the next long poll, and return
    to poll_interval_s once rows arrived."""
    now = [1000.0]
    pauses: list[float] = []

    async def pause(seconds: float) -> bool:
        pauses.append(seconds)
        now[0] += seconds
        return False

    monkeypatch.setattr(platform_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(platform_module, "_pause", pause)
    env = ActivityEnvironment()
    async with httpx.AsyncClient(transport=httpx.MockTransport(inbox.handler)) as http:
        acts = PlatformActivities(http, lambda workspace_id: "tok")

        result = await env.run(acts.poll, poll_input())
        assert result.rows == []
        assert pauses[:60] == [1.0] * 60
        assert pauses[60:63] == [1.5, 2.25, 3.375]
        assert max(pauses) == IDLE_MAX_INTERVAL_S and pauses[-1] == IDLE_MAX_INTERVAL_S
        assert len(inbox.requests) < 80  # 120 reads in these two minutes without the backoff

        pauses.clear()
        await env.run(acts.poll, poll_input(max_wait_s=60.0))
        assert pauses and pauses[0] > 1.0  # still quiet: the next long poll carries on backed off

        inbox.rows = [{"id": str(uuid.UUID(int=2)), "method": "notify"}]
        pauses.clear()
        result = await env.run(acts.poll, poll_input())
        assert len(result.rows) == 1 and pauses == []

        inbox.rows = []
        await env.run(acts.poll, poll_input(max_wait_s=10.0))
        assert set(pauses) == {1.0}  # traffic ended the quiet spell


async def test_request_waiting_for_budget_heartbeats_temporal(inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_module, "BUDGET_HEARTBEAT_S", 0.05)
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    async with httpx.AsyncClient(transport=httpx.MockTransport(inbox.handler)) as http:
        budgets = RequestBudgets(per_minute=200, burst=1)
        acts = PlatformActivities(http, lambda workspace_id: "tok", budgets=budgets)
        target = poll_input().target
        row = PolledRow(row_id=str(uuid.UUID(int=1)), outcome="deliver", source_id=None)
        reply = ReplyInput(target=target, row=row, parts=[TextPart(text="hi")])
        await env.run(acts.reply, reply)
        await env.run(acts.reply, reply)  # waits ~0.3 s for the next token
    assert len(inbox.requests) == 2
    assert len(beats) >= 2
    assert budgets.for_url(target.platform_url).queued == 1
