"""The session activity across a failover: the sticky queue reset and the beats already sent (two workers, one lost).

A scripted platform (``httpx.MockTransport``) in an ``ActivityEnvironment``. The failover itself (a worker process
SIGKILLed, its sessions retried elsewhere) is tested end to end in ``tests/integration/test_failover.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.messages import PlatformTarget, PollInput, RowPointer, SessionInput
from activities.platform import PlatformActivities

URL = "https://platform.test"
WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"
TARGET = PlatformTarget(workspace_id=WS, platform_url=URL)
CURSOR = RowPointer(row_id=str(uuid.UUID(int=1)))


def _row(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n)),
        "workspace_id": WS,
        "activity_type": "a2a_receive",
        "source_id": PEER,
        "target_id": WS,
        "method": "message/send",
        "status": "ok",
        "created_at": "2026-04-30T05:00:00.000000Z",
        "request_body": {
            "jsonrpc": "2.0",
            "id": f"req-{n}",
            "method": "message/send",
            "params": {"message": {"role": "user", "messageId": f"m-{n}", "parts": [{"kind": "text", "text": "hi"}]}},
        },
    }


class Platform:
    """Answers the inbox with one new row at once, and heartbeats after ``beat_delay_s``."""

    def __init__(self) -> None:
        self.beat_delay_s = 0.0
        self.beats_received = 0
        self.beats_answered = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/registry/heartbeat":
            self.beats_received += 1
            await asyncio.sleep(self.beat_delay_s)
            self.beats_answered += 1
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(200, json=[_row(2)])


@pytest.fixture
async def platform() -> AsyncIterator[tuple[Platform, PlatformActivities]]:
    fake = Platform()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
        yield fake, PlatformActivities(http, lambda _: "tok-secret")


def _input(**overrides: Any) -> SessionInput:
    fields: dict[str, Any] = {"poll": PollInput(target=TARGET, cursor=CURSOR, seeded=True), **overrides}
    return SessionInput(target=TARGET, heartbeat_interval_s=30.0, **fields)


async def test_session_ending_on_rows_counts_the_beat_it_sent(platform: tuple[Platform, PlatformActivities]) -> None:
    """Rows read before the first beat is answered: the session waits for the beat and reports it, instead of
    dropping it (the next session would beat again at once, or, had it gone unsent, an interval late)."""
    fake, acts = platform
    fake.beat_delay_s = 0.3
    env = ActivityEnvironment()

    result = await env.run(acts.session, _input())

    assert result.poll is not None and [r.row_id for r in result.poll.rows] == [str(uuid.UUID(int=2))]
    assert (fake.beats_received, fake.beats_answered) == (1, 1)
    assert result.beats == 1
    assert result.last_beat_at is not None


async def test_session_cancelled_does_not_wait_for_its_beat(platform: tuple[Platform, PlatformActivities]) -> None:
    """A cancelled session (control change, drain) ends at once: the beat in flight is dropped, not awaited."""
    fake, acts = platform
    fake.beat_delay_s = 30.0
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(acts.session, _input(poll=None)))
    while fake.beats_received == 0:
        await asyncio.sleep(0.01)

    env.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert fake.beats_answered == 0


class _WorkflowService:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.resets: list[ResetStickyTaskQueueRequest] = []

    async def reset_sticky_task_queue(self, request: ResetStickyTaskQueueRequest, **_: Any) -> None:
        self.resets.append(request)
        if self.error is not None:
            raise self.error


@dataclasses.dataclass
class _Client:
    workflow_service: _WorkflowService


@pytest.mark.parametrize(("attempt", "resets"), [(1, 0), (2, 1), (7, 1)])
async def test_retried_session_moves_its_workflow_off_the_sticky_queue(
    platform: tuple[Platform, PlatformActivities], attempt: int, resets: int
) -> None:
    """A retried session (its worker died) resets its workflow's sticky queue before anything else; a first
    attempt does not."""
    _, acts = platform
    service = _WorkflowService()
    env = ActivityEnvironment(client=_Client(service))  # type: ignore[arg-type]
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_timeout=timedelta(seconds=36))

    await env.run(acts.session, _input())

    assert len(service.resets) == resets
    for request in service.resets:
        assert request.namespace == env.info.namespace
        assert (request.execution.workflow_id, request.execution.run_id) == (
            env.info.workflow_id,
            env.info.workflow_run_id,
        )


async def test_retried_session_goes_on_when_the_sticky_reset_fails(
    platform: tuple[Platform, PlatformActivities],
) -> None:
    _, acts = platform
    service = _WorkflowService(RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""))
    env = ActivityEnvironment(client=_Client(service))  # type: ignore[arg-type]
    env.info = dataclasses.replace(env.info, attempt=2)

    result = await env.run(acts.session, _input())

    assert len(service.resets) == 1
    assert result.poll is not None and len(result.poll.rows) == 1
