"""Large messages: a body over BODY_REF_BYTES crosses Temporal as a reference (``poll``), and ``dispatch`` re-reads it
from the platform, here a scripted inbox with the real ``since_id`` semantics (``httpx.MockTransport``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dispatch import DispatchActivities
from activities.errors import ErrorType
from activities.inbox import (
    BODY_REF_BYTES,
    REF_MESSAGE_BYTES,
    RESET_READ_LIMIT,
    InboxRow,
    row_to_polled,
    rows_to_polled,
)
from activities.messages import (
    BackendSpec,
    BodyRef,
    DispatchInput,
    PolledRow,
    PollInput,
    RowPointer,
)
from activities.platform import PlatformActivities
from tests.unit.platform.fake_platform import T0, TARGET, inbox_row, row_id

BIG = "b" * (BODY_REF_BYTES + 1)
"""Text whose body is over BODY_REF_BYTES: passed by reference."""


class FakeInbox:
    """The inbox of docs/protocol.md §3.3: ``since_id`` → rows after it oldest first (410 when unknown), none →
    newest first; ``limit`` honoured. ``script`` holds one-shot answers served first."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.script: list[httpx.Response | Exception] = []
        self.requests: list[httpx.Request] = []

    def remove(self, *numbers: int) -> None:
        """Prune rows by number."""
        gone = {row_id(n) for n in numbers}
        self.rows = [r for r in self.rows if r["id"] not in gone]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        params = request.url.params
        limit = int(params.get("limit", "100"))
        since_id = params.get("since_id")
        if since_id is None:
            return httpx.Response(200, json=list(reversed(self.rows))[:limit])
        ids = [r["id"] for r in self.rows]
        if since_id not in ids:
            return httpx.Response(410, json={"error": "since_id cursor not found; omit since_id to reset"})
        start = ids.index(since_id) + 1
        return httpx.Response(200, json=self.rows[start : start + limit])

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(self.requests[index].url.params)


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, list[FakeInbox]]]:
    """A client whose transport serves whichever FakeInbox the test puts in the list."""
    inboxes: list[FakeInbox] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: inboxes[0].handler(r))) as client:
        yield client, inboxes


@pytest.fixture
def env() -> ActivityEnvironment:
    return ActivityEnvironment()


def platform_for(http: tuple[httpx.AsyncClient, list[FakeInbox]], inbox: FakeInbox) -> PlatformActivities:
    client, inboxes = http
    inboxes.append(inbox)
    return PlatformActivities(client, lambda workspace_id: "tok-secret")


async def poll(env: ActivityEnvironment, platform: PlatformActivities, **fields: Any) -> list[PolledRow]:
    return (await env.run(platform.poll, PollInput(target=TARGET, max_wait_s=60, **fields))).rows


def refs(rows: list[PolledRow]) -> dict[str, str | None]:
    """Row id → ``read_after``, for the rows passed by reference."""
    return {r.row_id: r.body_ref.read_after for r in rows if r.body_ref is not None}


# --- row_to_polled: the reference decision --------------------------------------------------------------------


def test_row_to_polled_body_under_limit_is_carried_whole() -> None:
    text = "x" * (BODY_REF_BYTES - 1024)
    polled = row_to_polled(inbox_row(1, text=text), read_after=row_id(0))
    assert polled.outcome == "deliver" and polled.body_ref is None
    assert polled.message is not None and len(polled.message.parts) == 1
    assert polled.text == ""  # over TEXT_COPY_BYTES: carried once, in the parts
    assert polled.message_text == text


def test_row_to_polled_body_over_limit_is_reference_keeping_ids_and_metadata() -> None:
    raw = inbox_row(2, text=BIG)
    message = raw["request_body"]["params"]["message"]
    message["taskId"] = "task-2"
    message["metadata"] = {"auto_reply": True, "auto_reply_depth": 2}
    polled = row_to_polled(raw, read_after=row_id(1))
    assert polled.outcome == "deliver"
    assert polled.body_ref == BodyRef(read_after=row_id(1), body_bytes=len(orjson.dumps(raw["request_body"])))
    assert polled.message is not None and polled.message.parts == []
    assert (polled.message.message_id, polled.message.context_id, polled.message.task_id) == (
        "msg-2",
        "ctx-2",
        "task-2",
    )
    assert polled.message.metadata == {"auto_reply": True, "auto_reply_depth": 2}
    assert polled.auto_reply_depth == 2
    assert polled.text == "" and polled.message_text == ""
    assert polled.body_bytes == len(polled.message.model_dump_json(by_alias=True)) < 1024
    assert len(polled.model_dump_json()) < 2048


