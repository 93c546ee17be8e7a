"""``poll``: the long poll of the inbox with a cursor, the cold start, cursor recovery (410, a non-UUID cursor),
errors and the batch bound (docs/protocol.md §3.3–4)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.errors import ErrorType
from activities.inbox import MAX_BATCH_BYTES, RESET_READ_LIMIT
from activities.messages import (
    PolledRow,
    PollInput,
    PollResult,
    RowPointer,
)
from activities.platform import PlatformActivities
from tests.unit.platform.fake_platform import (
    TARGET,
    WS,
    FakePlatform,
    at,
    inbox_row,
    params_of,
    raises,
    row_id,
    rows_answer,
)

# --- poll: with a cursor ------------------------------------------------------------------------------------


async def test_poll_cursor_sends_since_id_type_and_limit(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(rows_answer(inbox_row(2), inbox_row(3)))
    heartbeats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *args: heartbeats.append(args)
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), limit=50))
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


async def test_poll_empty_inbox_returns_empty_after_max_wait(platform: FakePlatform, env: ActivityEnvironment) -> None:
    result = await env.run(
        platform.acts.poll,
        PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), poll_interval_s=0.01, max_wait_s=0.05),
    )
    assert result.rows == []
    assert result.polls >= 1
    assert result.polls == len(platform.requests)
    assert all(params_of(r)["since_id"] == row_id(1) for r in platform.requests)


async def test_poll_rows_arriving_later_end_the_long_poll(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(rows_answer(), rows_answer(), rows_answer(inbox_row(2)))
    result = await env.run(
        platform.acts.poll,
        PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)), poll_interval_s=0.001, max_wait_s=5),
    )
    assert [r.row_id for r in result.rows] == [row_id(2)]
    assert result.polls == 3


async def test_poll_only_skip_rows_are_still_returned(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """Skipped rows must reach the workflow so the cursor moves past them."""
    platform.then(rows_answer(inbox_row(2, method="notify", source=None)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [(r.row_id, r.outcome) for r in result.rows] == [(row_id(2), "skip")]


async def test_poll_rows_without_id_are_dropped(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(rows_answer({"method": "message/send"}, inbox_row(2)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1))))
    assert [r.row_id for r in result.rows] == [row_id(2)]


# --- poll: cold start ---------------------------------------------------------------------------------------


async def test_poll_cold_start_latest_seeds_at_newest_row(platform: FakePlatform, env: ActivityEnvironment) -> None:
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


async def test_poll_cold_start_latest_empty_inbox_seeds_none(platform: FakePlatform, env: ActivityEnvironment) -> None:
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="latest", max_wait_s=60))
    assert result.seed is None
    assert result.cold_start_done
    assert result.rows == []
    assert len(platform.requests) == 1


async def test_poll_cold_start_backlog_delivers_oldest_first(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """docs/protocol.md §9.4: a DESC batch must be reversed before dispatch."""
    platform.then(rows_answer(inbox_row(3), inbox_row(2), inbox_row(1)))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="backlog", backlog_limit=3))
    assert params_of(platform.requests[0]) == {"type": "a2a_receive", "limit": "3"}
    assert [r.row_id for r in result.rows] == [row_id(1), row_id(2), row_id(3)]
    assert result.cold_start_done
    assert result.seed is None


async def test_poll_cold_start_backlog_limit_is_capped(platform: FakePlatform, env: ActivityEnvironment) -> None:
    await env.run(platform.acts.poll, PollInput(target=TARGET, start_from="backlog", backlog_limit=10_000))
    assert params_of(platform.requests[0])["limit"] == str(RESET_READ_LIMIT)


async def test_poll_cold_start_backlog_empty_inbox_is_done(platform: FakePlatform, env: ActivityEnvironment) -> None:
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


async def test_poll_non_uuid_cursor_resets_without_sending_it(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """A non-UUID since_id gets a 500 on every poll (docs/protocol.md §3.3), so it is never sent."""
    platform.then(rows_answer(inbox_row(3), inbox_row(2), inbox_row(1)))
    cursor = RowPointer(row_id="row-42", created_at=at(2))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=cursor))
    (request,) = platform.requests
    assert "since_id" not in params_of(request)
    assert "row-42" not in str(request.url)
    assert [r.row_id for r in result.rows] == [row_id(2), row_id(3)]
    assert result.cursor_reset


async def test_poll_429_raises_transient_with_retry_after(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(429, json={"error": "rate limited"}, headers={"Retry-After": "7"}))
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)))))
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
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)))))
    assert err.type == error_type


async def test_poll_404_on_cold_start_raises_gone(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """Hosted platforms answer 404 with an empty body when tenant headers are missing."""
    platform.then(httpx.Response(404))
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET)))
    assert err.type == ErrorType.GONE


async def test_poll_non_array_answer_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"rows": []}))
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)))))
    assert err.type == ErrorType.TRANSIENT


async def test_poll_network_error_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    platform.then(refuse)
    err = await raises(env.run(platform.acts.poll, PollInput(target=TARGET, cursor=RowPointer(row_id=row_id(1)))))
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


async def test_poll_full_page_of_non_uuid_rows_reads_past_them_from_the_newest(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    """More rows with non-UUID ids than one read returns: ``since_id`` cannot pass them (every read after the
    cursor returns the same page), so the newest rows are read and the message after them is delivered."""
    hostile = [{**inbox_row(n), "id": f"row-{n}"} for n in range(2, 5)]
    platform.then(rows_answer(*hostile), rows_answer(inbox_row(5), *reversed(hostile), inbox_row(1)))
    cursor = RowPointer(row_id=row_id(1), created_at=at(1))
    result = await env.run(platform.acts.poll, PollInput(target=TARGET, cursor=cursor, seeded=True, limit=3))
    first, second = platform.requests
    assert params_of(first)["since_id"] == row_id(1) and "since_id" not in params_of(second)
    assert [r.row_id for r in result.rows] == ["row-2", "row-3", "row-4", row_id(5)]
    assert [r.outcome for r in result.rows] == ["skip", "skip", "skip", "deliver"]
