"""End to end: ConnectWorkflow on a real Temporal dev server, delivering real messages from a real devplatform."""

from __future__ import annotations

from tests.helpers import Harness, reply_message, wait_until


async def test_peer_message_v03_reply_lands_in_peer_inbox_as_agent_message(harness: Harness) -> None:
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        await harness.admin.send_text(agent.id, "ping", sender=peer, context_id="conv-1", message_id="m-1")
        replies = await wait_until(lambda: harness.replies_to(peer.id, agent.id), message="reply in peer inbox")
    assert len(replies) == 1
    message = reply_message(replies[0])
    assert message["role"] == "agent"
    assert message["contextId"] == "conv-1"
    assert message["parts"] == [{"kind": "text", "text": "echo: ping"}]
    assert message["metadata"]["in_reply_to"] == "m-1"
    assert replies[0]["request_body"]["method"] == "message/send"


async def test_canvas_message_replied_via_notify_and_echo_row_never_dispatched(harness: Harness) -> None:
    agent = await harness.workspace("agent")
    async with harness.worker():
        await harness.start(agent)
        await harness.admin.send_text(agent.id, "hello from a human")
        notes = await wait_until(lambda: harness.notifications(agent.id), message="notify row")
        # The notify echo row lands in our own inbox: it must be skipped, never dispatched.
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["skipped"] >= 1), message="echo skipped"
        )
    assert notes[0]["response_body"] == {"result": "echo: hello from a human"}
    assert status.counters["replied"] == 1
    assert len(await harness.notifications(agent.id)) == 1


async def _status_when(harness: Harness, workspace_id: str, check):
    status = await harness.status(workspace_id)
    return status if check(status) else None
