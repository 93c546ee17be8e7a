"""The request budget end to end: one worker serving several workspaces stays inside the platform's rate limit."""

from __future__ import annotations

import time

import pytest

from devplatform.ratelimit import RateLimiter
from devplatform.settings import PlatformSettings
from tests.helpers import Harness, reply_text, wait_until

PLATFORM_LIMIT_PER_MIN = 100
"""The devplatform's per-IP limit here. Three connectors polling every 0.2 s ask for 15 requests/s: they would
reach it within 7 s without the budget."""
BUDGET_PER_MIN = 120
BURST = 5


class LimiterLog:
    """What the devplatform's rate limiter decided, request by request (it runs in the platform's thread)."""

    def __init__(self) -> None:
        self.allowed = 0
        self.rejected = 0


@pytest.fixture
def limiter_log() -> LimiterLog:
    return LimiterLog()


@pytest.fixture
def platform_settings(tmp_path, monkeypatch: pytest.MonkeyPatch, limiter_log: LimiterLog) -> PlatformSettings:
    class CountingLimiter(RateLimiter):
        def hit(self, key: str) -> float | None:
            wait_s = super().hit(key)
            if wait_s is None:
                limiter_log.allowed += 1
            else:
                limiter_log.rejected += 1
            return wait_s

    monkeypatch.setattr("devplatform.app.RateLimiter", CountingLimiter)
    return PlatformSettings(db_path=tmp_path / "platform.db", rate_limit_per_min=PLATFORM_LIMIT_PER_MIN)


async def test_budget_fleet_of_fast_pollers_never_rate_limited_and_all_replied(
    harness: Harness, limiter_log: LimiterLog
) -> None:
    """Three connectors at poll_interval_s 0.2 share a 120/min budget: the platform (100/min) never answers 429,
    and a message to each is still answered."""
    agents = [await harness.workspace(f"agent-{n}") for n in range(3)]
    peer = await harness.workspace("peer")
    started = time.monotonic()
    async with harness.worker(request_budget_per_min=BUDGET_PER_MIN, request_burst=BURST):
        for agent in agents:
            await harness.start(agent)
        for n, agent in enumerate(agents):
            await harness.admin.send_text(agent.id, f"ping {n}", sender=peer)
        for n, agent in enumerate(agents):
            [reply] = await wait_until(lambda a=agent: harness.replies_to(peer.id, a.id), timeout=30, message="reply")
            assert reply_text(reply) == f"echo: ping {n}"
    elapsed = time.monotonic() - started

    assert limiter_log.rejected == 0
    # The bucket's guarantee, seen from the platform: burst + rate × time, plus the test's own three sends.
    assert limiter_log.allowed <= BURST + BUDGET_PER_MIN / 60 * elapsed + len(agents)
