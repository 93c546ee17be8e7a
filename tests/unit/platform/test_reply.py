"""``reply``: to a peer as a new ``message/send`` with a deterministic ``messageId``, to the canvas as ``notify``
(docs/protocol.md §3.4, §3.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.a2a import DataPart, FileContent, FilePart, TextPart, reply_message_id
from activities.errors import ErrorType
from activities.inbox import row_to_polled
from activities.messages import PolledRow, ReplyInput, ReplyResult
from tests.unit.platform.fake_platform import (
    PEER,
    TARGET,
    TOKEN,
    URL,
    WS,
    FakePlatform,
    inbox_row,
    params_of,
    raises,
    row_id,
    rows_answer,
)


def peer_row(n: int = 1, **overrides: Any) -> PolledRow:
    return row_to_polled(inbox_row(n, **overrides))


async def test_reply_to_peer_posts_new_message_send(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"status": "queued", "delivery_mode": "poll"}))
    raw = inbox_row(1)
    raw["request_body"]["params"]["message"]["taskId"] = "task-1"
    raw["request_body"]["params"]["message"]["metadata"] = {"auto_reply_depth": 2}
    row = row_to_polled(raw)
    result = await env.run(platform.acts.reply, ReplyInput(target=TARGET, row=row, parts=[TextPart(text="pong")]))
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


async def test_reply_to_peer_retry_sends_same_message_id(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """A retried reply is byte-identical, so the platform stores it once (docs/protocol.md §3.4)."""
    reply = ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="pong")])
    first = await env.run(platform.acts.reply, reply)
    second = await env.run(platform.acts.reply, reply)
    assert first.message_id == second.message_id == reply_message_id(WS, row_id(1))
    assert platform.requests[0].content == platform.requests[1].content


async def test_reply_to_peer_differs_per_row(platform: FakePlatform, env: ActivityEnvironment) -> None:
    one = await env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(1), parts=[TextPart(text="a")]))
    two = await env.run(platform.acts.reply, ReplyInput(target=TARGET, row=peer_row(2), parts=[TextPart(text="a")]))
    assert one.message_id != two.message_id


async def test_reply_to_peer_error_reply_is_marked(platform: FakePlatform, env: ActivityEnvironment) -> None:
    reply = ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="failed")], is_error=True)
    await env.run(platform.acts.reply, reply)
    assert platform.body()["params"]["message"]["metadata"]["error"] is True


async def test_reply_to_peer_malformed_row_has_no_context(platform: FakePlatform, env: ActivityEnvironment) -> None:
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


async def test_reply_to_canvas_file_parts_become_attachments(platform: FakePlatform, env: ActivityEnvironment) -> None:
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


async def test_reply_to_canvas_without_text_sends_placeholder(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """The platform answers 400 "message is required" to an empty message (docs/protocol.md §3.5)."""
    await env.run(
        platform.acts.reply,
        ReplyInput(target=TARGET, row=peer_row(source=None), parts=[DataPart(data={"k": 1})]),
    )
    assert platform.body() == {"message": "(no text)"}


async def test_reply_to_peer_404_is_permanent_not_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
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


# --- a canvas reply an earlier attempt may have delivered (notify has no messageId) ----------------------------


def notify_echo(n: int, text: str, created_at: datetime, **overrides: Any) -> dict[str, Any]:
    """The row the platform writes into our own inbox for each notify (docs/protocol.md §3.5)."""
    fields: dict[str, Any] = {
        "source_id": None,
        "method": "notify",
        "summary": "notify → canvas",
        "request_body": {"message": text},
        "response_body": {"result": text},
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        **overrides,
    }
    return inbox_row(n, **fields)


async def test_reply_to_canvas_attempted_with_echo_row_found_is_not_sent_again(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """The reply sent with the dispatch may have reached the platform: its echo row says it did."""
    attempted = datetime.now(UTC) - timedelta(seconds=5)
    platform.then(rows_answer(inbox_row(9), notify_echo(8, "pong", attempted + timedelta(seconds=1))))
    reply = ReplyInput(target=TARGET, row=peer_row(source=None), parts=[TextPart(text="pong")], attempted_at=attempted)

    result = await env.run(platform.acts.reply, reply)

    assert result == ReplyResult(destination="canvas", deduplicated=True)
    (request,) = platform.requests
    assert request.method == "GET"
    assert request.url.path == f"/workspaces/{WS}/activity"
    params = params_of(request)
    assert (params["type"], params["limit"]) == ("a2a_receive", "100")
    assert int(params["since_secs"]) >= 5 + 2 * 10  # since the attempt, with the clock skew allowed on both sides


@pytest.mark.parametrize(
    "inbox",
    [
        lambda attempted: [],
        lambda attempted: [notify_echo(8, "another reply", attempted + timedelta(seconds=1))],
        lambda attempted: [notify_echo(8, "pong", attempted - timedelta(seconds=11))],
        lambda attempted: [notify_echo(8, "pong", attempted + timedelta(seconds=1), method="message/send")],
    ],
    ids=["empty", "other-text", "before-the-attempt", "not-a-notify"],
)
async def test_reply_to_canvas_attempted_without_echo_row_is_sent(
    platform: FakePlatform, env: ActivityEnvironment, inbox: Callable[[datetime], list[dict[str, Any]]]
) -> None:
    attempted = datetime.now(UTC) - timedelta(seconds=5)
    platform.then(rows_answer(*inbox(attempted)), httpx.Response(200, json={"status": "sent"}))
    reply = ReplyInput(target=TARGET, row=peer_row(source=None), parts=[TextPart(text="pong")], attempted_at=attempted)

    result = await env.run(platform.acts.reply, reply)

    assert result == ReplyResult(destination="canvas", deduplicated=False)
    search, send = platform.requests
    assert (search.method, search.url.path) == ("GET", f"/workspaces/{WS}/activity")
    assert (send.method, send.url.path) == ("POST", f"/workspaces/{WS}/notify")
    assert platform.body() == {"message": "pong"}


async def test_reply_to_canvas_retry_attempt_looks_for_echo_since_first_scheduled(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """A retry of ``reply`` itself (attempt 2) may follow a notify that was sent but whose answer was lost."""
    scheduled = datetime.now(UTC) - timedelta(seconds=5)
    env.info = dataclasses.replace(env.info, attempt=2, scheduled_time=scheduled)
    platform.then(rows_answer(notify_echo(8, "pong", scheduled + timedelta(seconds=1))))
    reply = ReplyInput(target=TARGET, row=peer_row(source=None), parts=[TextPart(text="pong")])

    result = await env.run(platform.acts.reply, reply)

    assert result.deduplicated
    (request,) = platform.requests
    assert request.method == "GET"


async def test_reply_to_peer_attempted_is_sent_without_looking_for_echo(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """A peer reply is deduplicated by the platform on its messageId: it is simply sent again."""
    platform.then(httpx.Response(200, json={"status": "queued"}))
    attempted = datetime.now(UTC) - timedelta(seconds=5)
    reply = ReplyInput(target=TARGET, row=peer_row(), parts=[TextPart(text="pong")], attempted_at=attempted)

    result = await env.run(platform.acts.reply, reply)

    assert (result.destination, result.deduplicated) == ("peer", False)
    (request,) = platform.requests
    assert (request.method, request.url.path) == ("POST", f"/workspaces/{PEER}/a2a")
