"""``heartbeat``, the legacy activity of platform heartbeats that ``session`` replaced, kept for the histories that
call it (docs/protocol.md §3.2)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.errors import ErrorType
from activities.messages import (
    HeartbeatInput,
)
from tests.unit.platform.fake_platform import (
    TARGET,
    URL,
    WS,
    FakePlatform,
    raises,
)


async def test_heartbeat_posts_repeatedly_until_run_for_s(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.default = lambda request: httpx.Response(200, json={"status": "ok"})
    details: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *args: details.append(args)
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=0.05))
    assert result.beats >= 2
    assert result.failures == 0
    assert len(platform.requests) == result.beats
    assert all(str(r.url) == f"{URL}/registry/heartbeat" and r.method == "POST" for r in platform.requests)
    body = platform.body(0)
    assert body["workspace_id"] == WS
    assert isinstance(body["uptime_seconds"], int)
    assert "runtime_state" not in body
    assert details[-1] == (result.beats, 0)
    assert len(details) == result.beats


async def test_heartbeat_run_for_zero_posts_once(platform: FakePlatform, env: ActivityEnvironment) -> None:
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=10, run_for_s=0))
    assert (result.beats, result.failures) == (1, 0)
    assert len(platform.requests) == 1


async def test_heartbeat_503_is_counted_not_raised(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(503, headers={"Retry-After": "30"}))
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=10, run_for_s=0))
    assert (result.beats, result.failures) == (0, 1)


@pytest.mark.parametrize(("interval_s", "delays"), [(30.0, [5.0, 30.0]), (0.5, [0.5, 0.5])])
async def test_heartbeat_after_503_retries_within_interval(
    platform: FakePlatform,
    env: ActivityEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    interval_s: float,
    delays: list[float],
) -> None:
    """A failed beat is retried sooner than a regular one, never later; a 401 then ends the duty."""
    slept: list[float] = []

    async def record(delay: float) -> bool:
        slept.append(delay)
        return False

    monkeypatch.setattr(platform_module, "_pause", record)
    platform.then(httpx.Response(503), httpx.Response(200, json={"status": "ok"}), httpx.Response(401))
    err = await raises(
        env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=interval_s, run_for_s=3600))
    )
    assert err.type == ErrorType.AUTH
    assert slept == delays


async def test_heartbeat_503_then_200_keeps_the_duty_going(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(503))
    platform.default = lambda request: httpx.Response(200, json={"status": "ok"})
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=0.5))
    assert result.failures == 1
    assert result.beats >= 1
    assert len(platform.requests) == result.beats + result.failures


async def test_heartbeat_network_error_is_counted_not_raised(platform: FakePlatform, env: ActivityEnvironment) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    platform.then(timeout)
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=10, run_for_s=0))
    assert (result.beats, result.failures) == (0, 1)


async def test_heartbeat_401_raises_auth(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "ok"}), httpx.Response(401, json={"error": "invalid"}))
    err = await raises(env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=60)))
    assert err.type == ErrorType.AUTH
    assert err.non_retryable
    assert len(platform.requests) == 2


async def test_heartbeat_404_raises_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(404))
    err = await raises(env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=60)))
    assert err.type == ErrorType.GONE
