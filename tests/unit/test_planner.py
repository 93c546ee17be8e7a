"""The read planner on a fake clock: a lone inbox never slows down, a short budget is shared round robin by wait,
overload is reported, 429s slow reads down, and a new worker starts at the planned rate; then the poll activity
reading through it."""

from __future__ import annotations

import asyncio
import logging
import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.budget import Priority, RequestBudget
from activities.messages import PlatformTarget, PollInput, RowPointer
from activities.planner import ReadPlanner, RequestBudgets, read_interval, shared_interval
from activities.platform import PlatformActivities
from tests.unit.fake_clock import FakeClock, settle

PLATFORM = "http://platform.test"


def make_planner(clock: FakeClock, per_minute: float = 480, burst: int = 20) -> ReadPlanner:
    return ReadPlanner(RequestBudget(per_minute, burst, clock=clock, sleep=clock.sleep), platform=PLATFORM)


class Fleet:
    """Connectors reading through one planner: each reads as soon as it may, and heartbeats every 30 s."""

    def __init__(self, planner: ReadPlanner, clock: FakeClock) -> None:
        self.planner = planner
        self.clock = clock
        self.reads: dict[str, list[float]] = defaultdict(list)
        self.order: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, workspace_id: str, poll_interval_s: float = 1.0, *, rows: bool = False) -> None:
        self.tasks.append(asyncio.create_task(self._read(workspace_id, poll_interval_s, rows)))
        self.tasks.append(asyncio.create_task(self._heartbeat(workspace_id)))

    async def _read(self, workspace_id: str, poll_interval_s: float, rows: bool) -> None:
        while True:
            await self.planner.wait_for_read(workspace_id, poll_interval_s)
            self.reads[workspace_id].append(self.clock.now)
            self.order.append(workspace_id)
            if rows:
                self.planner.note_rows(workspace_id)

    async def _heartbeat(self, workspace_id: str) -> None:
        while True:
            self.planner.note_request(workspace_id, Priority.HEARTBEAT)
            await self.clock.sleep(30.0)

    def gaps(self, workspace_id: str) -> list[float]:
        times = self.reads[workspace_id]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def total(self, start: float = -1.0, end: float = float("inf")) -> int:
        return sum(start <= t < end for times in self.reads.values() for t in times)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def ids(count: int, prefix: str = "ws") -> Iterator[str]:
    return (f"{prefix}-{n}" for n in range(count))


async def test_planner_lone_workspace_read_every_poll_interval_however_long_quiet() -> None:
    """Ten quiet minutes on the default budget: one read each second from the first to the last (the idle backoff
    it replaces read every ~10 s after the first minute)."""
    clock = FakeClock()
    fleet = Fleet(make_planner(clock), clock)
    fleet.add("lone")
    await clock.advance(600.0)
    await fleet.stop()
    assert len(fleet.reads["lone"]) == 601
    assert {round(g, 9) for g in fleet.gaps("lone")} == {1.0}
    assert fleet.planner.queued == 0
    plan = fleet.planner.describe()
    assert plan.read_interval_s is None and not plan.overloaded
    assert plan.workspaces == 1 and plan.heartbeats_per_min == 2


async def test_planner_short_budget_shared_round_robin_by_wait() -> None:
    """Ten inboxes at 1 s on 120/min: heartbeats take 20, reads share 100/min, so each inbox is read every 6 s, in
    turn (every ten consecutive reads cover all ten inboxes)."""
    clock = FakeClock()
    fleet = Fleet(make_planner(clock, per_minute=120), clock)
    for workspace_id in ids(10):
        fleet.add(workspace_id)
    await clock.advance(600.0)
    await fleet.stop()
    counts = [len(times) for times in fleet.reads.values()]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == pytest.approx(1000, abs=5)
    steady = fleet.order[10:-10]
    assert all(len(set(steady[i : i + 10])) == 10 for i in range(len(steady) - 10))
    for workspace_id in ids(10):
        assert all(5.9 <= g <= 6.1 for g in fleet.gaps(workspace_id)[1:])
    assert fleet.planner.describe().read_interval_s == pytest.approx(6.0, abs=0.01)


async def test_planner_fair_by_wait_not_by_who_asks_first() -> None:
    """Under a short budget an inbox that asks again at once after every read (rows each time) gets no more reads
    than the others: it goes to the back of the line."""
    clock = FakeClock()
    fleet = Fleet(make_planner(clock, per_minute=120), clock)
    fleet.add("eager", rows=True)
    for workspace_id in ids(9):
        fleet.add(workspace_id)
    await clock.advance(300.0)
    await fleet.stop()
    others = [len(fleet.reads[w]) for w in ids(9)]
    assert len(fleet.reads["eager"]) <= max(others) + 1


