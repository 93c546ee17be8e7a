"""``check_cursor``: is a row in this workspace's inbox, before the ``set_cursor`` update moves the cursor to it
(docs/protocol.md §3.3: ``since_id`` of a row the platform does not know is a 410)."""

from __future__ import annotations

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.errors import ErrorType
from activities.messages import CheckCursorInput
from tests.unit.platform.fake_platform import TARGET, TOKEN, URL, WS, FakePlatform, inbox_row, params_of, raises, row_id


async def test_check_cursor_known_row_reads_one_row_after_it_and_returns(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(200, json=[inbox_row(8)]))

    assert await env.run(platform.acts.check_cursor, CheckCursorInput(target=TARGET, row_id=row_id(7))) is None

    (request,) = platform.requests
    assert request.method == "GET"
    assert request.url.path == f"/workspaces/{WS}/activity"
    assert str(request.url).startswith(URL)
    assert params_of(request) == {"type": "a2a_receive", "since_id": row_id(7), "limit": "1"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_check_cursor_newest_row_empty_answer_returns(platform: FakePlatform, env: ActivityEnvironment) -> None:
    """Nothing after the newest row: an empty page, still a known row."""
    platform.then(httpx.Response(200, json=[]))

    assert await env.run(platform.acts.check_cursor, CheckCursorInput(target=TARGET, row_id=row_id(7))) is None


async def test_check_cursor_unknown_row_410_raises_permanent_with_advice(
    platform: FakePlatform, env: ActivityEnvironment
) -> None:
    platform.then(httpx.Response(410, json={"error": "since_id not found"}))

    err = await raises(env.run(platform.acts.check_cursor, CheckCursorInput(target=TARGET, row_id=row_id(7))))

    assert err.type == ErrorType.PERMANENT
    assert err.non_retryable
    assert row_id(7) in err.message
    assert "molecule-connect status" in err.message and "--latest" in err.message


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, ErrorType.AUTH), (403, ErrorType.AUTH), (404, ErrorType.GONE), (503, ErrorType.TRANSIENT)],
)
async def test_check_cursor_error_status_raises_its_class(
    platform: FakePlatform, env: ActivityEnvironment, status: int, error_type: ErrorType
) -> None:
    platform.then(httpx.Response(status))

    err = await raises(env.run(platform.acts.check_cursor, CheckCursorInput(target=TARGET, row_id=row_id(7))))

    assert err.type == error_type
    assert err.message.startswith(f"check cursor: HTTP {status}")
    assert TOKEN not in err.message


async def test_check_cursor_non_array_answer_raises_transient(platform: FakePlatform, env: ActivityEnvironment) -> None:
    platform.then(httpx.Response(200, json={"rows": []}))

    err = await raises(env.run(platform.acts.check_cursor, CheckCursorInput(target=TARGET, row_id=row_id(7))))

    assert err.type == ErrorType.TRANSIENT
    assert err.message.startswith("check cursor: ")
