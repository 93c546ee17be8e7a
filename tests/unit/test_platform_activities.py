"""PlatformActivities against a scripted platform (``httpx.MockTransport``) in an ``ActivityEnvironment``."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.platform as platform_module
from activities.a2a import DataPart, FileContent, FilePart, TextPart, reply_message_id
from activities.errors import ErrorType
from activities.inbox import MAX_BATCH_BYTES, MAX_QUOTED_CHARS, RESET_READ_LIMIT, row_to_polled
from activities.messages import (
    HeartbeatInput,
    PlatformTarget,
    PolledRow,
    PollInput,
    PollResult,
    RegisterInput,
    ReplyInput,
    RowPointer,
)
from activities.platform import PlatformActivities

URL = "https://platform.test"
WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"
TOKEN = "tok-ws-secret"
TARGET = PlatformTarget(workspace_id=WS, platform_url=URL)
T0 = datetime(2026, 4, 30, 5, 0, tzinfo=UTC)

Responder = Callable[[httpx.Request], httpx.Response]


def token_for(workspace_id: str) -> str:
    if workspace_id != WS:
        raise LookupError(f"no token configured for workspace {workspace_id}")
    return TOKEN


class FakePlatform:
    """Records every request; answers from a one-shot script first, then from ``default``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.reads: list[httpx.Request] = []
        self.script: list[httpx.Response | Responder] = []
        self.default: Responder = lambda request: httpx.Response(200, json=[])
        self.acts: PlatformActivities

    def then(self, *answers: httpx.Response | Responder) -> FakePlatform:
        self.script.extend(answers)
        return self

    workspace: dict[str, Any] = {"status": "awaiting_agent", "last_heartbeat_at": None}
    """What ``GET /workspaces/{id}`` answers (register reads it first); such reads are kept apart in ``reads``."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.rstrip("/").endswith(f"/workspaces/{WS}"):
            self.reads.append(request)
            return httpx.Response(200, json=self.workspace)
        self.requests.append(request)
        answer = self.script.pop(0) if self.script else self.default
        return answer(request) if callable(answer) else answer

    def body(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


@pytest.fixture
async def platform() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as http:
        fake.acts = PlatformActivities(http, token_for, agent_version="1.2.3")
        yield fake


@pytest.fixture
def env() -> ActivityEnvironment:
    return ActivityEnvironment()


def row_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def inbox_row(
    n: int, *, text: str | None = None, source: str | None = PEER, **overrides: Any
) -> dict[str, Any]:
    """An ``a2a_receive`` row as the platform stores it (PROTOCOL.md §4)."""
    row: dict[str, Any] = {
        "id": row_id(n),
        "workspace_id": WS,
        "activity_type": "a2a_receive",
        "source_id": source,
        "target_id": WS,
        "method": "message/send",
        "summary": "message/send → WS (queued for poll)",
        "status": "ok",
        "created_at": at(n).isoformat().replace("+00:00", "Z"),
        "seq": n,
        "request_body": {
            "jsonrpc": "2.0",
            "id": f"req-{n}",
            "method": "message/send",
            "params": {
                "message": {
                    "role": "user",
                    "messageId": f"msg-{n}",
                    "contextId": f"ctx-{n}",
                    "parts": [{"kind": "text", "text": text if text is not None else f"hello {n}"}],
                }
            },
        },
    }
    row.update(overrides)
    return row


def rows_answer(*rows: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=list(rows))


def params_of(request: httpx.Request) -> dict[str, str]:
    return dict(request.url.params)


async def raises(coro: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    return info.value


# --- headers ------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "error", [LookupError("no token configured for ws"), KeyError("no token configured for ws")]
)
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


# --- register -----------------------------------------------------------------------------------------------


async def test_register_posts_poll_mode_agent_card(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(
        httpx.Response(200, json={"status": "registered", "delivery_mode": "poll", "auth_token": "boot"})
    )
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


async def test_register_empty_answer_defaults_to_poll(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
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


async def test_register_network_error_raises_transient(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    platform.then(refuse)
    err = await raises(env.run(platform.acts.register, RegisterInput(target=TARGET)))
    assert err.type == ErrorType.TRANSIENT
    assert "ConnectError" in err.message


# --- heartbeat ----------------------------------------------------------------------------------------------


async def test_heartbeat_posts_repeatedly_until_run_for_s(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.default = lambda request: httpx.Response(200, json={"status": "ok"})
    details: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *args: details.append(args)
    result = await env.run(
        platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=0.05)
    )
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


async def test_heartbeat_503_then_200_keeps_the_duty_going(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(503))
    platform.default = lambda request: httpx.Response(200, json={"status": "ok"})
    result = await env.run(
        platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=0.5)
    )
    assert result.failures == 1
    assert result.beats >= 1
    assert len(platform.requests) == result.beats + result.failures


async def test_heartbeat_network_error_is_counted_not_raised(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    platform.then(timeout)
    result = await env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=10, run_for_s=0))
    assert (result.beats, result.failures) == (0, 1)


async def test_heartbeat_401_raises_auth(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "ok"}), httpx.Response(401, json={"error": "invalid"}))
    err = await raises(
        env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=60))
    )
    assert err.type == ErrorType.AUTH
    assert err.non_retryable
    assert len(platform.requests) == 2


async def test_heartbeat_404_raises_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(404))
    err = await raises(
        env.run(platform.acts.heartbeat, HeartbeatInput(target=TARGET, interval_s=0.01, run_for_s=60))
    )
    assert err.type == ErrorType.GONE


# --- poll: with a cursor ------------------------------------------------------------------------------------


async def test_poll_cursor_sends_since_id_type_and_limit(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(rows_answer(inbox_row(2), inbox_row(3)))
    heartbeats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *args: heartbeats.append(args)
    result = await env.run(
        platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), limit=50)
    )
    (request,) = platform.requests
    assert request.method == "GET"
    assert request.url.path == f"/workspaces/{WS}/activity"
    assert params_of(request) == {"type": "a2a_receive", "since_id": row_id(1), "limit": "50"}
    assert [r.row_id for r in result.rows] == [row_id(2), row_id(3)]
    assert [r.text for r in result.rows] == ["hello 2", "hello 3"]
    assert all(r.outcome == "deliver" for r in result.rows)
    assert result.polls == 1
    assert not result.cursor_reset and not result.cold_start_done and result.seed is None
    assert heartbeats == [(1,)]


async def test_poll_empty_inbox_returns_empty_after_max_wait(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    result = await env.run(
        platform.acts.poll,
        PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), poll_interval_s=0.01, max_wait_s=0.05),
    )
    assert result.rows == []
    assert result.polls >= 1
    assert result.polls == len(platform.requests)
    assert all(params_of(r)["since_id"] == row_id(1) for r in platform.requests)


async def test_poll_rows_arriving_later_end_the_long_poll(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(rows_answer(), rows_answer(), rows_answer(inbox_row(2)))
    result = await env.run(
        platform.acts.poll,
        PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), poll_interval_s=0.001, max_wait_s=5),
    )
    assert [r.row_id for r in result.rows] == [row_id(2)]
    assert result.polls == 3


async def test_poll_only_skip_rows_are_still_returned(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Skipped rows must reach the workflow so the cursor moves past them."""
    platform.then(rows_answer(inbox_row(2, method="notify", source=None)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [(r.row_id, r.outcome) for r in result.rows] == [(row_id(2), "skip")]


async def test_poll_rows_without_id_are_dropped(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(rows_answer({"method": "message/send"}, inbox_row(2)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [r.row_id for r in result.rows] == [row_id(2)]


# --- poll: cold start ---------------------------------------------------------------------------------------


async def test_poll_cold_start_latest_seeds_at_newest_row(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Without a cursor the platform answers newest first; the seed is that first row; none delivered."""
    platform.then(rows_answer(inbox_row(3), inbox_row(2), inbox_row(1)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="latest"))
    (request,) = platform.requests
    assert "since_id" not in params_of(request)
    assert params_of(request)["type"] == "a2a_receive"
    assert params_of(request)["limit"] == "20"
    assert result.seed == RowPointer(row_id=row_id(3), created_at=at(3))
    assert result.rows == []
    assert result.cold_start_done
    assert not result.cursor_reset


async def test_poll_cold_start_latest_empty_inbox_seeds_none(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="latest", max_wait_s=60))
    assert result.seed is None
    assert result.cold_start_done
    assert result.rows == []
    assert len(platform.requests) == 1


async def test_poll_cold_start_backlog_delivers_oldest_first(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """PROTOCOL.md §9.4: a DESC batch must be reversed before dispatch."""
    platform.then(rows_answer(inbox_row(3), inbox_row(2), inbox_row(1)))
    result = await env.run(
        platform.acts.poll, PollInput(target=TARGET, start_from="backlog", backlog_limit=3)
    )
    assert params_of(platform.requests[0]) == {"type": "a2a_receive", "limit": "3"}
    assert [r.row_id for r in result.rows] == [row_id(1), row_id(2), row_id(3)]
    assert result.cold_start_done
    assert result.seed is None


async def test_poll_cold_start_backlog_limit_is_capped(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="backlog", backlog_limit=10_000))
    assert params_of(platform.requests[0])["limit"] == str(RESET_READ_LIMIT)


async def test_poll_cold_start_backlog_empty_inbox_is_done(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="backlog", max_wait_s=60))
    assert result.rows == [] and result.cold_start_done
    assert len(platform.requests) == 1


async def test_poll_seeded_without_cursor_reads_newest_oldest_first(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Seeded on an empty inbox: every row since is new, and rows before ``not_before`` are dropped."""
    platform.then(rows_answer(inbox_row(5), inbox_row(4), inbox_row(1)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, seeded=True, not_before=at(4)))
    assert params_of(platform.requests[0]) == {"type": "a2a_receive", "limit": str(RESET_READ_LIMIT)}
    assert [r.row_id for r in result.rows] == [row_id(4), row_id(5)]
    assert not result.cold_start_done


# --- poll: cursor recovery and errors -----------------------------------------------------------------------


async def test_poll_cursor_pruned_410_rereads_rows_at_or_after_cursor_time(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(
        httpx.Response(410, json={"error": "since_id cursor not found (pruned); omit since_id to reset"}),
        rows_answer(inbox_row(7), inbox_row(6), inbox_row(5), inbox_row(4)),
    )
    cursor = RowPointer(row_id=row_id(5), created_at=at(5))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=cursor))
    first, second = platform.requests
    assert params_of(first)["since_id"] == row_id(5)
    assert params_of(second) == {"type": "a2a_receive", "limit": str(RESET_READ_LIMIT)}
    assert [r.row_id for r in result.rows] == [row_id(5), row_id(6), row_id(7)]
    assert result.cursor_reset
    assert result.polls == 1


async def test_poll_cursor_410_without_cursor_time_keeps_all_rows(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(410), rows_answer(inbox_row(2), inbox_row(1)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(9))))
    assert [r.row_id for r in result.rows] == [row_id(1), row_id(2)]
    assert result.cursor_reset


async def test_poll_cursor_410_on_empty_inbox_still_reports_reset(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(410), rows_answer())
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(9))))
    assert result.rows == [] and result.cursor_reset


async def test_poll_non_uuid_cursor_resets_without_sending_it(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """A non-UUID since_id gets a 500 on every poll (PROTOCOL.md §3.3), so it is never sent."""
    platform.then(rows_answer(inbox_row(3), inbox_row(2), inbox_row(1)))
    cursor = RowPointer(row_id="row-42", created_at=at(2))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=cursor))
    (request,) = platform.requests
    assert "since_id" not in params_of(request)
    assert "row-42" not in str(request.url)
    assert [r.row_id for r in result.rows] == [row_id(2), row_id(3)]
    assert result.cursor_reset


