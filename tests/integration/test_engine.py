"""End to end: the delivery engine of ConnectWorkflow under load and trouble, on the session Temporal dev server
and a real devplatform: parallel conversation lanes kept in order, a poison message dead-lettered while the others
flow, platform 429s and 503 bursts waited out, oversized messages, and the ping-pong guard."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from activities.inbox import BODY_REF_BYTES
from activities.messages import BackendSpec
from devplatform.client import CreatedWorkspace, text_message
from tests.helpers import Harness, reply_message, reply_text, wait_until
from workflows.messages import StatusResult

POISON_CMD = """sh -c 'x=$(cat); case "$x" in *poison*) sleep 1; exit 3;; esac; echo "$x"'"""
"""Echo, except that a message containing "poison" fails (after a second, so the others visibly overtake it)."""

LANE_BACKEND = """\
import os, random, sys, time
text = sys.stdin.read()
started = time.time()
time.sleep(random.uniform(0.1, 0.4))
with open(sys.argv[1], "a") as log:
    log.write(f"{os.environ['MOLECULE_CONTEXT_ID']} {started!r} {time.time()!r}\\n")
sys.stdout.write(text)
"""
"""Echo after a random 0.1-0.4 s, appending ``<contextId> <start> <end>`` per execution to the log in argv[1]."""


def _in_reply_to(row: dict[str, Any]) -> str:
    return reply_message(row)["metadata"]["in_reply_to"]


async def _status_when(harness: Harness, workspace_id: str, check: Callable[[StatusResult], bool]):
    status = await harness.status(workspace_id)
    return status if check(status) else None


async def _replies_for(
    harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, message_ids: list[str]
) -> list[dict[str, Any]] | None:
    """The agent's replies in the peer's inbox once each of ``message_ids`` has one, else ``None``."""
    replies = await harness.replies_to(peer.id, agent.id)
    return replies if set(message_ids) <= {_in_reply_to(r) for r in replies} else None


def _assert_each_replied_once(replies: list[dict[str, Any]], message_ids: list[str]) -> None:
    """Exactly one reply row per message, and no retried send folded into it by the platform's messageId dedupe."""
    assert sorted(_in_reply_to(r) for r in replies) == sorted(message_ids)
    assert [r["duplicates"] for r in replies] == [0] * len(replies)


@contextlib.asynccontextmanager
async def _sampling_status(harness: Harness, workspace_id: str) -> AsyncIterator[list[StatusResult]]:
    """Query ``status`` every 50 ms in the background; yields the samples collected so far."""
    samples: list[StatusResult] = []

    async def sample() -> None:
        while True:
            with contextlib.suppress(Exception):
                samples.append(await harness.status(workspace_id))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Failure messages of every ``WorkflowTaskFailed`` event in the workflow's history (all runs)."""
    failures = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failures.append(event.workflow_task_failed_event_attributes.failure.message)
    return failures


# --- 1. lanes ---------------------------------------------------------------------------------------------------


