"""The worker lease (``workflows.lease``, ``activities.lease``) in one process, against the real dev server.

A stand-in ``hold_lease`` lists the connector's workflow once and then stops heartbeating, as a worker that died or
froze would: the lease workflow expires, and the real ``release_sessions`` fails over the session only when it is
started on the lost worker's identity. The SIGKILL and SIGSTOP cases with real worker processes are in
``test_failover.py``.
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from activities.messages import HoldLeaseInput
from tests.helpers import Harness, wait_until
from workflows.lease import LeaseInput, LeaseResult, WorkerLeaseWorkflow


def _frozen_lease(listed: list[str]) -> object:
    @activity.defn(name="hold_lease")
    async def hold_lease(input: HoldLeaseInput) -> str:
        activity.heartbeat([{"workflow_id": w, "run_id": "", "activity_id": "1"} for w in listed])
        await asyncio.sleep(3600)  # never heartbeats again: the lease expires
        return "stopped"

    return hold_lease


async def _lose_lease(harness: Harness, identity: str, listed: list[str]) -> LeaseResult:
    lease_queue = f"{harness.task_queue}/lease-test"
    async with Worker(harness.client, task_queue=lease_queue, activities=[_frozen_lease(listed)]):
        return await harness.client.execute_workflow(
            WorkerLeaseWorkflow.run,
            LeaseInput(
                worker_identity=identity,
                task_queue=harness.task_queue,
                lease_task_queue=lease_queue,
                timeout_s=1,
                release_watch_s=0,
            ),
            id=f"lease-{uuid.uuid4()}",
            task_queue=harness.task_queue,
            result_type=LeaseResult,
        )


async def _worker_lost_starts(client: Client, workflow_id: str) -> int:
    events = (await client.get_workflow_handle(workflow_id).fetch_history()).events
    return sum(
        e.activity_task_started_event_attributes.last_failure.application_failure_info.type == "WorkerLost"
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )


async def test_an_expired_lease_fails_over_the_sessions_started_on_its_worker(harness: Harness) -> None:
    """The session runs on this process's worker (identity ``client.identity``): the expired lease of that identity
    fails it over (``WorkerLost``), Temporal retries it, and the connector goes on answering."""
    ws = await harness.workspace("a")
    peer = await harness.workspace("peer")
    async with harness.worker():
        handle = await harness.start(ws)
        result = await _lose_lease(harness, harness.client.identity, [handle.id, "connect-unknown"])
        assert result.outcome == "lost"
        assert result.released == [handle.id]
        await harness.admin.send_text(ws.id, "still there?", sender=peer)
        await wait_until(lambda: harness.replies_to(peer.id, ws.id), timeout=30, message="a reply after the release")
    assert await _worker_lost_starts(harness.client, handle.id) == 1


async def test_an_expired_lease_leaves_sessions_of_other_workers_alone(harness: Harness) -> None:
    """A lease lists a workflow whose session now runs on another worker: nothing is failed."""
    ws = await harness.workspace("a")
    async with harness.worker():
        handle = await harness.start(ws)
        result = await _lose_lease(harness, "12345@elsewhere", [handle.id])
        assert result == LeaseResult(outcome="lost", released=[])
        status = await harness.status(ws.id)
        assert status.phase == "connected"
    assert await _worker_lost_starts(harness.client, handle.id) == 0


async def test_a_worker_holds_one_lease_while_it_runs_and_none_after(harness: Harness) -> None:
    """``running_worker(lease_timeout_s=...)`` keeps one lease running, listing its sessions; none is left open."""
    ws = await harness.workspace("a")
    query = f"WorkflowType = 'WorkerLeaseWorkflow' AND TaskQueue = '{harness.task_queue}'"

    async def leases(status: WorkflowExecutionStatus) -> list[str]:
        return [e.id async for e in harness.client.list_workflows(query) if e.status == status]

    async with harness.worker(lease_timeout_s=2):
        handle = await harness.start(ws)
        running = await wait_until(lambda: leases(WorkflowExecutionStatus.RUNNING), message="a running lease")
        assert len(running) == 1

        async def lists_the_session() -> bool:
            description = await harness.client.get_workflow_handle(running[0]).describe()
            return any(
                handle.id.encode() in payload.data
                for pending in description.raw_description.pending_activities
                for payload in pending.heartbeat_details.payloads
            )

        await wait_until(lists_the_session, timeout=10, message="the lease listing the session")

    async def none_running() -> bool:
        return await leases(WorkflowExecutionStatus.RUNNING) == []

    await wait_until(none_running, timeout=10, message="no lease left running")
