"""Admin API: workspaces, prune (→ cursor 410), faults (docs/architecture.md §5)."""

from __future__ import annotations

import time

import pytest

from devplatform.client import PlatformRequestError
from tests.devplatform.harness import Harness, bearer


async def test_create_workspace_external_poll_awaiting_agent(platform: Harness) -> None:
    ws = await platform.workspace("fresh")
    status = await platform.admin.workspace(ws.id)
    assert (status["runtime"], status["delivery_mode"], status["status"]) == (
        "external",
        "poll",
        "awaiting_agent",
    )
    assert ws.token and ws.token not in repr(ws)


async def test_admin_unknown_workspace_404(platform: Harness) -> None:
    with pytest.raises(PlatformRequestError) as caught:
        await platform.admin.workspace("00000000-0000-0000-0000-000000000000")
    assert caught.value.status_code == 404


async def test_prune_before_row_cursor_410_later_cursor_ok(platform: Harness) -> None:
    """Pruning the cursor row makes the next poll 410; a surviving cursor still pages."""
    ws, peer = await platform.workspace(), await platform.workspace()
    for text in ("a", "b", "c"):
        await platform.send_text(ws.id, text, sender=peer)
    first, second, third = await platform.admin.rows(ws.id)

    assert await platform.admin.prune(ws.id, before_row_id=third["id"]) == 2

    assert (await platform.poll(ws, since_id=first["id"])).status_code == 410
    assert (await platform.poll(ws, since_id=second["id"])).status_code == 410
    after_third = await platform.poll(ws, since_id=third["id"])
    assert (after_third.status_code, after_third.json()) == (200, [])


async def test_prune_older_than_zero_deletes_all_of_workspace(platform: Harness) -> None:
    ws, other, peer = await platform.workspace(), await platform.workspace(), await platform.workspace()
    await platform.send_text(ws.id, "a", sender=peer)
    await platform.send_text(other.id, "b", sender=peer)
    assert await platform.admin.prune(ws.id, older_than_s=0) == 1
    assert await platform.admin.rows(ws.id) == []
    assert len(await platform.admin.rows(other.id)) == 1


async def test_prune_older_than_keeps_recent(clocked: Harness, clock) -> None:
    ws, peer = await clocked.workspace(), await clocked.workspace()
    await clocked.send_text(ws.id, "old", sender=peer)
    clock.advance(3600)
    await clocked.send_text(ws.id, "new", sender=peer)
    assert await clocked.admin.prune(older_than_s=60) == 1
    assert [r["request_body"]["params"]["message"]["parts"][0]["text"] for r in await clocked.admin.rows(ws.id)] == [
        "new"
    ]


async def test_prune_both_bounds_400(platform: Harness) -> None:
    with pytest.raises(PlatformRequestError) as caught:
        await platform.admin.prune(before_row_id="x", older_than_s=1)
    assert caught.value.status_code == 400


async def test_fault_status_once_then_normal(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.add_fault("/workspaces/*/activity", status=503, retry_after=2)

    faulted = await platform.poll(ws)
    normal = await platform.poll(ws)

    assert faulted.status_code == 503
    assert faulted.json() == {"error": "injected fault"}
    assert faulted.headers["Retry-After"] == "2"
    assert normal.status_code == 200
    assert await platform.admin.faults() == []


async def test_fault_count_applies_n_times(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.add_fault(f"/workspaces/{ws.id}/activity", status=500, count=2)
    codes = [(await platform.poll(ws)).status_code for _ in range(3)]
    assert codes == [500, 500, 200]


async def test_fault_unlimited_until_cleared(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.add_fault("/workspaces/*", status=502, count=None, body={"error": "bad gateway"})
    codes = [(await platform.poll(ws)).status_code for _ in range(3)]
    (pending,) = await platform.admin.faults()
    assert codes == [502, 502, 502]
    assert pending["hits"] == 3
    assert await platform.admin.clear_faults() == 1
    assert (await platform.poll(ws)).status_code == 200


async def test_fault_method_and_regex_match(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.add_fault(r"^/registry/heart", status=429, method="POST", retry_after=1)
    other_method = await platform.poll(ws)
    beat = await platform.http.post("/registry/heartbeat", json={"workspace_id": ws.id}, headers=bearer(ws.token))
    assert other_method.status_code == 200
    assert (beat.status_code, beat.headers["Retry-After"]) == (429, "1")


async def test_fault_latency_then_proceeds(platform: Harness) -> None:
    ws = await platform.workspace()
    await platform.admin.add_fault("/workspaces/*/activity", latency_s=0.2)
    started = time.monotonic()
    response = await platform.poll(ws)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_fault_after_phase_row_stored_answer_lost(platform: Harness) -> None:
    """A response lost after the platform stored the row: the retry is deduplicated by messageId."""
    ws, peer = await platform.workspace(), await platform.workspace()
    await platform.admin.add_fault(f"/workspaces/{ws.id}/a2a", status=503, phase="after")

    lost = await platform.send(ws.id, body := _message("reply-1"), sender=peer)
    retried = await platform.send(ws.id, body, sender=peer)

    assert lost.status_code == 503
    assert retried.status_code == 200
    (row,) = await platform.admin.rows(ws.id)
    assert (row["message_id"], row["duplicates"]) == ("reply-1", 1)


async def test_fault_never_applies_to_admin(platform: Harness) -> None:
    await platform.admin.add_fault(".*", status=500, count=None)
    ws = await platform.workspace()
    assert (await platform.admin.workspace(ws.id))["id"] == ws.id


def _message(message_id: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": "r",
        "method": "message/send",
        "params": {"message": {"role": "agent", "messageId": message_id, "parts": [{"kind": "text", "text": "x"}]}},
    }