async def test_poll_429_raises_transient_with_retry_after(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(429, json={"error": "rate limited"}, headers={"Retry-After": "7"}))
    err = await raises(
        env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    )
    assert err.type == ErrorType.TRANSIENT
    assert not err.non_retryable
    assert err.next_retry_delay == timedelta(seconds=7)
    assert err.message.startswith("poll: HTTP 429")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, ErrorType.AUTH), (403, ErrorType.AUTH), (404, ErrorType.GONE), (500, ErrorType.TRANSIENT)],
)
async def test_poll_error_status_raises_its_class(
    platform: FakePlatform, env: ActivityEnvironment, status: int, error_type: ErrorType
) -> None:
    platform.then(httpx.Response(status))
    err = await raises(
        env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    )
    assert err.type == error_type


async def test_poll_404_on_cold_start_raises_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """Hosted platforms answer 404 with an empty body when tenant headers are missing."""
    platform.then(httpx.Response(404))
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET)))
    assert err.type == ErrorType.GONE


async def test_poll_non_array_answer_raises_transient(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(200, json={"rows": []}))
    err = await raises(
        env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    )
    assert err.type == ErrorType.TRANSIENT


async def test_poll_network_error_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    platform.then(refuse)
    err = await raises(
        env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    )
    assert err.type == ErrorType.TRANSIENT


