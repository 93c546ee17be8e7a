"""Dead letters are never dropped without an operator's action (docs/guarantees.md, dead letters).

Hundreds of dead letters, made before and after a continue-as-new, are all kept, paged through with the
``dead_letters`` query and redriven; a full queue stops new work (``blocked``) instead of evicting the oldest; and
the answers kept for redrive never grow the carried state past Temporal's payload limit. On a real Temporal dev
server and a real devplatform.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import workflows.state
from activities.inbox import BODY_REF_BYTES
from activities.messages import BackendSpec
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from devplatform.server import RunningPlatform
from tests.helpers import Harness, new_task_queue, reply_message, wait_until
from worker import control
from worker.devserver import find_temporal_binary
from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID, workflow_id
from workflows.connect import ConnectWorkflow
from workflows.messages import DeadLetterList, DeadLetterPage, DeadLetterSummary, StatusResult


async def _status_when(harness: Harness, workspace_id: str, check: Any) -> StatusResult | None:
    try:
        status = await harness.status(workspace_id)
    except control.ConnectorError:
        # A connector whose workflow task keeps failing answers no query: say why, rather than "no answer".
        handle = harness.client.get_workflow_handle(workflow_id(workspace_id))
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_task_failed_event_attributes"):
                failure = event.workflow_task_failed_event_attributes.failure.message
                raise AssertionError(f"the connector's workflow task fails: {failure}") from None
        raise
    return status if check(status) else None


async def _good_replies(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace) -> Counter[str]:
    """Non-error replies per inbound messageId, a send the platform folded into an earlier one (``duplicates``)
    counted too."""
    counts: Counter[str] = Counter()
    for row in await harness.replies_to(peer.id, agent.id):
        metadata = reply_message(row).get("metadata") or {}
        if not metadata.get("error"):
            counts[metadata["in_reply_to"]] += 1 + int(row.get("duplicates") or 0)
    return counts


async def _answered(harness: Harness, peer: CreatedWorkspace, agent: CreatedWorkspace, ids: list[str]) -> Any:
    counts = await _good_replies(harness, peer, agent)
    return counts if all(counts[m] for m in ids) else None


async def _row_ids(harness: Harness, workspace_id: str, message_ids: list[str]) -> list[str]:
    by_message = {r.get("message_id"): str(r["id"]) for r in await harness.admin.rows(workspace_id)}
    return [by_message[m] for m in message_ids]


async def _all_pages(handle: Any, page_size: int) -> tuple[list[DeadLetterSummary], list[int]]:
    """Every dead letter through the ``dead_letters`` query, ``page_size`` at a time; also each page's total."""
    letters: list[DeadLetterSummary] = []
    totals: list[int] = []
    while True:
        page: DeadLetterList = await handle.query(
            ConnectWorkflow.dead_letters, DeadLetterPage(offset=len(letters), limit=page_size)
        )
        totals.append(page.total)
        letters.extend(page.letters)
        if not page.letters:
            return letters, totals


