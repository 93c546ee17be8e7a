"""GET/POST /workspaces/{id}/activity: the inbox (docs/protocol.md §3.3, §3.6, §4)."""

from __future__ import annotations

import re
import uuid

import pytest

from devplatform.routes.workspaces import parse_limit
from tests.devplatform.harness import ROW_TIMESTAMP, FakeClock, Harness, bearer


async def texts(h: Harness, ws, **params) -> list[str]:
    response = await h.poll(ws, **params)
    assert response.status_code == 200, response.text
    return [row["request_body"]["params"]["message"]["parts"][0]["text"] for row in response.json()]


async def test_inbox_without_cursor_newest_first(platform: Harness) -> None:
    ws, peer = await platform.workspace("me"), await platform.workspace("peer")
    for text in ("one", "two", "three"):
        await platform.send_text(ws.id, text, sender=peer)
    assert await texts(platform, ws, type="a2a_receive") == ["three", "two", "one"]


async def test_inbox_with_cursor_strictly_after_oldest_first(platform: Harness) -> None:
    ws, peer = await platform.workspace("me"), await platform.workspace("peer")
    for text in ("one", "two", "three", "four"):
        await platform.send_text(ws.id, text, sender=peer)
    oldest_first = list(reversed((await platform.poll(ws)).json()))

    assert await texts(platform, ws, since_id=oldest_first[0]["id"]) == ["two", "three", "four"]
    assert await texts(platform, ws, since_id=oldest_first[1]["id"], limit=1) == ["three"]
    assert await texts(platform, ws, since_id=oldest_first[-1]["id"]) == []


async def test_inbox_same_timestamp_ordered_by_seq(clocked: Harness) -> None:
    """A frozen clock gives every row the same created_at; seq keeps the arrival order."""
    ws, peer = await clocked.workspace("me"), await clocked.workspace("peer")
    for text in ("a", "b", "c"):
        await clocked.send_text(ws.id, text, sender=peer)
    rows = list(reversed((await clocked.poll(ws)).json()))
    assert len({row["created_at"] for row in rows}) == 1
    assert [row["seq"] for row in rows] == sorted(row["seq"] for row in rows)
    assert await texts(clocked, ws, since_id=rows[0]["id"]) == ["b", "c"]


async def test_inbox_row_shape_matches_protocol(platform: Harness) -> None:
    ws, peer = await platform.workspace("My WS"), await platform.workspace("peer")
    await platform.send_text(ws.id, "ping", sender=peer, context_id="ctx")
    (row,) = (await platform.poll(ws)).json()
    assert set(row) == {
        "id", "workspace_id", "activity_type", "source_id", "target_id", "method", "summary", "status",
        "created_at", "seq", "request_body",
    }  # fmt: skip
    assert row["workspace_id"] == row["target_id"] == ws.id
    assert row["source_id"] == peer.id
    assert row["activity_type"] == "a2a_receive"
    assert row["method"] == "message/send"
    assert row["summary"] == "message/send → My WS (queued for poll)"
    assert row["status"] == "ok"
    assert re.match(ROW_TIMESTAMP, row["created_at"])
    assert uuid.UUID(row["id"])
    assert row["request_body"]["params"]["message"]["contextId"] == "ctx"