# --- poll: batch bound --------------------------------------------------------------------------------------


async def test_poll_batch_over_max_bytes_is_cut(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """Rows past MAX_BATCH_BYTES (as they cross Temporal) wait for the next poll, which starts after the last row
    returned."""
    big = "x" * (200 * 1024)  # carried (under BODY_REF_BYTES): four of them are over the batch budget
    platform.then(rows_answer(*(inbox_row(n, text=big) for n in range(2, 7))))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [r.row_id for r in result.rows] == [row_id(2), row_id(3), row_id(4)]
    assert all(r.body_ref is None for r in result.rows)
    assert sum(len(r.model_dump_json()) for r in result.rows) <= MAX_BATCH_BYTES

    platform.then(rows_answer(*(inbox_row(n, text=big) for n in range(5, 7))))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=result.rows[-1].pointer))
    assert params_of(platform.requests[-1])["since_id"] == row_id(4)
    assert [r.row_id for r in result.rows] == [row_id(5), row_id(6)]


async def test_poll_rows_over_body_ref_bytes_are_references_that_fit_one_batch(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """Bodies far over the batch budget cross Temporal as references, so they never cut a batch short."""
    huge = "y" * (3 * MAX_BATCH_BYTES)
    platform.then(rows_answer(inbox_row(2, text=huge), inbox_row(3, text=huge), inbox_row(4)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [r.row_id for r in result.rows] == [row_id(2), row_id(3), row_id(4)]
    assert [r.body_ref is not None for r in result.rows] == [True, True, False]
    assert len(result.model_dump_json()) < 4096


def test_bounded_single_row_over_max_bytes_is_still_returned() -> None:
    """A lone oversized row cannot be split; cutting it would stall the inbox forever."""
    rows = [
        PolledRow(row_id=row_id(2), outcome="skip", reason="y" * (MAX_BATCH_BYTES + 1)),
        PolledRow(row_id=row_id(3), outcome="skip"),
    ]
    result = PlatformActivities._bounded(PollResult(rows=rows))
    assert [r.row_id for r in result.rows] == [row_id(2)]


async def test_poll_batch_under_max_bytes_is_whole(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(rows_answer(*(inbox_row(n) for n in range(2, 12))))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert len(result.rows) == 10


# --- row_to_polled: skip rules (PROTOCOL.md §4) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"method": "notify", "source_id": None, "response_body": {"result": "hi"}},
            "own canvas reply (notify echo)",
        ),
        ({"status": "error"}, "row status is error"),
        ({"response_body": {"result": "done"}}, "already answered (push delivery)"),
        ({"method": "tasks/get"}, "unknown method 'tasks/get'"),
        ({"method": None}, "unknown method None"),
        ({"request_body": None}, "no request_body"),
        ({"activity_type": "a2a_send"}, "activity_type 'a2a_send' is not a2a_receive"),
    ],
)
def test_row_to_polled_skip_rules_give_reason(overrides: dict[str, Any], reason: str) -> None:
    polled = row_to_polled(inbox_row(1, **overrides))
    assert polled.outcome == "skip"
    assert polled.reason == reason
    assert polled.message is None
    assert polled.row_id == row_id(1)


def test_row_to_polled_huge_method_is_clipped_in_row_and_reason() -> None:
    """The sender picks the method: a huge one must not grow a poll result past Temporal's payload limit."""
    polled = row_to_polled(inbox_row(1, method="m" * (1 << 20)))
    assert polled.outcome == "skip"
    assert polled.method is not None and len(polled.method) == MAX_QUOTED_CHARS
    assert polled.reason is not None and len(polled.reason) == MAX_QUOTED_CHARS


def test_row_to_polled_request_body_absent_is_skipped() -> None:
    row = inbox_row(1)
    del row["request_body"]
    polled = row_to_polled(row)
    assert (polled.outcome, polled.reason, polled.body_bytes) == ("skip", "no request_body", 0)


def test_row_to_polled_malformed_body_is_malformed_with_reason() -> None:
    body = {"jsonrpc": "2.0", "id": "1", "method": "message/send", "params": {"message": {"content": 5}}}
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "malformed"
    assert polled.reason == "invalid params.message.content type"
    assert polled.message is None


def test_row_to_polled_body_without_usable_parts_is_malformed() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {"message": {"parts": [{"kind": "x"}]}},
    }
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "malformed"
    assert polled.reason == "no usable parts (1 unsupported)"