async def test_hundreds_of_dead_letters_across_continue_as_new_paged_and_all_redriven(
    harness: Harness, tmp_path: Path
) -> None:
    """A peer refuses every reply (400) while 200 of its messages are answered, and ten poison messages fail
    between good ones; big messages in between make Temporal suggest continue-as-new. All 210 dead letters are
    kept (none evicted), the ``dead_letters`` query pages through them oldest first, and once the peer and the
    agent are fixed a redrive answers every one exactly once (refused replies resent as stored, poison messages
    re-read from the platform and run again)."""
    agent = await harness.workspace("agent")
    refusing, peer = await harness.workspace("refusing-peer"), await harness.workspace("peer")
    fixed = tmp_path / "fixed"
    script = f'x=$(cat); case "$x" in poison*) test -f {shlex.quote(str(fixed))} || exit 3;; esac; printf %s "$x"'
    backend = BackendSpec(name="exec", options={"cmd": f"sh -c {shlex.quote(script)}"})
    refused = [f"r-{n}" for n in range(200)]
    poison = [f"p-{n}" for n in range(10)]
    good = [f"g-{n}" for n in range(10)]
    big = [f"big-{n}" for n in range(10)]
    await harness.admin.add_fault(
        f"/workspaces/{refusing.id}/a2a", method="POST", status=400, count=None, body={"error": "agent card invalid"}
    )
    # Unlimited platform requests: the worker's default budget (480 a minute) would pace this test, not dead letters.
    async with harness.worker(request_budget_per_min=0):
        handle = await harness.start(agent, backend, max_attempts=1, max_concurrency=16)

        # Wave 1: half the refused replies, and big messages whose bodies in history make Temporal suggest
        # continue-as-new.
        for n, message_id in enumerate(refused[:100]):
            await harness.admin.send_text(
                agent.id, f"hello {n}", sender=refusing, context_id=f"c-{n % 20}", message_id=message_id
            )
        for message_id in big:
            await harness.admin.send_text(
                agent.id, "z" * (BODY_REF_BYTES - 4096), sender=peer, context_id=message_id, message_id=message_id
            )
        await wait_until(
            lambda: _status_when(
                harness, agent.id, lambda s: s.counters["continued_as_new"] >= 1 and s.dead_letters_total == 100
            ),
            timeout=120,
            interval=0.5,
            message="100 dead letters, then continue-as-new",
        )
        # Wave 2, in the next run: the other half, and poison messages each followed by a good one in their
        # conversation (a failure among successes is the message's fault, not an outage).
        for n, message_id in enumerate(refused[100:], start=100):
            await harness.admin.send_text(
                agent.id, f"hello {n}", sender=refusing, context_id=f"c-{n % 20}", message_id=message_id
            )
        for p, g in zip(poison, good, strict=True):
            await harness.admin.send_text(agent.id, f"poison {p}", sender=peer, context_id="c-mixed", message_id=p)
            await harness.admin.send_text(agent.id, f"good {g}", sender=peer, context_id="c-mixed", message_id=g)
        full = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.dead_letters_total == 210 and not s.pending),
            timeout=120,
            interval=0.5,
            message="210 dead letters",
        )
        letters, totals = await _all_pages(handle, page_size=64)

        await harness.admin.clear_faults()
        fixed.touch()
        redriven = await control.redrive(harness.client, agent.id, None)
        await wait_until(
            lambda: _answered(harness, refusing, agent, refused), timeout=120, interval=0.5, message="refused resent"
        )
        await wait_until(
            lambda: _answered(harness, peer, agent, [*poison, *good, *big]), timeout=60, message="poison answered"
        )
        final = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: not s.pending and s.dead_letters_total == 0),
            message="nothing pending",
        )

    assert full.dead_letters_evicted == 0
    assert totals == [210] * len(totals) and len(totals) == 5  # 64 + 64 + 64 + 18, then an empty page
    expected_rows = await _row_ids(harness, agent.id, [*refused, *poison])
    assert sorted(d.row_id for d in letters) == sorted(expected_rows)
    assert [d.dead_lettered_at for d in letters] == sorted(d.dead_lettered_at for d in letters), "not oldest first"
    assert [d.row_id for d in full.dead_letters] == [d.row_id for d in letters[-len(full.dead_letters) :]]
    stages = Counter(d.stage for d in letters)
    assert stages == {"reply": 200, "dispatch": 10}
    assert redriven.count == 210
    assert await _good_replies(harness, refusing, agent) == {m: 1 for m in refused}
    assert await _good_replies(harness, peer, agent) == {m: 1 for m in [*poison, *good, *big]}
    assert final.counters["redriven"] == 210
    assert final.dead_letters_evicted == 0