async def test_inbox_unknown_cursor_410(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.poll(ws, since_id=str(uuid.uuid4()))
    assert response.status_code == 410
    assert response.json()["error"].startswith("since_id cursor not found (")
    assert response.json()["error"].endswith("omit since_id to reset")


async def test_inbox_capability_probe_410(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.poll(ws, since_id="00000000-0000-0000-0000-000000000000", limit=1)
    assert response.status_code == 410


async def test_inbox_other_workspace_cursor_410(platform: Harness) -> None:
    """A cursor from another inbox is 410, never that inbox's rows."""
    ws, other, peer = (
        await platform.workspace("me"),
        await platform.workspace("other"),
        await platform.workspace(),
    )
    await platform.send_text(other.id, "secret", sender=peer)
    await platform.send_text(other.id, "secret 2", sender=peer)
    foreign = (await platform.poll(other)).json()[-1]["id"]
    response = await platform.poll(ws, since_id=foreign)
    assert response.status_code == 410


@pytest.mark.parametrize("cursor", ["not-a-uuid", "42", "5c0e"])
async def test_inbox_non_uuid_cursor_500_cursor_lookup_failed(platform: Harness, cursor: str) -> None:
    ws = await platform.workspace()
    response = await platform.poll(ws, since_id=cursor)
    assert response.status_code == 500
    assert response.json() == {"error": "cursor lookup failed"}


async def test_inbox_uppercase_cursor_accepted(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send_text(ws.id, "a", sender=peer)
    await platform.send_text(ws.id, "b", sender=peer)
    first = (await platform.poll(ws)).json()[-1]["id"]
    assert await texts(platform, ws, since_id=first.upper()) == ["b"]


async def test_inbox_since_secs_filters_and_stays_desc(clocked: Harness, clock: FakeClock) -> None:
    ws, peer = await clocked.workspace(), await clocked.workspace()
    await clocked.send_text(ws.id, "old", sender=peer)
    clock.advance(120)
    await clocked.send_text(ws.id, "new", sender=peer)
    await clocked.send_text(ws.id, "newer", sender=peer)

    assert await texts(clocked, ws, since_secs=60) == ["newer", "new"]
    assert await texts(clocked, ws, since_secs=600) == ["newer", "new", "old"]


async def test_inbox_since_secs_capped_at_30_days(clocked: Harness, clock: FakeClock) -> None:
    ws, peer = await clocked.workspace(), await clocked.workspace()
    await clocked.send_text(ws.id, "ancient", sender=peer)
    clock.advance(31 * 24 * 3600)
    await clocked.send_text(ws.id, "recent", sender=peer)
    assert await texts(clocked, ws, since_secs=10**9) == ["recent"]


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5"])
async def test_inbox_bad_since_secs_400(platform: Harness, value: str) -> None:
    ws = await platform.workspace()
    response = await platform.poll(ws, since_secs=value)
    assert response.status_code == 400
    assert response.json() == {"error": "since_secs must be a positive integer"}


@pytest.mark.parametrize(("raw", "expected"), [(None, 100), ("abc", 100), ("0", 100), ("-3", 100), ("7", 7),
                                               ("500", 500), ("501", 500), ("100000", 500)])  # fmt: skip
def test_parse_limit_defaults_and_caps(raw: str | None, expected: int) -> None:
    assert parse_limit(raw) == expected


async def test_inbox_limit_bad_value_silently_default(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    for text in ("a", "b", "c"):
        await platform.send_text(ws.id, text, sender=peer)
    assert len(await texts(platform, ws, limit="abc")) == 3
    assert len(await texts(platform, ws, limit=0)) == 3
    assert await texts(platform, ws, limit=2) == ["c", "b"]


async def test_inbox_source_filter_canvas_and_agent(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send_text(ws.id, "from human")
    await platform.send_text(ws.id, "from agent", sender=peer)
    assert await texts(platform, ws, source="canvas") == ["from human"]
    assert await texts(platform, ws, source="agent") == ["from agent"]
    bad = await platform.poll(ws, source="robot")
    assert bad.status_code == 400


async def test_inbox_type_filter_exact(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send_text(ws.id, "hi", sender=peer)
    logged = await platform.http.post(
        f"/workspaces/{ws.id}/activity",
        json={"activity_type": "agent_log", "summary": "thinking"},
        headers=bearer(ws.token),
    )
    assert logged.status_code == 200
    types = [row["activity_type"] for row in (await platform.poll(ws)).json()]
    assert types == ["agent_log", "a2a_receive"]
    assert [r["activity_type"] for r in (await platform.poll(ws, type="a2a_receive")).json()] == ["a2a_receive"]
    assert (await platform.poll(ws, type="nonsense")).json() == []


async def test_inbox_null_bodies_omitted(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.http.post(
        f"/workspaces/{ws.id}/activity", json={"activity_type": "task_update"}, headers=bearer(ws.token)
    )
    (row,) = (await platform.poll(ws)).json()
    assert "request_body" not in row
    assert "response_body" not in row


async def test_inbox_empty_is_empty_array(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.poll(ws, type="a2a_receive")
    assert response.status_code == 200
    assert response.content == b"[]"


async def test_report_activity_unknown_type_400(platform: Harness) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/activity", json={"activity_type": "gossip"}, headers=bearer(ws.token)
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "activity_type",
    ["a2a_send", "a2a_receive", "task_update", "agent_log", "skill_promotion", "memory_write", "error"],
)
async def test_report_activity_allowed_types_stored(platform: Harness, activity_type: str) -> None:
    ws = await platform.workspace()
    response = await platform.http.post(
        f"/workspaces/{ws.id}/activity",
        json={"activity_type": activity_type, "request_body": {"k": 1}, "status": "error"},
        headers=bearer(ws.token),
    )
    assert response.status_code == 200
    (row,) = (await platform.poll(ws)).json()
    assert row["id"] == response.json()["id"]
    assert (row["activity_type"], row["request_body"], row["status"]) == (activity_type, {"k": 1}, "error")


async def test_inbox_admin_token_may_read(platform: Harness) -> None:
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.send_text(ws.id, "hi", sender=peer)
    assert len(await platform.admin.inbox(ws.id)) == 1