async def test_planner_inbox_with_longer_poll_interval_keeps_it_while_others_share() -> None:
    """Nine inboxes at 1 s and one at 30 s on 120/min: the slow one is read every 30 s (it waited longest when due),
    the nine share the other 98 reads/min: every 60 × 9 / 98 = 5.5 s."""
    clock = FakeClock()
    fleet = Fleet(make_planner(clock, per_minute=120), clock)
    fleet.add("slow", 30.0)
    for workspace_id in ids(9):
        fleet.add(workspace_id)
    await clock.advance(600.0)
    assert all(30.0 <= g <= 30.7 for g in fleet.gaps("slow"))
    fast = [g for w in ids(9) for g in fleet.gaps(w)[2:]]
    assert statistics.mean(fast) == pytest.approx(60 * 9 / 98, rel=0.03)
    assert fleet.planner.describe().read_interval_s == pytest.approx(60 * 9 / 98, rel=0.01)
    await fleet.stop()


async def test_planner_new_worker_starts_at_planned_rate_not_every_inbox_each_second() -> None:
    """100 inboxes at 1 s start together on the default budget: reads go at 480 - 200 = 280 per minute from the
    first second (unplanned, each inbox each second would be 6,000 in that minute)."""
    clock = FakeClock()
    fleet = Fleet(make_planner(clock), clock)
    for workspace_id in ids(100):
        fleet.add(workspace_id)
    await clock.advance(120.0)
    await fleet.stop()
    assert fleet.total(end=10.0) <= 280 / 6 + 6
    assert fleet.total(end=60.0) == pytest.approx(280, abs=6)
    assert fleet.total(60.0, 120.0) == pytest.approx(280, abs=6)
    worst = max(g for w in ids(100) for g in fleet.gaps(w))
    assert worst <= 60 * 100 / 280 + 0.5  # every inbox read at least every 21.4 s


async def test_planner_overloaded_when_heartbeats_alone_exceed_budget(caplog: pytest.LogCaptureFixture) -> None:
    """250 workspaces need 500 heartbeats/min, over 480: overloaded, said once with what to do; the reads keep a
    floor of 5 % of the budget. It clears once fewer workspaces heartbeat."""
    clock = FakeClock()
    planner = make_planner(clock)
    caplog.set_level(logging.INFO, logger="activities.planner")
    for workspace_id in ids(250):
        planner.note_request(workspace_id, Priority.HEARTBEAT)
    assert planner.overloaded
    plan = planner.describe()
    assert plan.overloaded and plan.workspaces == 250 and plan.reads_per_min == pytest.approx(24)
    assert plan.advice is not None and "more client IPs" in plan.advice and "120 workspaces" in plan.advice
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "500 heartbeats/min" in warnings[0].getMessage()

    await clock.advance(60.0)
    for workspace_id in ids(100):
        planner.note_request(workspace_id, Priority.HEARTBEAT)
    await clock.advance(31.0)  # the other 150 last beat 91 s ago
    assert not planner.overloaded
    assert planner.workspaces == 100
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any("no longer overloaded" in r.getMessage() for r in caplog.records)


async def test_planner_replies_come_before_reads() -> None:
    """Replies sent in the last minute are taken off what reads get, and given back once the minute has passed."""
    clock = FakeClock()
    planner = make_planner(clock)
    planner.note_request("ws", Priority.HEARTBEAT)
    for _ in range(100):
        planner.note_request("ws", Priority.WORK)
    plan = planner.describe()
    assert (plan.heartbeats_per_min, plan.work_per_min, plan.reads_per_min) == (2, 100, 378)
    await clock.advance(61.0)
    assert planner.describe().reads_per_min == 478


async def test_planner_429_lowers_read_rate_for_a_while() -> None:
    """Ten inboxes at 1 s on the default budget are read every 1.3 s; after a 429 (Retry-After 2 s) the budget is
    halved for a minute, so every 2.7 s; three minutes later back to 1.3 s."""
    clock = FakeClock()
    budget = RequestBudget(480, 20, clock=clock, sleep=clock.sleep)
    planner = ReadPlanner(budget, platform=PLATFORM)
    fleet = Fleet(planner, clock)
    for workspace_id in ids(10):
        fleet.add(workspace_id)
    await clock.advance(30.0)
    assert planner.describe().read_interval_s == pytest.approx(600 / 460, rel=0.01)
    budget.throttled(2.0)
    throttled_at = clock.now
    await clock.advance(50.0)
    assert planner.describe().read_interval_s == pytest.approx(600 / 220, rel=0.01)
    during = [
        gap for w in ids(10) for t, gap in zip(fleet.reads[w][1:], fleet.gaps(w), strict=True) if t > throttled_at + 5
    ]
    assert statistics.mean(during) == pytest.approx(600 / 220, rel=0.05)
    await clock.advance(140.0)
    assert planner.describe().read_interval_s == pytest.approx(600 / 460, rel=0.01)
    await fleet.stop()