async def test_lanes_three_conversations_run_in_parallel_each_replied_in_order(
    harness: Harness, tmp_path: Path
) -> None:
    """Three conversations of five messages each, with a backend of random speed: conversations overlap, yet
    every message is answered once and each conversation's replies land in the order its messages were sent."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    script, log = tmp_path / "lane_backend.py", tmp_path / "executions.log"
    script.write_text(LANE_BACKEND)
    backend = BackendSpec(name="exec", options={"cmd": f"{sys.executable} {script} {log}"})
    sent: dict[str, list[str]] = {f"conv-{c}": [] for c in range(3)}
    texts: dict[str, str] = {}
    async with harness.worker():
        await harness.start(agent, backend, max_concurrency=4)
        for n in range(5):  # interleaved, so every lane has work from the start
            for context_id, ids in sent.items():
                message_id = f"{context_id}-m{n}"
                texts[message_id] = f"{context_id} message {n}"
                await harness.admin.send_text(
                    agent.id, texts[message_id], sender=peer, context_id=context_id, message_id=message_id
                )
                ids.append(message_id)
        all_ids = [m for ids in sent.values() for m in ids]
        replies = await wait_until(
            lambda: _replies_for(harness, peer, agent, all_ids), timeout=30, message="15 replies"
        )

    _assert_each_replied_once(replies, all_ids)
    for row in replies:
        assert reply_text(row) == texts[_in_reply_to(row)]
    for context_id, ids in sent.items():
        in_lane = [_in_reply_to(r) for r in replies if reply_message(r)["contextId"] == context_id]
        assert in_lane == ids, f"replies of {context_id} out of order"
    executions = [line.split() for line in log.read_text().splitlines()]
    assert len(executions) == 15  # each message ran the backend once
    overlapping = [
        (a[0], b[0])
        for a in executions
        for b in executions
        if a[0] != b[0] and float(a[1]) < float(b[2]) and float(b[1]) < float(a[2])
    ]
    assert overlapping, "no two conversations were ever dispatched at the same time"


# --- 2. poison --------------------------------------------------------------------------------------------------


async def test_poison_message_dead_lettered_after_max_attempts_others_keep_flowing(harness: Harness) -> None:
    """A message the backend always fails on is tried ``max_attempts`` times, dead-lettered and answered with an
    error, while the conversations behind it (and the next message of its own conversation) are still served."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": POISON_CMD})
    async with harness.worker():
        await harness.start(agent, backend, max_attempts=2)
        await harness.admin.send_text(agent.id, "a poison pill", sender=peer, context_id="bad", message_id="poison")
        others = {"ok-1": "ok-1-m", "ok-2": "ok-2-m", "bad": "bad-next"}
        for context_id, message_id in others.items():
            await harness.admin.send_text(
                agent.id, f"fine {message_id}", sender=peer, context_id=context_id, message_id=message_id
            )
        all_ids = ["poison", *others.values()]
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, all_ids), message="4 replies")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 3 and not s.pending),
            message="3 replied, nothing pending",
        )

    _assert_each_replied_once(replies, all_ids)
    by_id = {_in_reply_to(r): r for r in replies}
    error = reply_message(by_id["poison"])
    assert error["metadata"]["error"] is True
    assert reply_text(by_id["poison"]).startswith("Sorry")
    assert error["contextId"] == "bad"
    for message_id in others.values():
        assert "error" not in reply_message(by_id[message_id])["metadata"]
        assert reply_text(by_id[message_id]) == f"fine {message_id}"
    # The other conversations were answered while the poison was still being retried; its own lane waited for it.
    seq = {message_id: row["seq"] for message_id, row in by_id.items()}
    assert seq["ok-1-m"] < seq["poison"] and seq["ok-2-m"] < seq["poison"]
    assert seq["poison"] < seq["bad-next"]
    [letter] = status.dead_letters
    assert (letter.message_id, letter.stage, letter.attempts, letter.lane) == ("poison", "dispatch", 2, "ctx:bad")
    assert "status 3" in letter.error
    assert status.counters["dead_lettered"] == 1


# --- 3. platform faults -----------------------------------------------------------------------------------------