def test_row_to_polled_large_file_part_makes_a_reference() -> None:
    """The body's size decides, not its text: inline file bytes count too."""
    raw = inbox_row(1)
    inline = base64.b64encode(b"\0" * BODY_REF_BYTES).decode()
    raw["request_body"]["params"]["message"]["parts"].append({"kind": "file", "file": {"bytes": inline}})
    polled = row_to_polled(raw)
    assert polled.body_ref == BodyRef(read_after=None, body_bytes=len(orjson.dumps(raw["request_body"])))


def test_row_to_polled_reference_with_huge_metadata_drops_it_and_keeps_depth() -> None:
    raw = inbox_row(1, text=BIG)
    raw["request_body"]["params"]["message"]["metadata"] = {"auto_reply_depth": 3, "blob": "m" * REF_MESSAGE_BYTES}
    polled = row_to_polled(raw)
    assert polled.body_ref is not None and polled.message is not None
    assert polled.message.metadata is None
    assert polled.message.context_id == "ctx-1"
    assert polled.auto_reply_depth == 3


def test_row_to_polled_reference_with_huge_message_id_is_malformed() -> None:
    raw = inbox_row(1, text=BIG)
    raw["request_body"]["params"]["message"]["messageId"] = "i" * (REF_MESSAGE_BYTES + 1)
    polled = row_to_polled(raw)
    assert polled.outcome == "malformed" and polled.message is None
    assert polled.reason is not None and polled.reason.startswith("message ids too large")


def test_rows_to_polled_predecessor_is_previous_row_even_when_left_out() -> None:
    """Rows before ``not_before`` are not returned, but the first returned row still knows its predecessor."""
    rows = [inbox_row(1), inbox_row(2, text=BIG), inbox_row(3, text=BIG)]
    polled = rows_to_polled([InboxRow(r) for r in rows], read_after=None, not_before=T0 + timedelta(seconds=2))
    assert refs(polled) == {row_id(2): row_id(1), row_id(3): row_id(2)}


# --- poll: each reference's predecessor -----------------------------------------------------------------------


async def test_poll_ascending_batch_reads_after_cursor_then_previous_row_skipped_included(
    http: Any, env: ActivityEnvironment
) -> None:
    inbox = FakeInbox(
        [inbox_row(1), inbox_row(2, text=BIG), inbox_row(3, method="notify"), inbox_row(4, text=BIG), inbox_row(5)]
    )
    rows = await poll(env, platform_for(http, inbox), cursor=RowPointer(row_id=row_id(1)), seeded=True)
    assert [r.row_id for r in rows] == [row_id(n) for n in (2, 3, 4, 5)]
    assert rows[1].outcome == "skip"
    assert refs(rows) == {row_id(2): row_id(1), row_id(4): row_id(3)}


async def test_poll_backlog_oldest_reference_has_no_predecessor(http: Any, env: ActivityEnvironment) -> None:
    """A cold-start backlog is read newest first: the oldest row of the batch has no known predecessor."""
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG), inbox_row(3), inbox_row(4, text=BIG)])
    rows = await poll(env, platform_for(http, inbox), start_from="backlog", backlog_limit=3)
    assert [r.row_id for r in rows] == [row_id(2), row_id(3), row_id(4)]
    assert refs(rows) == {row_id(2): None, row_id(4): row_id(3)}


async def test_poll_410_reset_reference_keeps_older_row_read_as_predecessor(
    http: Any, env: ActivityEnvironment
) -> None:
    inbox = FakeInbox([inbox_row(n, text=BIG if n in (1, 3, 4) else None) for n in range(1, 6)])
    cursor = RowPointer(row_id=row_id(99), created_at=T0 + timedelta(seconds=3))
    result = await env.run(platform_for(http, inbox).poll, PollInput(target=TARGET, cursor=cursor, seeded=True))
    assert result.cursor_reset
    assert [r.row_id for r in result.rows] == [row_id(3), row_id(4), row_id(5)]
    assert refs(result.rows) == {row_id(3): row_id(2), row_id(4): row_id(3)}


# --- dispatch: re-reading a reference -------------------------------------------------------------------------


def dispatch_input(row: PolledRow) -> DispatchInput:
    return DispatchInput(target=TARGET, backend=BackendSpec(name="echo", options={}), row=row, lane="ctx")


async def polled_reference(env: ActivityEnvironment, platform: PlatformActivities, **fields: Any) -> PolledRow:
    """Row 2 of the inbox, as ``poll`` returns it (a reference)."""
    rows = await poll(env, platform, **fields)
    [row] = [r for r in rows if r.row_id == row_id(2)]
    assert row.body_ref is not None
    return row


async def dispatch_error(env: ActivityEnvironment, platform: PlatformActivities, row: PolledRow) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await env.run(DispatchActivities(platform).dispatch, dispatch_input(row))
    return info.value