async def test_planner_cancelled_wait_gives_the_read_back_and_done_leaves_the_plan() -> None:
    clock = FakeClock()
    planner = make_planner(clock, per_minute=60)
    await planner.wait_for_read("a", 1.0)  # the one saved-up read
    waiting = asyncio.create_task(planner.wait_for_read("b", 1.0))
    await settle()
    assert not waiting.done() and planner.workspaces == 2
    waiting.cancel()
    planner.done("b")
    await settle()
    assert planner.workspaces == 1
    await clock.advance(1.0)
    other = asyncio.create_task(planner.wait_for_read("c", 1.0))
    await clock.advance(0.1)
    assert other.done()  # the read b would have had went to c, not lost
    planner.done("a")
    planner.done("c")
    assert planner.workspaces == 0


async def test_planner_unlimited_budget_reads_every_inbox_at_its_interval() -> None:
    clock = FakeClock()
    fleet = Fleet(make_planner(clock, per_minute=0), clock)
    for workspace_id in ids(100):
        fleet.add(workspace_id)
    await clock.advance(30.0)
    await fleet.stop()
    assert fleet.total() == 100 * 31
    assert fleet.planner.describe().reads_per_min is None


def test_read_interval_table_of_the_readme() -> None:
    """The README's table: default budget, 1 s poll, no replies."""
    table = {n: read_interval(480, n) for n in (1, 10, 50, 100, 200, 240)}
    assert table[1] == 1.0
    assert table[10] == pytest.approx(1.30, abs=0.005)
    assert table[50] == pytest.approx(7.89, abs=0.005)
    assert table[100] == pytest.approx(21.43, abs=0.005)
    assert table[200] == pytest.approx(150.0, abs=0.01)
    assert table[240] is None  # heartbeats alone: 480/min


def test_shared_interval_is_max_min_fair() -> None:
    assert shared_interval([1.0] * 5, 600) is None
    assert shared_interval([1.0] * 10, 300) == pytest.approx(2.0)
    assert shared_interval([1.0, 1.0, 60.0], 61) == pytest.approx(2.0, rel=1e-6)


# --- the poll activity reads through the planner ----------------------------------------------------------------

WS = "11111111-1111-4111-8111-111111111111"


class Inbox:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.reads = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/activity"):
            self.reads += 1
            return httpx.Response(200, json=self.rows)
        return httpx.Response(200, json={"status": "ok"})


def poll_input(**overrides: Any) -> PollInput:
    values: dict[str, Any] = {
        "target": PlatformTarget(workspace_id=WS, platform_url=PLATFORM),
        "cursor": RowPointer(row_id=str(uuid.UUID(int=1))),
        "seeded": True,
        "poll_interval_s": 1.0,
        "max_wait_s": 180.0,
    }
    return PollInput(**{**values, **overrides})


async def test_poll_quiet_inbox_read_every_poll_interval_and_rows_read_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three quiet minutes, one long poll: 180 reads (the idle backoff read fewer than 80); rows end the poll, and
    the next poll reads at once, not a poll interval later."""
    clock = FakeClock(1000.0)
    monkeypatch.setattr(platform_module, "time", clock)
    inbox = Inbox()
    env = ActivityEnvironment()
    async with httpx.AsyncClient(transport=httpx.MockTransport(inbox.handler)) as http:
        budgets = RequestBudgets(clock=clock, sleep=clock.sleep)
        acts = PlatformActivities(http, lambda workspace_id: "tok", budgets=budgets)
        poll = asyncio.create_task(env.run(acts.poll, poll_input()))
        await clock.advance(200.0)
        result = await poll
        assert result.rows == [] and result.polls == 180 and inbox.reads == 180
        assert budgets.planner_for(PLATFORM).workspaces == 0  # done: it stopped polling

        inbox.rows = [{"id": str(uuid.UUID(int=2)), "method": "notify"}]
        poll = asyncio.create_task(env.run(acts.poll, poll_input()))
        await clock.advance(1.0)
        assert len((await poll).rows) == 1
        reads = inbox.reads
        poll = asyncio.create_task(env.run(acts.poll, poll_input()))
        await settle()
        assert inbox.reads == reads + 1  # at once: more rows may be waiting
        await clock.advance(1.0)
        await poll