async def test_platform_429_with_retry_after_waited_out_never_blocked(harness: Harness) -> None:
    """429 + Retry-After on the inbox read and on the reply is a wait, not a failure: the message is answered once
    and the connector never reports itself blocked."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        async with _sampling_status(harness, agent.id) as samples:
            await harness.admin.add_fault(
                f"/workspaces/{agent.id}/activity", status=429, retry_after=1, count=2, method="GET"
            )
            await harness.admin.add_fault(
                f"/workspaces/{peer.id}/a2a", status=429, retry_after=1, count=2, method="POST"
            )
            await harness.admin.send_text(agent.id, "rate limited", sender=peer, context_id="c", message_id="m-429")
            replies = await wait_until(
                lambda: _replies_for(harness, peer, agent, ["m-429"]), timeout=30, message="reply after 429s"
            )
            assert await harness.admin.faults() == []  # both faults were hit twice: the 429s really happened
            status = await wait_until(
                lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == 1), message="replied"
            )

    _assert_each_replied_once(replies, ["m-429"])
    assert reply_text(replies[0]) == "echo: rate limited"
    assert samples, "status was never sampled"
    assert {s.phase for s in samples} == {"connected"}
    assert all(s.blocked_reason is None for s in samples)
    assert status.counters["dead_lettered"] == 0 and not status.dead_letters


async def test_platform_503_burst_on_inbox_and_replies_loses_nothing(harness: Harness) -> None:
    """A burst of 503s (no Retry-After: exponential backoff) on the inbox read and on replies, while messages keep
    arriving: every message sent during the burst is answered exactly once."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent)
        inbox = await harness.admin.add_fault(f"/workspaces/{agent.id}/activity", status=503, count=4, method="GET")
        await harness.admin.add_fault(f"/workspaces/{peer.id}/a2a", status=503, count=2, method="POST")
        ids = []
        for n in range(3):
            ids.append(f"burst-a{n}")
            await harness.admin.send_text(agent.id, f"a{n}", sender=peer, context_id=f"c{n}", message_id=ids[-1])
        await wait_until(lambda: _fault_hits(harness, inbox, 2), timeout=15, message="the inbox burst under way")
        for n in range(3):
            ids.append(f"burst-b{n}")
            await harness.admin.send_text(agent.id, f"b{n}", sender=peer, context_id=f"c{n}", message_id=ids[-1])
        replies = await wait_until(lambda: _replies_for(harness, peer, agent, ids), timeout=35, message="6 replies")
        status = await harness.status(agent.id)

    _assert_each_replied_once(replies, ids)
    assert await harness.admin.faults() == []
    assert status.counters["dead_lettered"] == 0


async def _fault_hits(harness: Harness, fault_id: int, hits: int) -> bool:
    """Whether fault ``fault_id`` was hit at least ``hits`` times (a used-up fault is no longer listed)."""
    faults = {f["id"]: f for f in await harness.admin.faults()}
    return fault_id not in faults or faults[fault_id]["hits"] >= hits


# --- 4. large messages ------------------------------------------------------------------------------------------


def _payload_sizes(message: Message) -> Iterator[int]:
    """The size in bytes of every ``Payload`` inside a protobuf message (inputs, results, memo, headers...)."""
    if isinstance(message, Payload):
        yield message.ByteSize()
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    yield from _payload_sizes(item)
        elif isinstance(value, Message):
            yield from _payload_sizes(value)
        else:  # a repeated message field
            for item in value:
                yield from _payload_sizes(item)


async def _largest_history_payload(handle: WorkflowHandle[Any, Any]) -> int:
    """The size in bytes of the largest payload in the workflow's history."""
    largest = 0
    async for event in handle.fetch_history_events():
        largest = max(largest, *_payload_sizes(event), 0)
    return largest