def test_row_to_polled_deliverable_row_is_parsed() -> None:
    raw = inbox_row(4, text="ping")
    polled = row_to_polled(raw)
    assert polled.outcome == "deliver"
    assert polled.reason is None
    assert polled.row_id == row_id(4)
    assert polled.created_at == at(4)
    assert polled.source_id == PEER
    assert polled.method == "message/send"
    assert polled.text == "ping"
    assert polled.message is not None and polled.message.message_id == "msg-4"
    assert polled.message.context_id == "ctx-4"
    assert polled.body_bytes == len(orjson.dumps(raw["request_body"]))
    assert polled.auto_reply_depth == 0
    assert polled.pointer == RowPointer(row_id=row_id(4), created_at=at(4))


def test_row_to_polled_message_stream_is_delivered() -> None:
    assert row_to_polled(inbox_row(1, method="message/stream")).outcome == "deliver"


def test_row_to_polled_canvas_row_has_no_source() -> None:
    polled = row_to_polled(inbox_row(1, source=None))
    assert polled.outcome == "deliver" and polled.source_id is None


def test_row_to_polled_bad_created_at_is_none() -> None:
    assert row_to_polled(inbox_row(1, created_at="yesterday")).created_at is None


def test_row_to_polled_legacy_body_is_normalized() -> None:
    body = {"method": "message/send", "params": {"message": {"content": [{"type": "text", "text": "old"}]}}}
    polled = row_to_polled(inbox_row(1, request_body=body))
    assert polled.outcome == "deliver" and polled.text == "old"


