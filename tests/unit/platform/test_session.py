"""``session``: platform heartbeats on their schedule with the Temporal heartbeat beside them, and the inbox read with
its own retries, lasting trouble and recovery (docs/protocol.md §3.2–4).

The session's clocks (``time.monotonic`` and ``_now`` of ``activities.platform``) and its ``_pause`` run on a fake
timeline that only the test moves, so each schedule is checked exactly, in no time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.errors import ErrorType
from activities.messages import PollInput, RowPointer, SessionInput, SessionResult
from tests.unit.platform.fake_platform import T0, TARGET, FakePlatform, inbox_row, row_id, rows_answer

HEARTBEAT_PATH = "/registry/heartbeat"


def overloaded() -> httpx.Response:
    """A 503 that allows a retry at once, so the session's own backoff alone sets the pause (no jitter)."""
    return httpx.Response(503, headers={"Retry-After": "0"})


class Timeline:
    """Fake time for the session: ``now`` seconds after ``T0``, moved only by :meth:`advance_to`.

    ``pause`` stands in for the activity's ``_pause``: it sleeps until its due time on this timeline, and answers
    ``True`` ("the worker is shutting down") once :meth:`shut_down` was called.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.shutting_down = False
        self._sleepers: list[tuple[float, int, asyncio.Future[bool]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return T0 + timedelta(seconds=self.now)

    async def pause(self, seconds: float) -> bool:
        if self.shutting_down:
            return True
        wake: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        return await wake

    async def advance_to(self, when: float) -> None:
        """Move to ``when`` seconds, waking each sleeper at its due time and letting the session run after each."""
        await settle()
        while self._sleepers and self._sleepers[0][0] <= when:
            due, _, wake = heapq.heappop(self._sleepers)
            if wake.done():  # its task was cancelled
                continue
            self.now = max(self.now, due)
            wake.set_result(False)
            await settle()
        self.now = when
        await settle()

    async def shut_down(self) -> None:
        self.shutting_down = True
        for _, _, wake in self._sleepers:
            if not wake.done():
                wake.set_result(True)
        self._sleepers.clear()
        await settle()


async def settle() -> None:
    """Let every task that can run go as far as it can (they only wait on the timeline or on settled futures)."""
    for _ in range(100):
        await asyncio.sleep(0)


@pytest.fixture
def timeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timeline]:
    fake = Timeline()
    monkeypatch.setattr(platform_module, "_pause", fake.pause)
    monkeypatch.setattr(platform_module, "_now", fake.utc)
    monkeypatch.setattr(platform_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    yield fake


class Recorder:
    """When (timeline seconds) the platform got each heartbeat and Temporal each activity heartbeat."""

    def __init__(self, timeline: Timeline, platform: FakePlatform, env: ActivityEnvironment) -> None:
        self.beats: list[float] = []
        self.temporal: list[float] = []
        self.inbox_reads: list[float] = []
        self._timeline = timeline
        env.on_heartbeat = lambda *details: self.temporal.append(timeline.now)
        platform.default = self.answer
        self.beat_answers: list[httpx.Response] = []
        self.inbox_answers: list[httpx.Response] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == HEARTBEAT_PATH:
            self.beats.append(self._timeline.now)
            return self.beat_answers.pop(0) if self.beat_answers else httpx.Response(200, json={"status": "ok"})
        self.inbox_reads.append(self._timeline.now)
        return self.inbox_answers.pop(0) if self.inbox_answers else rows_answer()


@pytest.fixture
def recorder(timeline: Timeline, platform: FakePlatform, env: ActivityEnvironment) -> Recorder:
    return Recorder(timeline, platform, env)


def start(env: ActivityEnvironment, platform: FakePlatform, **fields: Any) -> asyncio.Task[SessionResult]:
    session = SessionInput(target=TARGET, run_for_s=3600, **fields)
    return asyncio.ensure_future(env.run(platform.acts.session, session))


def inbox(**fields: Any) -> PollInput:
    return PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), poll_interval_s=1.0, **fields)


async def ended(task: asyncio.Task[SessionResult]) -> SessionResult:
    """The session's result, which it must already have (the timeline does not move while we wait)."""
    await settle()
    assert task.done(), "the session is still running"
    return task.result()


