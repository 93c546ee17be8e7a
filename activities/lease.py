"""A worker's liveness lease: the sessions it runs, heartbeated; and failing them over when the lease expires.

A dead worker is otherwise noticed only through each of its ``session`` activities missing its own heartbeat
(timeout ``failover_timeout_s``, ~36 s), one billable heartbeat per workspace and platform beat. A lease notices it
for all of the worker's workspaces at once, from one fast heartbeat per worker (docs/guarantees.md §2):

- :class:`SessionRegistry` (a worker interceptor) keeps the ``session`` activities running on this worker;
- ``hold_lease`` runs on the worker's own lease task queue and heartbeats every few seconds with that list as its
  heartbeat details;
- when it misses its heartbeat timeout, ``WorkerLeaseWorkflow`` (``workflows.lease``) runs ``release_sessions`` on
  a live worker, which fails each listed session that is still started on the lost worker, by id (the async
  activity completion API). Temporal retries the session at once (``PLATFORM_RETRY``'s first interval) on a live
  worker, which beats and reads right away.

A release is checked against the server first (``describe``: the session is still started, on the lost worker), so
a session that has already moved is never failed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.errors import ErrorType
from activities.messages import ActivityName, HeldSession, HoldLeaseInput, ReleaseInput, ReleaseResult
from activities.shutdown import sleep_until_shutdown

logger = logging.getLogger(__name__)

HELD_LIMIT = 5_000
"""At most this many sessions in a lease's heartbeat details (~100 bytes each); more fall back to their own
heartbeat timeout."""

RECENT_S = 600.0
"""A workflow whose session ended on this worker stays in the lease's list this long (seconds)."""

RELEASE_CONCURRENCY = 16
"""``describe`` + fail calls in flight at once while releasing."""


class SessionRegistry(Interceptor):
    """The ``session`` activities on this worker, kept by intercepting activity execution.

    Register it as one of the worker's interceptors; :meth:`held` is what ``hold_lease`` heartbeats. A workflow stays
    listed for :data:`RECENT_S` after its session ends: the next session (a new activity, started when the workflow
    has taken in a read) most likely runs here too, and may start after the lease's last recorded heartbeat.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._running: dict[tuple[str, str, str], HeldSession] = {}
        self._ended: dict[str, tuple[HeldSession, float]] = {}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Track ``session`` executions; other activities pass through."""
        return _Tracking(next, self)

    def started(self, session: HeldSession) -> tuple[str, str, str]:
        """Record a session that started on this worker; returns its key for :meth:`ended`."""
        key = (session.workflow_id, session.run_id, session.activity_id)
        self._running[key] = session
        self._ended.pop(session.workflow_id, None)
        return key

    def ended(self, key: tuple[str, str, str]) -> None:
        """Record that the session ended (it stays listed for :data:`RECENT_S`)."""
        session = self._running.pop(key, None)
        if session is not None:
            self._ended[session.workflow_id] = (session, self._clock())

    def held(self) -> list[HeldSession]:
        """Running sessions, then those ended in the last :data:`RECENT_S`; one per workflow, at most a limit.

        The limit is :data:`HELD_LIMIT`.
        """
        now = self._clock()
        for workflow_id, (_, at) in list(self._ended.items()):
            if now - at > RECENT_S:
                del self._ended[workflow_id]
        listed = {s.workflow_id: s for s in self._running.values()}
        for workflow_id, (session, _) in self._ended.items():
            listed.setdefault(workflow_id, session)
        return list(listed.values())[:HELD_LIMIT]


class _Tracking(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, registry: SessionRegistry) -> None:
        super().__init__(next)
        self._registry = registry

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.activity_type != ActivityName.SESSION or info.is_local or not info.workflow_id:
            return await super().execute_activity(input)
        key = self._registry.started(
            HeldSession(workflow_id=info.workflow_id, run_id=info.workflow_run_id or "", activity_id=info.activity_id)
        )
        try:
            return await super().execute_activity(input)
        finally:
            self._registry.ended(key)