async def test_full_dead_letter_queue_blocks_new_work_instead_of_evicting(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for three dead letters (the limit lowered from 10,000), a fourth failure does not evict the
    oldest: the connector shows ``blocked: dead-letter queue full``, stops reading the inbox, and keeps all three;
    after a redrive makes room it carries on and every message is answered once."""
    monkeypatch.setattr(workflows.state, "DEAD_LETTER_LIMIT", 3)
    agent = await harness.workspace("agent")
    refusing, peer = await harness.workspace("refusing-peer"), await harness.workspace("peer")
    refused = [f"r-{n}" for n in range(5)]
    fault = {"method": "POST", "status": 400, "count": None, "body": {"error": "agent card invalid"}}
    await harness.admin.add_fault(f"/workspaces/{refusing.id}/a2a", **fault)
    async with harness.worker():
        await harness.start(agent, max_concurrency=1)
        for n, message_id in enumerate(refused):
            await harness.admin.send_text(agent.id, f"hi {n}", sender=refusing, context_id="c", message_id=message_id)
        blocked = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "blocked"), message="blocked, queue full"
        )
        # New mail is not read while blocked: a message sent now waits.
        await harness.admin.send_text(agent.id, "later", sender=peer, context_id="c-later", message_id="m-later")
        still = await harness.status(agent.id)

        await harness.admin.clear_faults()
        await control.redrive(harness.client, agent.id, None)
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.phase == "connected" and s.dead_letters_total),
            message="room made, the waiting failure dead-lettered",
        )
        await control.redrive(harness.client, agent.id, None)
        await wait_until(lambda: _answered(harness, refusing, agent, refused), message="all refused answered")
        await wait_until(lambda: _answered(harness, peer, agent, ["m-later"]), message="the later message answered")
        final = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: not s.pending and not s.dead_letters_total),
            message="nothing left",
        )

    assert "dead-letter queue full" in (blocked.blocked_reason or "")
    assert blocked.dead_letters_total == 3 and blocked.dead_letters_evicted == 0
    first_three = await _row_ids(harness, agent.id, refused[:3])
    assert [d.row_id for d in blocked.dead_letters] == first_three
    assert [d.row_id for d in still.dead_letters] == first_three
    assert still.counters["received"] == len(refused)  # the later message was not read while blocked
    assert await _good_replies(harness, refusing, agent) == {m: 1 for m in refused}
    assert await _good_replies(harness, peer, agent) == {"m-later": 1}
    assert final.dead_letters_evicted == 0


LATE_CONTINUE_AS_NEW_BYTES = 8 << 20
"""History size at which the server of :func:`late_harness` suggests continue-as-new (default 4 MiB)."""


@pytest_asyncio.fixture
async def late_harness(platform: RunningPlatform, admin: AsyncPlatformAdmin) -> AsyncIterator[Harness]:
    """A harness on its own dev server that suggests continue-as-new only at 8 MiB of history, so a run can hold
    more dead letters than the default 4 MiB allows before it continues as new."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        data_converter=pydantic_data_converter,
        search_attributes=[SEARCH_ATTRIBUTE_WORKSPACE_ID, SEARCH_ATTRIBUTE_PHASE],
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            f"limit.historySize.suggestContinueAsNew={LATE_CONTINUE_AS_NEW_BYTES}",
        ],
    )
    try:
        yield Harness(client=env.client, task_queue=new_task_queue(), platform=platform, admin=admin)
    finally:
        await env.shutdown()


async def test_refused_large_replies_kept_for_redrive_never_break_continue_as_new(late_harness: Harness) -> None:
    """A peer refuses (400) 300 replies of ~15 KB each that do not compress (the agent answers with encoded data):
    each is dead-lettered at the reply stage, and their history (8 MiB) makes Temporal suggest continue-as-new.
    The carried state must still fit one payload: the connector continues as new, answers the next message, and
    a redrive gets every refused message answered once."""
    harness = late_harness
    agent = await harness.workspace("agent")
    refusing, peer = await harness.workspace("refusing-peer"), await harness.workspace("peer")
    backend = BackendSpec(name="exec", options={"cmd": "sh -c 'head -c 11000 /dev/urandom | base64 -w0'"})
    refused = [f"r-{n}" for n in range(300)]
    await harness.admin.add_fault(
        f"/workspaces/{refusing.id}/a2a", method="POST", status=400, count=None, body={"error": "agent card invalid"}
    )
    async with harness.worker(request_budget_per_min=0):
        handle = await harness.start(agent, backend, max_concurrency=16)
        for n, message_id in enumerate(refused):
            await harness.admin.send_text(
                agent.id, f"hi {n}", sender=refusing, context_id=f"c-{n % 16}", message_id=message_id
            )
        await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.dead_letters_total == len(refused) and not s.pending),
            timeout=120,
            interval=0.5,
            message="every reply dead-lettered",
        )
        await harness.admin.send_text(agent.id, "after", sender=peer, context_id="c-after", message_id="m-after")
        await wait_until(lambda: _answered(harness, peer, agent, ["m-after"]), timeout=60, message="m-after answered")
        continued = await wait_until(
            lambda: _status_when(harness, agent.id, lambda s: s.counters["continued_as_new"] >= 1),
            timeout=60,
            message="continued as new",
        )
        await harness.admin.clear_faults()
        await control.redrive(harness.client, agent.id, None)
        await wait_until(
            lambda: _answered(harness, refusing, agent, refused), timeout=120, interval=0.5, message="all redriven"
        )
        failures = [
            event
            async for event in handle.fetch_history_events()
            if event.HasField("workflow_task_failed_event_attributes")
        ]

    assert failures == []
    assert continued.dead_letters_total == len(refused) and continued.dead_letters_evicted == 0
    assert await _good_replies(harness, refusing, agent) == {m: 1 for m in refused}
