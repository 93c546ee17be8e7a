"""Ping-pong guard (docs/protocol.md §7): automatic exchanges are counted on our side, so two auto-responders stop
even when neither copies the other's ``auto_reply_depth`` metadata (as the Go CLI and the SDK do not)."""

from __future__ import annotations

from devplatform.client import text_message
from tests.helpers import Harness, reply_message, reply_text, wait_until


def agent_message(text: str) -> dict:
    """What another agent's connector sends: ``role: agent``, no ``auto_reply_depth`` copied."""
    body = text_message(text, context_id="loop")
    body["params"]["message"]["role"] = "agent"
    return body


async def test_two_auto_responders_stop_after_the_limit_and_tell_each_other_once(harness: Harness) -> None:
    """Two echo connectors answer each other: each stops after ``max_auto_reply_depth`` automatic exchanges."""
    a, b = await harness.workspace("a"), await harness.workspace("b")
    async with harness.worker():
        await harness.start(a, max_auto_reply_depth=3)
        await harness.start(b, max_auto_reply_depth=3)
        # A person in b's workspace writes to a; from then on the two connectors talk to each other.
        await harness.admin.send_text(a.id, "hello", sender=b, context_id="loop")
        await wait_until(lambda: _quiet(harness, a.id, b.id), timeout=60, message="the loop to stop")
        to_b = await harness.replies_to(b.id, a.id)
        to_a = await harness.replies_to(a.id, b.id)

    notices = [r for r in to_a + to_b if "Automatic replies stopped" in reply_text(r)]
    assert len(notices) >= 1 and all(reply_message(n)["metadata"].get("error") for n in notices)
    # Bounded: a handful of exchanges each way, not an endless loop.
    assert len(to_b) <= 3 + 2 and len(to_a) <= 3 + 2


async def test_agent_messages_past_the_limit_skipped_then_a_person_resets_it(harness: Harness) -> None:
    """Role-agent messages are automatic: past the limit they are skipped (one notice); a person starts again."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent, max_auto_reply_depth=2)
        for n in range(5):
            await harness.admin.send_message(agent.id, agent_message(f"auto {n}"), sender=peer)
        status = await wait_until(lambda: _settled(harness, agent.id, 5), message="five messages settled")
        # A person on the canvas writes in the same conversation: not automatic, so the count starts again.
        await harness.admin.send_text(agent.id, "a human again", context_id="loop")
        await wait_until(lambda: harness.notifications(agent.id), message="human message answered")
        texts = [reply_text(r) for r in await harness.replies_to(peer.id, agent.id)]
        [notification] = await harness.notifications(agent.id)
        await harness.admin.send_message(agent.id, agent_message("auto 5"), sender=peer)
        await wait_until(lambda: _replied(harness, peer.id, agent.id, 4), message="agent answered again")
        after = [reply_text(r) for r in await harness.replies_to(peer.id, agent.id)]

    assert status.counters["replied"] == 2
    assert status.counters["skipped"] == 3
    assert texts[:2] == ["echo: auto 0", "echo: auto 1"]
    assert "Automatic replies stopped" in texts[2] and len(texts) == 3
    assert notification["response_body"]["result"] == "echo: a human again"
    assert after[3] == "echo: auto 5"


async def _quiet(harness: Harness, a_id: str, b_id: str) -> bool:
    statuses = [await harness.status(a_id), await harness.status(b_id)]
    return all(s.counters["skipped"] >= 1 and not s.pending and not s.in_flight for s in statuses)


async def _settled(harness: Harness, workspace_id: str, n: int):
    status = await harness.status(workspace_id)
    return status if status.counters["replied"] + status.counters["skipped"] >= n else None


async def _replied(harness: Harness, peer_id: str, agent_id: str, n: int) -> bool:
    return len(await harness.replies_to(peer_id, agent_id)) >= n