class LeaseActivities:
    """``hold_lease`` (on a worker's lease task queue) and ``release_sessions`` (on the connectors' task queue)."""

    def __init__(self, registry: SessionRegistry | None = None) -> None:
        self._registry = registry or SessionRegistry()
        self.dropped = asyncio.Event()
        """Set when ``hold_lease`` ends while the worker runs on (cancelled: the server expired it while this worker
        was frozen or cut off): the worker then takes a new lease at once (``worker.lease``)."""

    @activity.defn(name=ActivityName.HOLD_LEASE)
    async def hold_lease(self, input: HoldLeaseInput) -> str:
        """Heartbeat this worker's sessions until the worker shuts down, or ``hold_for_s`` has passed.

        Heartbeats every fifth of the heartbeat timeout; the SDK sends at most one per 80 % of it, with the newest
        details, so the server's list lags the worker's by at most that.

        Returns:
            ``"stopped"`` when the worker shuts down; ``"renew"`` after ``hold_for_s``.

        Raises:
            asyncio.CancelledError: The lease workflow was cancelled, or the server no longer knows this attempt
                (it expired while this worker was frozen).
        """
        timeout = activity.info().heartbeat_timeout
        period = max(0.2, timeout.total_seconds() / 5) if timeout else 1.0
        deadline = time.monotonic() + input.hold_for_s
        try:
            while time.monotonic() < deadline:
                activity.heartbeat([session.model_dump() for session in self._registry.held()])
                if await sleep_until_shutdown(min(period, max(0.0, deadline - time.monotonic()))):
                    return "stopped"
        except asyncio.CancelledError:
            if not activity.is_worker_shutdown():
                self.dropped.set()
            raise
        return "renew"

    @activity.defn(name=ActivityName.RELEASE_SESSIONS)
    async def release_sessions(self, input: ReleaseInput) -> ReleaseResult:
        """Fail over the sessions a lost worker held: each one still started on it is failed by id and retried.

        Then looks again every ``recheck_s`` for ``watch_s`` at the workflows it released: a frozen worker's open
        task polls may be handed a retried session, which is then released again. (After a crash the connections
        are closed and the looks find nothing.) One ``describe`` per listed workflow, then one per released
        workflow and look.

        Returns:
            The workflow ids released, and how many releases in all.
        """
        client = activity.client()
        released: list[str] = []
        releases = 0
        watch_until = time.monotonic() + input.watch_s
        looking_at = [s.workflow_id for s in input.sessions]
        while True:
            outcomes = await _bounded(client, looking_at, input.worker_identity)
            for workflow_id, done in zip(looking_at, outcomes, strict=True):
                if done:
                    releases += 1
                    if workflow_id not in released:
                        released.append(workflow_id)
            activity.heartbeat(releases)
            looking_at = list(released)
            if not released or time.monotonic() >= watch_until or await sleep_until_shutdown(input.recheck_s):
                break
        if releases:
            activity.logger.info(
                "failed over %d session(s) of lost worker %s",
                releases,
                input.worker_identity,
                extra={"released": released},
            )
        return ReleaseResult(released=released, releases=releases)


async def _bounded(client: Client, workflow_ids: list[str], worker_identity: str) -> list[bool]:
    """:func:`_release` for each workflow, :data:`RELEASE_CONCURRENCY` at a time."""
    limit = asyncio.Semaphore(RELEASE_CONCURRENCY)

    async def one(workflow_id: str) -> bool:
        async with limit:
            return await _release(client, workflow_id, worker_identity)

    return await asyncio.gather(*(one(workflow_id) for workflow_id in workflow_ids))


async def _release(client: Client, workflow_id: str, worker_identity: str) -> bool:
    """Fail the workflow's ``session`` if it is started on ``worker_identity``; whether one was failed.

    The workflow's current run is looked at (a run that continued as new hands its sessions to the next one). A
    workflow that is gone, or a session that completed meanwhile, is not an error.
    """
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
        for pending in description.raw_description.pending_activities:
            if (
                pending.activity_type.name == ActivityName.SESSION
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                and pending.last_worker_identity == worker_identity
            ):
                handle = client.get_async_activity_handle(
                    workflow_id=workflow_id, run_id=description.run_id, activity_id=pending.activity_id
                )
                await handle.fail(
                    ApplicationError(f"worker {worker_identity} lost its lease", type=ErrorType.WORKER_LOST)
                )
                return True
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            activity.logger.warning("could not release the session of %s: %s", workflow_id, err.message)
    return False