async def test_session_beats_every_interval_after_last_beat_at(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """The last accepted beat was 10 s ago: the first beat is due 20 s from now, then one every 30 s."""
    task = start(env, platform, heartbeat_interval_s=30.0, last_beat_at=timeline.utc() - timedelta(seconds=10))

    await timeline.advance_to(19.9)
    assert recorder.beats == []
    await timeline.advance_to(20.0)
    assert recorder.beats == [20.0]
    await timeline.advance_to(49.9)
    assert recorder.beats == [20.0]
    await timeline.advance_to(110.0)
    assert recorder.beats == [20.0, 50.0, 80.0, 110.0]

    await timeline.shut_down()
    result = await ended(task)
    assert (result.beats, result.beat_failures) == (4, 0)
    assert result.last_beat_at == T0 + timedelta(seconds=110)
    assert result.poll is None and result.trouble is None


@pytest.mark.parametrize("last_beat_ago_s", [None, 45.0], ids=["never", "overdue"])
async def test_session_without_recent_beat_beats_at_once(
    timeline: Timeline,
    recorder: Recorder,
    platform: FakePlatform,
    env: ActivityEnvironment,
    last_beat_ago_s: float | None,
) -> None:
    last = None if last_beat_ago_s is None else timeline.utc() - timedelta(seconds=last_beat_ago_s)
    task = start(env, platform, heartbeat_interval_s=30.0, last_beat_at=last)

    await timeline.advance_to(0.0)
    assert recorder.beats == [0.0]
    await timeline.advance_to(30.0)
    assert recorder.beats == [0.0, 30.0]

    await timeline.shut_down()
    assert (await ended(task)).beats == 2


async def test_session_first_temporal_heartbeat_waits_for_first_beat_then_keeps_cadence(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Heartbeat timeout 12 s: a Temporal heartbeat every 10 s (12 / 1.2), the first one with the first beat (due
    5 s from now), so every Temporal heartbeat follows a platform beat and the SDK's throttle never delays one."""
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=12))
    task = start(env, platform, heartbeat_interval_s=30.0, last_beat_at=timeline.utc() - timedelta(seconds=25))

    await timeline.advance_to(4.9)
    assert (recorder.temporal, recorder.beats) == ([], [])
    await timeline.advance_to(5.0)
    assert (recorder.temporal, recorder.beats) == ([5.0], [5.0])
    await timeline.advance_to(35.0)
    assert recorder.temporal == pytest.approx([5.0, 15.0, 25.0, 35.0])
    assert recorder.beats == [5.0, 35.0]

    await timeline.shut_down()
    assert (await ended(task)).beats == 2


async def test_session_inbox_transient_failures_retried_then_reported_as_trouble(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Reads failing with 503 are retried by the session itself (after 1 s, then 2 s); once failing for
    ``trouble_after_s`` the session ends with ``trouble`` instead of an error."""
    recorder.inbox_answers = [overloaded() for _ in range(10)]
    task = start(env, platform, poll=inbox(), heartbeat_interval_s=30.0, trouble_after_s=2.5)

    await timeline.advance_to(2.9)
    assert recorder.inbox_reads == [0.0, 1.0]
    assert not task.done()
    await timeline.advance_to(3.0)

    result = await ended(task)
    assert recorder.inbox_reads == [0.0, 1.0, 3.0]
    assert result.trouble is not None
    assert result.trouble.operation == "poll"
    assert result.trouble.attempts == 3
    assert result.trouble.since == T0
    assert "503" in result.trouble.error
    assert result.poll is None and not result.recovered
    assert result.beats == 1


async def test_session_beats_failing_past_trouble_after_s_report_heartbeat_trouble(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """A failed beat is tried again after 5 s; beats failing for ``trouble_after_s`` end the session with it."""
    recorder.beat_answers = [httpx.Response(503) for _ in range(10)]
    task = start(env, platform, heartbeat_interval_s=30.0, trouble_after_s=10.0)

    await timeline.advance_to(9.9)
    assert recorder.beats == [0.0, 5.0]
    assert not task.done()
    await timeline.advance_to(10.0)

    result = await ended(task)
    assert result.trouble is not None
    assert (result.trouble.operation, result.trouble.attempts) == ("heartbeat", 3)
    assert (result.beats, result.beat_failures) == (0, 3)


async def test_session_in_trouble_keeps_retrying_and_returns_recovered_with_the_rows(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """After a session ended in trouble, the next one does not report it again: it returns at the first good read."""
    recorder.inbox_answers = [overloaded(), overloaded(), rows_answer(inbox_row(2))]
    task = start(env, platform, poll=inbox(), heartbeat_interval_s=30.0, trouble_after_s=0.5, in_trouble=True)

    await timeline.advance_to(2.9)
    assert recorder.inbox_reads == [0.0, 1.0]
    assert not task.done()
    await timeline.advance_to(3.0)

    result = await ended(task)
    assert result.recovered
    assert result.trouble is None
    assert result.poll is not None
    assert [row.row_id for row in result.poll.rows] == [row_id(2)]


async def test_session_in_trouble_without_inbox_returns_recovered_at_first_good_beat(
    timeline: Timeline, recorder: Recorder, platform: FakePlatform, env: ActivityEnvironment
) -> None:
    recorder.beat_answers = [httpx.Response(503)]
    task = start(env, platform, heartbeat_interval_s=30.0, trouble_after_s=0.5, in_trouble=True)

    await timeline.advance_to(4.9)
    assert recorder.beats == [0.0]
    assert not task.done()
    await timeline.advance_to(5.0)

    result = await ended(task)
    assert result.recovered
    assert result.trouble is None
    assert (result.beats, result.beat_failures) == (1, 1)


@pytest.mark.parametrize(("status", "error_type"), [(401, ErrorType.AUTH), (404, ErrorType.GONE)])
async def test_session_beat_refused_ends_session_with_its_error(
    timeline: Timeline,
    recorder: Recorder,
    platform: FakePlatform,
    env: ActivityEnvironment,
    status: int,
    error_type: ErrorType,
) -> None:
    """A beat answered 401 (our token) or 404 (our workspace) ends the session, the inbox read with it."""
    recorder.beat_answers = [httpx.Response(200, json={"status": "ok"}), httpx.Response(status)]
    task = start(env, platform, poll=inbox(), heartbeat_interval_s=30.0)

    await timeline.advance_to(29.9)
    assert not task.done()
    await timeline.advance_to(30.0)

    await settle()
    assert task.done()
    error = task.exception()
    assert isinstance(error, ApplicationError)
    assert error.type == error_type
    assert error.non_retryable
    reads = len(recorder.inbox_reads)
    await timeline.advance_to(60.0)
    assert len(recorder.inbox_reads) == reads, "the inbox read outlived the session"