@pytest.mark.parametrize(
    ("metadata", "depth"),
    [
        ({"auto_reply_depth": 3}, 3),
        ({"auto_reply_depth": -1}, 0),
        ({"auto_reply_depth": "2"}, 0),
        ({}, 0),
        (None, 0),
    ],
)
def test_row_to_polled_auto_reply_depth_read_from_metadata(
    metadata: dict[str, Any] | None, depth: int
) -> None:
    raw = inbox_row(1)
    if metadata is not None:
        raw["request_body"]["params"]["message"]["metadata"] = metadata
    assert row_to_polled(raw).auto_reply_depth == depth


# --- reply --------------------------------------------------------------------------------------------------


def peer_row(n: int = 1, **overrides: Any) -> PolledRow:
    return row_to_polled(inbox_row(n, **overrides))


async def test_reply_to_peer_posts_new_message_send(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "queued", "delivery_mode": "poll"}))
    raw = inbox_row(1)
    raw["request_body"]["params"]["message"]["taskId"] = "task-1"
    raw["request_body"]["params"]["message"]["metadata"] = {"auto_reply_depth": 2}
    row = row_to_polled(raw)
    result = await env.run(
        platform.acts.reply, ReplyInput(target=TARGET, row=row, parts=[TextPart(text="pong")])
    )
    (request,) = platform.requests
    expected_id = reply_message_id(WS, row_id(1))
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/workspaces/{PEER}/a2a"
    assert request.headers["X-Workspace-ID"] == WS
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert platform.body() == {
        "jsonrpc": "2.0",
        "id": expected_id,
        "method": "message/send",
        "params": {
            "message": {
                "role": "agent",
                "messageId": expected_id,
                "contextId": "ctx-1",
                "taskId": "task-1",
                "referenceTaskIds": [],
                "parts": [{"kind": "text", "text": "pong"}],
                "metadata": {
                    "in_reply_to": "msg-1",
                    "activity_id": row_id(1),
                    "auto_reply": True,
                    "auto_reply_depth": 3,
                },
            }
        },
    }
    assert result.destination == "peer"
    assert result.message_id == expected_id


async def test_reply_to_peer_retry_sends_same_message_id(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """A retried reply is byte-identical, so the platform stores it once (PROTOCOL.md §3.4)."""
    reply = ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="pong")])
    first = await env.run(platform.acts.reply, reply)
    second = await env.run(platform.acts.reply, reply)
    assert first.message_id == second.message_id == reply_message_id(WS, row_id(1))
    assert platform.requests[0].content == platform.requests[1].content


