"""Holding a worker's liveness lease while it runs (``workflows.lease``, ``activities.lease``).

:func:`holding_lease` runs, for the duration of a block, a second SDK worker on this process's own lease task queue
(``<task queue>/lease-<random>``) that serves only ``hold_lease``, and keeps one ``WorkerLeaseWorkflow`` running for
this worker on the connectors' task queue: when a lease ends while the worker still runs (it was frozen past the
timeout, and its sessions were failed over), a new one is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.lease import LeaseActivities
from workflows.lease import LeaseInput, LeaseResult, WorkerLeaseWorkflow

logger = logging.getLogger(__name__)

LEASE_WORKFLOW_PREFIX = "molecule-connect-lease-"
"""Workflow id prefix of leases: ``molecule-connect-lease-<random>``."""

RESTART_DELAY_S = 5.0
"""Wait before taking a new lease after one ended or could not be started."""


@contextlib.asynccontextmanager
async def holding_lease(
    client: Client, *, task_queue: str, leases: LeaseActivities, timeout_s: float
) -> AsyncIterator[str]:
    """Hold a lease for this process's worker on ``task_queue`` for the ``async with`` block.

    Enter it before the connectors' worker and leave it after (so the lease outlives the sessions). On leaving, a
    lease still open is terminated (its workflow would otherwise wait for a worker to record ``stopped``).

    Args:
        client: The worker's client; its ``identity`` is the worker's (what pending activities report).
        task_queue: The connectors' task queue; the lease workflow runs there.
        leases: The activities, holding the worker's ``SessionRegistry``.
        timeout_s: The lease's heartbeat timeout in seconds.

    Yields:
        The lease task queue.
    """
    lease_queue = f"{task_queue}/lease-{uuid.uuid4().hex[:12]}"
    input = LeaseInput(
        worker_identity=client.identity, task_queue=task_queue, lease_task_queue=lease_queue, timeout_s=timeout_s
    )
    lease_worker = Worker(client, task_queue=lease_queue, activities=[leases.hold_lease], max_concurrent_activities=2)
    current: list[WorkflowHandle[WorkerLeaseWorkflow, LeaseResult]] = []
    async with lease_worker:
        keeper = asyncio.create_task(_keep_lease(client, input, leases, current), name="worker-lease")
        try:
            yield lease_queue
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
    for handle in current[-1:]:
        with contextlib.suppress(RPCError, asyncio.TimeoutError):
            await asyncio.wait_for(handle.terminate(reason=f"worker {client.identity} stopped"), timeout=5)


async def _keep_lease(
    client: Client,
    input: LeaseInput,
    leases: LeaseActivities,
    current: list[WorkflowHandle[WorkerLeaseWorkflow, LeaseResult]],
) -> None:
    """Keep one lease workflow running for this worker; log how each one ended.

    A lease whose activity this worker stopped holding (``LeaseActivities.dropped``) is replaced at once: its
    workflow may still be failing over the sessions it listed for a minute.
    """
    while True:
        leases.dropped.clear()
        try:
            handle = await client.start_workflow(
                WorkerLeaseWorkflow.run,
                input,
                id=f"{LEASE_WORKFLOW_PREFIX}{uuid.uuid4().hex[:12]}",
                task_queue=input.task_queue,
                static_summary=f"lease of worker {input.worker_identity} on {input.task_queue}",
                execution_timeout=None,
                task_timeout=timedelta(seconds=10),
            )
            current.append(handle)
            logger.info("holding lease %s (timeout %g s)", handle.id, input.timeout_s)
            result = await _until_ended(handle, leases.dropped)
        except RPCError as err:
            logger.warning("could not hold a worker lease: %s; trying again", err.message)
        except Exception as err:  # the lease workflow failed or was terminated: take a new one
            logger.warning("worker lease ended: %s; taking a new one", err)
        else:
            if result is None:
                logger.warning(
                    "this worker lost its lease (unreachable for over %g s: its sessions moved to other workers); "
                    "taking a new one",
                    input.timeout_s,
                )
                continue
            logger.warning("worker lease ended %s; taking a new one", result.outcome)
        await asyncio.sleep(RESTART_DELAY_S)


async def _until_ended(
    handle: WorkflowHandle[WorkerLeaseWorkflow, LeaseResult], dropped: asyncio.Event
) -> LeaseResult | None:
    """The lease workflow's result, or ``None`` as soon as this worker dropped its activity."""
    result = asyncio.ensure_future(handle.result())
    drop = asyncio.ensure_future(dropped.wait())
    try:
        await asyncio.wait({result, drop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        drop.cancel()
        if not result.done():
            result.cancel()
    return result.result() if result.done() and not result.cancelled() else None
