"""End to end: how ``dispatch`` runs (``ConnectSettings.dispatch_as``) and the reply sent with it.

A local dispatch (``echo`` by default) costs no activity task: its result is a marker in history. A regular dispatch
sends the reply itself, so a message costs one activity. Either way a failing backend is retried ``max_attempts``
times and dead-lettered, a misconfigured one blocks the workspace, and every message is answered once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from activities.messages import BackendSpec
from tests.helpers import Harness, reply_text, wait_until
from tests.integration.test_engine import (
    POISON_CMD,
    _assert_each_replied_once,
    _in_reply_to,
    _replies_for,
    _status_when,
    _workflow_task_failures,
)


async def _history_shape(handle: WorkflowHandle[Any, Any]) -> tuple[Counter[str], int]:
    """``(activity types scheduled, local-activity markers)`` over the workflow's history."""
    scheduled: Counter[str] = Counter()
    markers = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            markers += event.marker_recorded_event_attributes.marker_name == "core_local_activity"
    return scheduled, markers


async def test_echo_dispatches_as_local_activity_no_activity_task_per_message(harness: Harness) -> None:
    """With ``dispatch_as`` left at ``auto``, echo runs as a local activity that also sends the reply: no
    ``dispatch`` or ``reply`` activity is scheduled, each message leaves one marker, and each is answered once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    message_ids = [f"loc-{n}" for n in range(4)]
    async with harness.worker():
        handle = await harness.start(agent)
        for n, message_id in enumerate(message_ids):
            await harness.admin.send_text(
                agent.id, f"hello {n}", sender=peer, context_id=f"c{n % 2}", message_id=message_id
            )
        await harness.admin.send_text(agent.id, "from a human")  # no sender: the canvas
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, message_ids), message="4 replies")
        notes = await wait_until(lambda: harness.notifications(agent.id), message="canvas reply")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 5), message="5 replied"
        )
        scheduled, markers = await _history_shape(handle)

    _assert_each_replied_once(replies, message_ids)
    assert sorted(reply_text(r) for r in replies) == [f"echo: hello {n}" for n in range(4)]
    assert len(notes) == 1
    assert scheduled["dispatch"] == 0 and scheduled["reply"] == 0
    assert markers == 5
    assert status.in_flight == [] and status.dead_letters == []


async def test_activity_dispatch_sends_reply_itself_one_activity_per_message(harness: Harness) -> None:
    """``dispatch_as="activity"``: one ``dispatch`` activity per message, which also sends the reply, so no
    ``reply`` activity is scheduled when the platform accepts it."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    message_ids = [f"act-{n}" for n in range(3)]
    async with harness.worker():
        handle = await harness.start(agent, dispatch_as="activity")
        for message_id in message_ids:
            await harness.admin.send_text(agent.id, message_id, sender=peer, context_id="one", message_id=message_id)
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, message_ids), message="3 replies")
        scheduled, markers = await _history_shape(handle)

    _assert_each_replied_once(replies, message_ids)
    assert [_in_reply_to(r) for r in sorted(replies, key=lambda r: r["seq"])] == message_ids  # one lane, in order
    assert scheduled["dispatch"] == 3 and scheduled["reply"] == 0
    assert markers == 0


async def test_local_dispatch_poison_dead_lettered_after_max_attempts(harness: Harness) -> None:
    """A local dispatch that keeps failing is retried ``max_attempts`` times by the worker, dead-lettered with the
    sender told, while another conversation is answered; no workflow task fails on the way."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": POISON_CMD})
    async with harness.worker():
        handle = await harness.start(agent, backend, dispatch_as="local", max_attempts=2)
        await harness.admin.send_text(agent.id, "a poison pill", sender=peer, context_id="bad", message_id="poison")
        await harness.admin.send_text(agent.id, "fine", sender=peer, context_id="good", message_id="fine")
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, ["poison", "fine"]), message="replies")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["dead_lettered"] == 1 and not s.pending),
            message="poison dead-lettered",
        )
        failures = await _workflow_task_failures(handle)

    _assert_each_replied_once(replies, ["poison", "fine"])
    by_id = {_in_reply_to(r): r for r in replies}
    assert reply_text(by_id["fine"]) == "fine"
    assert reply_text(by_id["poison"]).startswith("Sorry")
    [letter] = status.dead_letters
    assert (letter.message_id, letter.stage, letter.attempts) == ("poison", "dispatch", 2)
    assert "status 3" in letter.error
    assert failures == []


async def test_local_dispatch_unknown_backend_blocks_instead_of_dead_lettering(harness: Harness) -> None:
    """A backend that cannot be created is a misconfiguration: the workspace goes ``blocked`` with the reason and
    the message stays pending (not dead-lettered), as with a regular dispatch."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent, BackendSpec(name="no-such-backend"), dispatch_as="local")
        await harness.admin.send_text(agent.id, "hello", sender=peer, message_id="stuck")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "blocked"), message="phase blocked"
        )

    assert status.blocked_reason is not None and "no-such-backend" in status.blocked_reason
    assert status.counters["dead_lettered"] == 0
    assert status.pending == 1 and status.lanes
