"""The request budget's token bucket (rate, burst, class priority, cancellation, host share, 429 throttle) on a
fake clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.a2a import TextPart
from activities.budget import (
    THROTTLE_FLOOR,
    THROTTLE_HOLD_S,
    THROTTLE_RECOVER_S,
    Priority,
    RequestBudget,
)
from activities.messages import PlatformTarget, PolledRow, ReplyInput
from activities.planner import RequestBudgets
from activities.platform import PlatformActivities
from tests.unit.fake_clock import FakeClock, settle


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
    assert budgets.planner_for("https://platform.example") is budgets.planner_for("https://PLATFORM.example/x")


# --- 429: send nothing before Retry-After, then a lower rate for a while ----------------------------------------


async def test_budget_429_waits_out_retry_after_then_runs_at_half_rate() -> None:
    """60/min: after a 429 with Retry-After 3 s no request starts for 3 s, then one every 2 s (half rate)."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=60, burst=5, reserve=0)
    bucket.throttled(3.0)
    assert bucket.effective_per_minute() == 30
    tasks = start(bucket, 10, Priority.HEARTBEAT)
    await clock.advance(2.9)
    assert done(tasks) == 0  # even a heartbeat: the platform refuses everything from this IP meanwhile
    await clock.advance(0.2 + 2.0)
    assert done(tasks) == 1
    await clock.advance(10.0)
    assert done(tasks) == 6
    for task in tasks:
        task.cancel()


async def test_budget_429_rate_holds_a_minute_then_recovers_linearly() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=480, burst=20)
    bucket.throttled(None)
    bucket.throttled(None)  # in flight together: one cut
    assert bucket.throttles == 2
    assert bucket.effective_per_minute() == 240
    await clock.advance(THROTTLE_HOLD_S - 1)
    assert bucket.effective_per_minute() == 240
    await clock.advance(1 + THROTTLE_RECOVER_S / 2)
    assert bucket.effective_per_minute() == pytest.approx(360)
    await clock.advance(THROTTLE_RECOVER_S / 2)
    assert bucket.effective_per_minute() == 480


async def test_budget_repeated_429_cut_again_down_to_the_floor() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=480, burst=20)
    for _ in range(10):
        bucket.throttled(1.0)
        await clock.advance(6.0)
    assert bucket.effective_per_minute() == 480 * THROTTLE_FLOOR


async def test_budget_429_on_unlimited_budget_changes_nothing() -> None:
    clock = FakeClock()
    bucket = budget(clock, per_minute=0)
    bucket.throttled(30.0)
    tasks = start(bucket, 3)
    await settle()
    assert done(tasks) == 3


# --- a share of the host's budget ------------------------------------------------------------------------------


async def test_budget_share_scales_rate_and_burst() -> None:
    """A quarter of 480/min with burst 20: 120/min, burst 5, and reads still leave the reserve."""
    clock = FakeClock()
    bucket = budget(clock, per_minute=480, burst=20)
    bucket.set_share(0.25)
    assert bucket.effective_per_minute() == 120
    tasks = start(bucket, 20, Priority.WORK)
    await settle()
    assert done(tasks) == 5
    await clock.advance(5.0)
    assert done(tasks) == 5 + 10  # 2 per second
    bucket.set_share(0.0)
    assert bucket.effective_per_minute() == pytest.approx(4.8)  # never below MIN_SHARE


async def test_request_waiting_for_budget_heartbeats_temporal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request queued for the budget heartbeats Temporal meanwhile, so a long queue never looks like a dead worker."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setattr(platform_module, "BUDGET_HEARTBEAT_S", 0.05)
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        budgets = RequestBudgets(per_minute=200, burst=1)
        acts = PlatformActivities(http, lambda workspace_id: "tok", budgets=budgets)
        target = PlatformTarget(workspace_id="11111111-1111-4111-8111-111111111111", platform_url="https://p.test")
        row = PolledRow(row_id="00000000-0000-0000-0000-000000000001", outcome="deliver", source_id=None)
        reply = ReplyInput(target=target, row=row, parts=[TextPart(text="hi")])
        await env.run(acts.reply, reply)
        await env.run(acts.reply, reply)  # waits ~0.3 s for the next token
    assert len(requests) == 2
    assert len(beats) >= 2
    assert budgets.for_url(target.platform_url).queued == 1


async def test_platform_429_lowers_the_budget_not_only_retried() -> None:
    """A 429 answer still fails the request as Transient (Temporal retries it after Retry-After), and also halves
    the platform's budget and empties it for Retry-After."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "rate limited"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        budgets = RequestBudgets(per_minute=480, burst=20)
        acts = PlatformActivities(http, lambda workspace_id: "tok", budgets=budgets)
        target = PlatformTarget(workspace_id="11111111-1111-4111-8111-111111111111", platform_url="https://p.test")
        row = PolledRow(row_id="00000000-0000-0000-0000-000000000001", outcome="deliver", source_id=None)
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(acts.reply, ReplyInput(target=target, row=row, parts=[TextPart(text="x")]))
    assert raised.value.type == "Transient"
    bucket = budgets.for_url(target.platform_url)
    assert bucket.throttles == 1
    assert bucket.effective_per_minute() == pytest.approx(240)
    assert not bucket.try_acquire(Priority.HEARTBEAT)  # nothing before Retry-After