async def test_dispatch_reference_rereads_row_after_predecessor(http: Any, env: ActivityEnvironment) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG), inbox_row(3)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, cursor=RowPointer(row_id=row_id(1)), seeded=True)
    result = await env.run(DispatchActivities(platform).dispatch, dispatch_input(row))
    assert [p.text for p in result.parts] == ["echo: " + BIG]  # type: ignore[union-attr]
    assert inbox.params() == {"type": "a2a_receive", "since_id": row_id(1), "limit": "1"}
    assert inbox.requests[-1].headers["Authorization"] == "Bearer tok-secret"


async def test_dispatch_reference_without_predecessor_found_among_newest(http: Any, env: ActivityEnvironment) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG), inbox_row(3)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, start_from="backlog", backlog_limit=2)
    assert row.body_ref is not None and row.body_ref.read_after is None
    result = await env.run(DispatchActivities(platform).dispatch, dispatch_input(row))
    assert [p.text for p in result.parts] == ["echo: " + BIG]  # type: ignore[union-attr]
    assert inbox.params() == {"type": "a2a_receive", "limit": str(RESET_READ_LIMIT)}


async def test_dispatch_reference_predecessor_pruned_410_found_among_newest(
    http: Any, env: ActivityEnvironment
) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, cursor=RowPointer(row_id=row_id(1)), seeded=True)
    inbox.remove(1)
    result = await env.run(DispatchActivities(platform).dispatch, dispatch_input(row))
    assert [p.text for p in result.parts] == ["echo: " + BIG]  # type: ignore[union-attr]
    assert [r.url.params.get("since_id") for r in inbox.requests[-2:]] == [row_id(1), None]


@pytest.mark.parametrize("pruned", [(2,), (1, 2)], ids=["id-mismatch", "predecessor-pruned-too"])
async def test_dispatch_reference_row_pruned_is_dead_lettered_with_reason(
    http: Any, env: ActivityEnvironment, pruned: tuple[int, ...]
) -> None:
    """Another row (or a 410) where the row was, and not among the newest: non-retryable, with a one-line reason."""
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG), inbox_row(3)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, cursor=RowPointer(row_id=row_id(1)), seeded=True)
    inbox.remove(*pruned)
    err = await dispatch_error(env, platform, row)
    assert err.type == ErrorType.BACKEND_FAILED and err.non_retryable
    assert err.message == "message body no longer on the platform (pruned); cannot re-read"


async def test_dispatch_reference_without_predecessor_beyond_newest_500_is_dead_lettered(
    http: Any, env: ActivityEnvironment
) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG), inbox_row(3)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, start_from="backlog", backlog_limit=2)
    assert row.body_ref is not None and row.body_ref.read_after is None
    inbox.rows += [inbox_row(n) for n in range(4, 4 + RESET_READ_LIMIT)]
    err = await dispatch_error(env, platform, row)
    assert err.type == ErrorType.BACKEND_FAILED and err.non_retryable
    assert err.message == "message body not among the newest 500 inbox rows (pruned or too old); cannot re-read"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, json={"error": "restarting"}),
        httpx.Response(429, json={"error": "rate limited"}, headers={"Retry-After": "3"}),
        httpx.ConnectError("refused"),
    ],
    ids=["503", "429", "network"],
)
async def test_dispatch_reference_transient_platform_error_is_retryable(
    http: Any, env: ActivityEnvironment, failure: httpx.Response | Exception
) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, cursor=RowPointer(row_id=row_id(1)), seeded=True)
    inbox.script.append(failure)
    err = await dispatch_error(env, platform, row)
    assert err.type == ErrorType.TRANSIENT and not err.non_retryable
    assert err.message.startswith("re-read message body")


async def test_dispatch_reference_auth_error_is_auth(http: Any, env: ActivityEnvironment) -> None:
    inbox = FakeInbox([inbox_row(1), inbox_row(2, text=BIG)])
    platform = platform_for(http, inbox)
    row = await polled_reference(env, platform, cursor=RowPointer(row_id=row_id(1)), seeded=True)
    inbox.script.append(httpx.Response(401, json={"error": "invalid workspace auth token"}))
    err = await dispatch_error(env, platform, row)
    assert err.type == ErrorType.AUTH and err.non_retryable
    assert "tok-secret" not in err.message


async def test_dispatch_reference_without_platform_client_is_misconfigured(env: ActivityEnvironment) -> None:
    row = row_to_polled(inbox_row(2, text=BIG), read_after=row_id(1))
    with pytest.raises(ApplicationError) as info:
        await env.run(DispatchActivities().dispatch, dispatch_input(row))
    assert info.value.type == ErrorType.BACKEND_MISCONFIGURED
