"""classify_response: HTTP status to the docs/protocol.md §2 error classes."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from temporalio.exceptions import ApplicationErrorCategory

from activities.errors import ErrorType, body_excerpt, classify_response, transport_error

TOKEN = "sekret-token-0123456789"


def response(status: int, body: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request(
        "GET",
        "https://platform.test/workspaces/ws-1/activity",
        headers={"Authorization": f"Bearer {TOKEN}", "Origin": "https://platform.test"},
    )
    return httpx.Response(status, text=body, headers=headers or {}, request=request)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425, 429])
def test_classify_response_transient_status_is_retryable(status: int) -> None:
    error = classify_response("poll", response(status, '{"error":"busy"}'))
    assert error.type == ErrorType.TRANSIENT
    assert not error.non_retryable
    assert error.next_retry_delay is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425, 429])
def test_classify_response_transient_retry_after_sets_next_retry_delay(status: int) -> None:
    error = classify_response("poll", response(status, "", {"Retry-After": "15"}))
    assert error.type == ErrorType.TRANSIENT
    assert error.next_retry_delay == timedelta(seconds=15)


def test_classify_response_fractional_retry_after_is_kept() -> None:
    error = classify_response("poll", response(429, "", {"Retry-After": "2.5"}))
    assert error.next_retry_delay == timedelta(seconds=2.5)


@pytest.mark.parametrize("value", ["Wed, 21 Oct 2026 07:28:00 GMT", "soon", ""])
def test_classify_response_unparsable_retry_after_is_ignored(value: str) -> None:
    error = classify_response("poll", response(503, "", {"Retry-After": value}))
    assert error.type == ErrorType.TRANSIENT
    assert error.next_retry_delay is None


def test_classify_response_huge_retry_after_is_capped_at_an_hour() -> None:
    error = classify_response("poll", response(429, "", {"Retry-After": "999999"}))
    assert error.next_retry_delay == timedelta(hours=1)


def test_classify_response_negative_retry_after_is_zero() -> None:
    error = classify_response("poll", response(429, "", {"Retry-After": "-5"}))
    assert error.next_retry_delay == timedelta(0)


@pytest.mark.parametrize("status", [425, 429])
def test_classify_response_rate_limit_is_benign(status: int) -> None:
    """Being told to wait is expected, not an error worth alerting on."""
    assert classify_response("poll", response(status)).category == ApplicationErrorCategory.BENIGN


@pytest.mark.parametrize("status", [500, 503])
def test_classify_response_server_error_is_not_benign(status: int) -> None:
    assert classify_response("poll", response(status)).category == ApplicationErrorCategory.UNSPECIFIED


@pytest.mark.parametrize("status", [501, 520, 599])
def test_classify_response_other_5xx_is_transient(status: int) -> None:
    assert classify_response("poll", response(status)).type == ErrorType.TRANSIENT


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("own_workspace", [True, False])
def test_classify_response_401_403_is_auth_non_retryable(status: int, own_workspace: bool) -> None:
    error = classify_response(
        "poll", response(status, '{"error":"invalid workspace auth token"}'), own_workspace=own_workspace
    )
    assert error.type == ErrorType.AUTH
    assert error.non_retryable


@pytest.mark.parametrize("status", [404, 410])
def test_classify_response_404_410_own_workspace_is_gone(status: int) -> None:
    error = classify_response("poll", response(status))
    assert error.type == ErrorType.GONE
    assert error.non_retryable


@pytest.mark.parametrize("status", [404, 410])
def test_classify_response_404_410_on_peer_is_permanent(status: int) -> None:
    error = classify_response("reply to peer-1", response(status), own_workspace=False)
    assert error.type == ErrorType.PERMANENT
    assert error.non_retryable


@pytest.mark.parametrize("status", [400, 402, 413, 422])
def test_classify_response_other_4xx_is_permanent(status: int) -> None:
    error = classify_response("register", response(status, '{"error":"invalid request body"}'))
    assert error.type == ErrorType.PERMANENT
    assert error.non_retryable


def test_classify_response_message_holds_operation_status_and_body() -> None:
    error = classify_response("register", response(400, '{"error":"invalid request body"}'))
    assert error.message == 'register: HTTP 400 {"error":"invalid request body"}'


def test_classify_response_empty_body_has_no_trailing_space() -> None:
    assert classify_response("poll", response(404)).message == "poll: HTTP 404"


def test_classify_response_long_body_excerpt_is_at_most_200_chars() -> None:
    body = '{"error":"' + "x" * 5000 + '"}'
    error = classify_response("poll", response(500, body))
    excerpt = error.message.removeprefix("poll: HTTP 500 ")
    assert len(excerpt) <= 200
    assert excerpt.startswith('{"error":"xxx')
    assert "x" * 300 not in error.message


def test_classify_response_multiline_body_is_one_line() -> None:
    error = classify_response("poll", response(502, "<html>\n  <body>Bad gateway</body>\n</html>"))
    assert "\n" not in error.message
    assert error.message == "poll: HTTP 502 <html> <body>Bad gateway</body> </html>"


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500])
def test_classify_response_request_token_never_in_message(status: int) -> None:
    error = classify_response("poll", response(status, '{"error":"nope"}', {"Retry-After": "1"}))
    assert TOKEN not in error.message
    assert TOKEN not in str(error)
    assert "Bearer" not in error.message


def test_body_excerpt_limit_is_respected() -> None:
    assert len(body_excerpt(response(500, "y" * 1000), limit=50)) == 50
    assert body_excerpt(response(500, "short")) == "short"
    assert len(body_excerpt(response(500, "z" * 200))) == 200


def test_transport_error_is_transient_and_retryable() -> None:
    error = transport_error("heartbeat", httpx.ConnectError("connection refused"))
    assert error.type == ErrorType.TRANSIENT
    assert not error.non_retryable
    assert error.message == "heartbeat: ConnectError: connection refused"


async def test_transient_without_retry_after_gets_jittered_backoff_by_attempt() -> None:
    """Inside an activity, attempt n waits about 2**(n-1) s (±25 %), capped at 60 s; Retry-After still wins."""
    from temporalio.testing import ActivityEnvironment

    from activities.errors import jittered_backoff

    env = ActivityEnvironment()
    delays = []
    for attempt in (1, 3, 10):
        env.info = env.info.__class__(**{**env.info.__dict__, "attempt": attempt})
        delays.append(env.run(jittered_backoff).total_seconds())
    assert 0.75 <= delays[0] <= 1.25
    assert 3.0 <= delays[1] <= 5.0
    assert 45.0 <= delays[2] <= 75.0
    assert jittered_backoff() is None  # outside an activity: Temporal's own schedule
