"""Inbox reads do not slow down with silence: a quiet workspace answers its first message by the next read.

Counted on the platform's side, request by request: reads of the agent's inbox between its heartbeats (one per
second here) while it is quiet, and between the message and its reply.
"""

from __future__ import annotations

import time

import pytest

import activities.budget
from devplatform.faults import Fault, FaultInjector
from devplatform.settings import PlatformSettings
from tests.helpers import Harness, reply_text, wait_until

PRE_PLANNER_IDLE_AFTER_S = 1.0
"""The connector before the read planner slowed reads of an inbox down after ``activities.budget.IDLE_AFTER_S``
(60 s) without rows, to one per 10 s. Shortened here (the name is set even where it no longer exists), so that a
quiet spell of a few seconds is long past it and a return of any idle backoff fails this test within seconds."""
QUIET_READS = 60
"""The quiet spell, counted in empty reads: 12 s at the 0.2 s poll, twelve times the threshold above."""


class RequestLog(FaultInjector):
    """The devplatform's fault list, also recording every non-admin request it is asked about, in arrival order."""

    requests: list[tuple[str, str, float]] = []

    def take(self, method: str, path: str) -> Fault | None:
        RequestLog.requests.append((method, path, time.monotonic()))
        return super().take(method, path)


@pytest.fixture
def request_log(monkeypatch: pytest.MonkeyPatch) -> type[RequestLog]:
    monkeypatch.setattr(RequestLog, "requests", [])
    monkeypatch.setattr("devplatform.app.FaultInjector", RequestLog)
    return RequestLog


@pytest.fixture
def platform_settings(tmp_path, request_log: type[RequestLog]) -> PlatformSettings:
    return PlatformSettings(db_path=tmp_path / "platform.db", rate_limit_per_min=600)


async def test_quiet_workspace_read_at_poll_interval_and_answers_first_message_at_once(
    harness: Harness, request_log: type[RequestLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the default budget, 60 empty reads in a row come at the poll interval (several between any two heartbeats,
    none skipped), and the message sent after them is fetched by the next read and answered."""
    monkeypatch.setattr(activities.budget, "IDLE_AFTER_S", PRE_PLANNER_IDLE_AFTER_S, raising=False)
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    inbox_read = ("GET", f"/workspaces/{agent.id}/activity")
    message_in, reply_out = ("POST", f"/workspaces/{agent.id}/a2a"), ("POST", f"/workspaces/{peer.id}/a2a")

    def log() -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in request_log.requests]

    async with harness.worker():
        await harness.start(agent, heartbeat_interval_s=1.0)  # FAST: poll_interval_s 0.2
        seeded = len(log())
        await wait_until(
            lambda: log()[seeded:].count(inbox_read) >= QUIET_READS, timeout=60, message=f"{QUIET_READS} quiet reads"
        )
        quiet = log()[seeded:]
        await harness.admin.send_text(agent.id, "first after a silence", sender=peer)
        [reply] = await wait_until(lambda: harness.replies_to(peer.id, agent.id), timeout=30, message="the reply")
    assert reply_text(reply) == "echo: first after a silence"

    # Between consecutive heartbeats (a second apart) of the quiet spell: about five reads, never none.
    beats = [i for i, request in enumerate(quiet) if request == ("POST", "/registry/heartbeat")]
    windows = [quiet[a:b].count(inbox_read) for a, b in zip(beats, beats[1:], strict=False)]
    assert len(windows) >= 5
    assert min(windows) >= 1 and sum(windows) >= 3 * len(windows), windows

    # The message is fetched by the first read after it (one more may start before the reply lands).
    requests = log()
    sent, replied = requests.index(message_in), requests.index(reply_out)
    assert 1 <= requests[sent:replied].count(inbox_read) <= 3