async def test_large_messages_1mib_delivered_3mib_settled_without_workflow_task_failure(harness: Harness) -> None:
    """A 1 MiB and a 3 MiB message are delivered by reference (``dispatch`` re-reads the body from the platform):
    no workflow task fails, no body enters history, and the message after them is still delivered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": "wc -c"})
    one_mib, three_mib = "x" * (1 << 20), "y" * (3 << 20)
    async with harness.worker():
        handle = await harness.start(agent, backend)
        await harness.admin.send_text(agent.id, one_mib, sender=peer, context_id="big", message_id="m-1mib")
        replies = await wait_until(
            lambda: _replies_for(harness, peer, agent, ["m-1mib"]), timeout=30, message="1 MiB reply"
        )
        assert reply_text(replies[0]).strip() == str(1 << 20)
        await harness.admin.send_text(agent.id, three_mib, sender=peer, context_id="big", message_id="m-3mib")
        await harness.admin.send_text(agent.id, "after", sender=peer, context_id="small", message_id="m-after")
        replies = await wait_until(
            lambda: _replies_for(harness, peer, agent, ["m-1mib", "m-3mib", "m-after"]),
            timeout=30,
            message="3 MiB delivered and the next message replied",
        )
        status = await harness.status(agent.id)
        failures = await _workflow_task_failures(handle)
        largest_payload = await _largest_history_payload(handle)

    assert failures == []
    by_id = {_in_reply_to(r): r for r in replies}
    assert reply_text(by_id["m-after"]).strip() == "5"
    assert not reply_message(by_id["m-3mib"])["metadata"].get("error")
    assert reply_text(by_id["m-3mib"]).strip() == str(3 << 20)
    assert status.dead_letters == []
    assert largest_payload <= BODY_REF_BYTES + 16 * 1024
    _assert_each_replied_once(replies, ["m-1mib", "m-3mib", "m-after"])


async def test_large_dead_letters_never_block_continue_as_new(harness: Harness) -> None:
    """Eight messages just small enough to be carried whole (and one passed by reference) fail and are
    dead-lettered; their bodies in history make Temporal suggest continue-as-new, and the carried dead letters stay
    small enough to continue (no workflow task fails), so the next message is answered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": POISON_CMD})
    poison = [f"big-poison-{n}" for n in range(9)]
    carried, by_reference = "z" * (BODY_REF_BYTES - 4096), "z" * (1 << 20)
    async with harness.worker():
        handle = await harness.start(agent, backend, max_attempts=1, max_concurrency=1)
        # One at a time, each poison message followed by a good one: each fails while others succeed, so it is
        # dead-lettered (failures of several messages in a row would look like a backend outage instead).
        good = [f"good-{n}" for n in range(len(poison))]
        for n, message_id in enumerate(poison):
            text = "poison " + (by_reference if n == 0 else carried)
            await harness.admin.send_text(agent.id, text, sender=peer, context_id=f"big-{n}", message_id=message_id)
            await harness.admin.send_text(agent.id, "fine", sender=peer, context_id=f"ok-{n}", message_id=good[n])
        await wait_until(lambda: _replies_for(harness, peer, agent, poison), timeout=60, message="error replies")
        await harness.admin.send_text(agent.id, "after", sender=peer, context_id="small", message_id="m-after")
        replies = await wait_until(
            lambda: _replies_for(harness, peer, agent, [*poison, *good, "m-after"]), timeout=30, message="every reply"
        )
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["replied"] == len(good) + 1),
            message="m-after recorded",
        )
        failures = await _workflow_task_failures(handle)

    assert failures == []
    assert status.counters["continued_as_new"] >= 1
    assert status.counters["dead_lettered"] == len(poison)
    _assert_each_replied_once(replies, [*poison, *good, "m-after"])
    assert all(reply_message(r)["metadata"].get("error") for r in replies if _in_reply_to(r) in poison)


# --- 5. ping-pong guard -----------------------------------------------------------------------------------------


async def test_auto_reply_deeper_than_limit_settled_without_dispatch(harness: Harness) -> None:
    """A message marked as an automatic reply deeper than ``max_auto_reply_depth`` is skipped (docs/protocol.md §7),
    while an ordinary message after it is answered."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    async with harness.worker():
        await harness.start(agent, max_auto_reply_depth=4)
        looping = text_message("an automatic answer", context_id="loop", message_id="m-deep")
        looping["params"]["message"]["metadata"] = {"auto_reply": True, "auto_reply_depth": 9}
        await harness.admin.send_message(agent.id, looping, sender=peer)
        await harness.admin.send_text(agent.id, "a person", sender=peer, context_id="loop", message_id="m-human")
        await wait_until(lambda: _replies_for(harness, peer, agent, ["m-human"]), message="reply to m-human")
        status = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["skipped"] >= 1 and not s.pending),
            message="deep auto-reply skipped",
        )
        replies = await harness.replies_to(peer.id, agent.id)

    # The deep one gets one notice (marked as an error reply) instead of an answer; the person's message an answer.
    assert sorted(_in_reply_to(r) for r in replies) == ["m-deep", "m-human"]
    [notice] = [r for r in replies if _in_reply_to(r) == "m-deep"]
    assert reply_message(notice)["metadata"].get("error") and "Automatic replies stopped" in reply_text(notice)
    assert status.counters["skipped"] == 1
    assert status.counters["replied"] == 1
    assert status.counters["received"] == 2
    assert not status.dead_letters
