"""``register``: the poll-mode agent card, and how its failures are classed (docs/protocol.md §3.1)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from temporalio.testing import ActivityEnvironment

from activities.errors import ErrorType
from activities.messages import (
    RegisterInput,
)
from tests.unit.platform.fake_platform import (
    TARGET,
    TOKEN,
    URL,
    WS,
    FakePlatform,
    raises,
)


async def test_register_posts_poll_mode_agent_card(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "registered", "delivery_mode": "poll", "auth_token": "boot"}))
    result = await env.run(platform.acts.register, RegisterInput(target=TARGET, agent_name="my-agent"))
    (request,) = platform.requests
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/registry/register"
    body = platform.body()
    assert body == {
        "id": WS,
        "delivery_mode": "poll",
        "agent_card": {
            "name": "my-agent",
            "description": body["agent_card"]["description"],
            "version": "1.2.3",
        },
    }
    assert "url" not in body
    assert result.delivery_mode == "poll"
    assert "boot" not in result.model_dump_json()


async def test_register_empty_answer_defaults_to_poll(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200))
    assert (await env.run(platform.acts.register, RegisterInput(target=TARGET))).delivery_mode == "poll"


async def test_register_401_raises_auth(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(401, json={"error": "invalid workspace auth token"}))
    err = await raises(env.run(platform.acts.register, RegisterInput(target=TARGET)))
    assert err.type == ErrorType.AUTH
    assert err.non_retryable
    assert err.message.startswith("register: HTTP 401")
    assert TOKEN not in err.message


async def test_register_503_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(503, headers={"Retry-After": "15"}))
    err = await raises(env.run(platform.acts.register, RegisterInput(target=TARGET)))
    assert err.type == ErrorType.TRANSIENT
    assert not err.non_retryable
    assert err.next_retry_delay == timedelta(seconds=15)


async def test_register_network_error_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    platform.then(refuse)
    err = await raises(env.run(platform.acts.register, RegisterInput(target=TARGET)))
    assert err.type == ErrorType.TRANSIENT
    assert "ConnectError" in err.message
