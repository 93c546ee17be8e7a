"""``WorkerLeaseWorkflow``: one per ``molecule-connect worker`` process, so a dead worker's workspaces move fast.

The worker starts it on the connectors' task queue when it starts (``worker.assemble``). Its ``hold_lease``
activity runs on the worker's own lease task queue, so only that worker can hold it, and heartbeats every few
seconds with the sessions the worker runs as details (``activities.lease``). When the worker dies or freezes the
activity misses its heartbeat timeout (``LeaseInput.timeout_s``); the workflow, run by any live worker, then runs
``release_sessions`` with the last list, which fails those sessions over (Temporal retries each at once on a live
worker), and ends ``lost``. A worker stopping gracefully ends its lease ``stopped``.

The cost is the lease's heartbeats, about ``3600 / (0.8 × timeout_s)`` billable actions an hour per worker whatever
its number of workspaces (750 at the default 6 s), against a message after a worker's death waiting up to the
session's own heartbeat timeout (36 s) without it (docs/guarantees.md §2). Running leases list the live workers:
``WorkflowType = 'WorkerLeaseWorkflow' AND ExecutionStatus = 'Running'``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from activities.messages import ActivityName, HeldSession, HoldLeaseInput, Model, ReleaseInput, ReleaseResult

LEASE_TIMEOUT_S = 6.0
"""Default heartbeat timeout of a worker's lease: a dead worker's sessions move within about this plus ~2 s."""

HOLD_FOR = timedelta(days=1)
"""A lease activity returns after this long and the workflow continues as new."""

START_TIMEOUT = timedelta(minutes=1)
"""A lease no worker took within this (the worker died as it started) ends ``never held``."""


class LeaseInput(Model):
    """Input of ``WorkerLeaseWorkflow``."""

    worker_identity: str
    """The worker's Temporal identity (``pid@host``), as its activities' ``last_worker_identity`` shows it."""
    task_queue: str
    """The connectors' task queue the worker serves (this workflow runs there)."""
    lease_task_queue: str
    """The worker's own task queue, where only it runs ``hold_lease``."""
    timeout_s: float = Field(default=LEASE_TIMEOUT_S, ge=1, le=600)
    """Heartbeat timeout of ``hold_lease``, in seconds."""
    release_watch_s: float = Field(default=75.0, ge=0, le=120)
    """After failing the lost worker's sessions over, keep doing so this long (``ReleaseInput.watch_s``)."""


class LeaseResult(Model):
    """How a lease ended."""

    outcome: Literal["stopped", "lost", "never held", "failed"]
    """``stopped``: the worker shut down. ``lost``: it missed its heartbeat timeout (dead or frozen) and its sessions
    were released. ``never held``: no worker took the lease. ``failed``: the lease activity failed otherwise."""
    released: list[str] = Field(default_factory=list)
    """``lost``: the workflow ids whose session was failed over."""
    detail: str = ""


@workflow.defn
class WorkerLeaseWorkflow:
    """A worker's liveness lease; on expiry, fails its sessions over to live workers (module docstring)."""

    @workflow.run
    async def run(self, input: LeaseInput) -> LeaseResult:
        """Hold the lease until the worker stops (``stopped``) or misses its heartbeat timeout (``lost``)."""
        try:
            outcome = await workflow.execute_activity(
                ActivityName.HOLD_LEASE,
                HoldLeaseInput(hold_for_s=HOLD_FOR.total_seconds()),
                result_type=str,
                task_queue=input.lease_task_queue,
                schedule_to_start_timeout=START_TIMEOUT,
                start_to_close_timeout=HOLD_FOR + timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=input.timeout_s),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START:
                return LeaseResult(outcome="never held")
            if isinstance(cause, TimeoutError):
                return await self._release(input, cause.last_heartbeat_details)
            workflow.logger.warning("lease of %s failed: %s", input.worker_identity, cause)
            return LeaseResult(outcome="failed", detail=str(cause))
        if outcome == "renew":
            workflow.continue_as_new(input)
        return LeaseResult(outcome="stopped")

    async def _release(self, input: LeaseInput, details: Any) -> LeaseResult:
        sessions = [HeldSession.model_validate(held) for held in (details[0] if details else [])]
        workflow.logger.warning(
            "worker %s missed its lease heartbeat; failing over its %d session(s)",
            input.worker_identity,
            len(sessions),
        )
        result = await workflow.execute_activity(
            ActivityName.RELEASE_SESSIONS,
            ReleaseInput(worker_identity=input.worker_identity, sessions=sessions, watch_s=input.release_watch_s),
            result_type=ReleaseResult,
            start_to_close_timeout=timedelta(minutes=3),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return LeaseResult(outcome="lost", released=result.released)


__all__ = ["LEASE_TIMEOUT_S", "LeaseInput", "LeaseResult", "WorkerLeaseWorkflow"]