async def test_reply_to_peer_differs_per_row(platform: FakePlatform, env: ActivityEnvironment) -> None:
    one = await env.run(
        platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(1), parts=[TextPart(text="a")])
    )
    two = await env.run(
        platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(2), parts=[TextPart(text="a")])
    )
    assert one.message_id != two.message_id


async def test_reply_to_peer_error_reply_is_marked(platform: FakePlatform, env: ActivityEnvironment) -> None:
    reply = ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="failed")], is_error=True)
    await env.run(platform.acts.reply, reply)
    assert platform.body()["params"]["message"]["metadata"]["error"] is True


async def test_reply_to_peer_malformed_row_has_no_context(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    row = peer_row(request_body={"method": "message/send", "params": {"message": {"content": 1}}})
    assert row.outcome == "malformed"
    reply = ReplyInput(target=TARGET, row=row, parts=[TextPart(text="cannot read")], is_error=True)
    result = await env.run(platform.acts.reply, reply)
    message = platform.body()["params"]["message"]
    assert message["role"] == "agent"
    assert message["messageId"] == result.message_id == reply_message_id(WS, row_id(1), error=True)
    assert "contextId" not in message
    assert message["metadata"] == {
        "activity_id": row_id(1),
        "auto_reply": True,
        "auto_reply_depth": 1,
        "error": True,
    }
    assert str(platform.requests[0].url) == f"{URL}/workspaces/{PEER}/a2a"


async def test_reply_to_canvas_posts_notify(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "sent"}))
    row = peer_row(source=None)
    reply = ReplyInput(target=TARGET, row=row, parts=[TextPart(text="line 1"), TextPart(text="line 2")])
    result = await env.run(platform.acts.reply, reply)
    (request,) = platform.requests
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/workspaces/{WS}/notify"
    assert "X-Workspace-ID" not in request.headers
    assert platform.body() == {"message": "line 1\nline 2"}
    assert result.destination == "canvas"
    assert result.message_id is None


async def test_reply_to_canvas_file_parts_become_attachments(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    parts = [
        TextPart(text="see attached"),
        FilePart(file=FileContent(uri="workspace:r.pdf", name="r.pdf", mime_type="application/pdf")),
        FilePart(file=FileContent(uri="workspace:x.bin")),
        FilePart(file=FileContent(bytes="aGk=", name="inline.txt")),
    ]
    await env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(source=None), parts=parts))
    assert platform.body() == {
        "message": "see attached",
        "attachments": [
            {"uri": "workspace:r.pdf", "name": "r.pdf", "mimeType": "application/pdf"},
            {"uri": "workspace:x.bin", "name": "workspace:x.bin"},
        ],
    }


async def test_reply_to_canvas_without_text_sends_placeholder(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """The platform answers 400 "message is required" to an empty message (PROTOCOL.md §3.5)."""
    await env.run(
        platform.acts.reply,
        ReplyInput(target=TARGET, row=peer_row(source=None), parts=[DataPart(data={"k": 1})]),
    )
    assert platform.body() == {"message": "(no text)"}


async def test_reply_to_peer_404_is_permanent_not_gone(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(404, json={"error": "workspace not found"}))
    err = await raises(
        env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="x")]))
    )
    assert err.type == ErrorType.PERMANENT
    assert err.non_retryable
    assert err.message.startswith(f"reply to {PEER}: HTTP 404")


async def test_reply_to_canvas_404_is_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(404))
    reply = ReplyInput(target=TARGET, row=peer_row(source=None), parts=[TextPart(text="x")])
    err = await raises(env.run(platform.acts.reply, reply))
    assert err.type == ErrorType.GONE


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, ErrorType.AUTH), (403, ErrorType.AUTH), (400, ErrorType.PERMANENT), (503, ErrorType.TRANSIENT)],
)
async def test_reply_to_peer_error_status_raises_its_class(
    platform: FakePlatform, env: ActivityEnvironment, status: int, error_type: ErrorType
) -> None:
    platform.then(httpx.Response(status, json={"error": "no"}))
    err = await raises(
        env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="x")]))
    )
    assert err.type == error_type
    assert TOKEN not in err.message


async def test_reply_429_carries_retry_after(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(429, headers={"Retry-After": "3"}))
    err = await raises(
        env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="x")]))
    )
    assert err.type == ErrorType.TRANSIENT
    assert err.next_retry_delay == timedelta(seconds=3)
