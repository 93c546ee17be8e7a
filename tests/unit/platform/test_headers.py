"""The headers of every platform request (bearer token, ``Origin``, ``Accept``, ``Content-Type``, org id), and
``TokenMissing`` when this worker holds no token for the workspace (docs/protocol.md §2)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.a2a import TextPart
from activities.errors import ErrorType
from activities.inbox import row_to_polled
from activities.messages import (
    HeartbeatInput,
    PlatformTarget,
    PollInput,
    RegisterInput,
    ReplyInput,
    RowPointer,
)
from activities.platform import PlatformActivities
from tests.unit.platform.fake_platform import (
    TARGET,
    TOKEN,
    URL,
    FakePlatform,
    inbox_row,
    raises,
    row_id,
    rows_answer,
    token_for,
)


async def test_headers_get_carry_bearer_origin_and_accept_without_content_type(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(rows_answer(inbox_row(2)))
    await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    (request,) = platform.requests
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Origin"] == URL
    assert request.headers["Accept"] == "application/json"
    assert "Content-Type" not in request.headers
    assert "X-Molecule-Org-Id" not in request.headers


async def test_headers_post_carry_json_content_type(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "registered", "delivery_mode": "poll"}))
    await env.run(platform.acts.register, RegisterInput(target=TARGET))
    (request,) = platform.requests
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Origin"] == URL


async def test_headers_org_id_configured_is_sent(env: ActivityEnvironment) -> None:
    fake = FakePlatform().then(httpx.Response(200, json={"status": "registered", "delivery_mode": "poll"}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
        acts = PlatformActivities(http, token_for, org_id="org-42")
        await env.run(acts.register, RegisterInput(target=TARGET))
        await env.run(acts.poll, PollInput(target=TARGET, seeded=True, max_wait_s=0))
    assert [r.headers["X-Molecule-Org-Id"] for r in fake.requests] == ["org-42", "org-42"]


@pytest.mark.parametrize("error", [LookupError("no token configured for ws"), KeyError("no token configured for ws")])
async def test_headers_missing_token_raises_token_missing_with_lookup_message(
    env: ActivityEnvironment, error: Exception
) -> None:
    """A token lookup failure is TokenMissing (another worker may hold the token) with the lookup's own words."""

    def lookup(workspace_id: str) -> str:
        raise error

    fake = FakePlatform()
    env.info = dataclasses.replace(env.info, scheduled_time=datetime.now(UTC))
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
        acts = PlatformActivities(http, lookup)
        err = await raises(env.run(acts.poll, PollInput(target=TARGET, seeded=True, max_wait_s=0)))
        assert err.type == ErrorType.TOKEN_MISSING
        assert not err.non_retryable and err.next_retry_delay is not None
        assert "no token configured for ws" in err.message
        # Still nobody holding the token three minutes after the activity was first scheduled: the connector blocks.
        env.info = dataclasses.replace(env.info, scheduled_time=datetime.now(UTC) - timedelta(minutes=3))
        late = await raises(env.run(acts.poll, PollInput(target=TARGET, seeded=True, max_wait_s=0)))
        assert late.type == ErrorType.TOKEN_MISSING and late.non_retryable
    assert fake.requests == []


@pytest.mark.parametrize("activity_name", ["register", "heartbeat", "poll", "reply"])
async def test_headers_unknown_workspace_raises_token_missing_for_every_activity(
    platform: FakePlatform, env: ActivityEnvironment, activity_name: str
) -> None:
    other = PlatformTarget(workspace_id="33333333-3333-4333-8333-333333333333", platform_url=URL)
    row = row_to_polled(inbox_row(1))
    inputs = {
        "register": RegisterInput(target=other),
        "heartbeat": HeartbeatInput(target=other, interval_s=0.01, run_for_s=0),
        "poll": PollInput(target=other, seeded=True, max_wait_s=0),
        "reply": ReplyInput(target=other, row=row, parts=[TextPart(text="x")]),
    }
    err = await raises(env.run(getattr(platform.acts, activity_name), inputs[activity_name]))
    assert err.type == ErrorType.TOKEN_MISSING
    assert "no token configured for workspace 3333" in err.message
    assert platform.requests == []
