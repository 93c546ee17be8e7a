"""Ping-pong guard (PROTOCOL.md §7): automatic replies are capped per conversation, so two auto-responders stop."""

from __future__ import annotations

from devplatform.client import text_message
from tests.helpers import Harness, wait_until


def auto_reply(text: str, depth: int) -> dict:
    body = text_message(text, context_id="loop")
    body["params"]["message"]["metadata"] = {"auto_reply": True, "auto_reply_depth": depth}
    return body


async def test_auto_replies_over_rate_cap_settled_without_dispatch(harness: Harness) -> None:
    """Five automatic replies in one conversation, cap 2 per minute: two are answered, three skipped."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent, max_auto_replies_per_minute=2)
        for n in range(5):
            await harness.admin.send_message(agent.id, auto_reply(f"auto {n}", depth=1), sender=peer)
        status = await wait_until(lambda: _settled(harness, agent.id, 5), message="five messages settled")
        # A human's message in the same conversation is never capped.
        await harness.admin.send_text(agent.id, "a human again", sender=peer, context_id="loop")
        await wait_until(lambda: _replied(harness, peer.id, agent.id, 3), message="human message answered")
    assert status.counters["replied"] == 2
    assert status.counters["skipped"] == 3
    texts = [
        r["request_body"]["params"]["message"]["parts"][0]["text"] for r in await harness.replies_to(peer.id, agent.id)
    ]
    assert texts == ["echo: auto 0", "echo: auto 1", "echo: a human again"]
    assert all(
        r["request_body"]["params"]["message"]["metadata"]["auto_reply_depth"] >= 1
        for r in await harness.replies_to(peer.id, agent.id)
    )


async def _settled(harness: Harness, workspace_id: str, n: int):
    status = await harness.status(workspace_id)
    return status if status.counters["replied"] + status.counters["skipped"] >= n else None


async def _replied(harness: Harness, peer_id: str, agent_id: str, n: int) -> bool:
    return len(await harness.replies_to(peer_id, agent_id)) >= n
