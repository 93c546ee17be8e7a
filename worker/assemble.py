"""Worker assembly: one ``httpx.AsyncClient``, the activities and ``ConnectWorkflow`` on one task queue.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the worker also traces with OpenTelemetry (``worker.tracing``).

Used by every command that runs a worker (``run``, ``worker``, ``demo``) and by the tests, so production and tests
run the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Worker

from activities.budget import DEFAULT_BURST, DEFAULT_PER_MINUTE
from activities.dispatch import DispatchActivities
from activities.lease import LeaseActivities, SessionRegistry
from activities.planner import RequestBudgets
from activities.platform import PlatformActivities, TokenLookup
from worker.budget_share import BudgetShareError, HostBudgetShare
from worker.http import platform_client
from worker.lease import holding_lease
from worker.tracing import worker_interceptors
from workflows.connect import ConnectWorkflow
from workflows.lease import WorkerLeaseWorkflow

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
"""Platform calls: a read over 30 s is a hung platform (long-polling happens in our loop, not the server's). On the
default aiohttp transport (worker/http.py) ``pool`` bounds the pool wait and connect together, and ``write`` is not
applied."""
HTTP_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=32)
"""Connections to the platform, shared by every connector of the worker. Platform calls take milliseconds (the long
poll waits in our loop, not on a socket), so 32 carry hundreds of workspaces (500 in the fleet benchmark). On httpx's
own transport (``MOLECULE_CONNECT_HTTP_TRANSPORT=httpx``) more would cost CPU, as httpcore checks every pooled
connection on each request (7.5 → 7.0 ms of worker CPU per message at 50 workspaces when capped, RESULTS.md)."""


def metrics_runtime(port: int, host: str = "127.0.0.1") -> Runtime:
    """An SDK runtime exporting Prometheus metrics on ``host:port`` (``/metrics``); loopback unless ``host`` says.

    It carries the SDK's own metrics (workflow/activity task latencies, slots, polls) and the connector's
    ``molecule_connect_*`` counters, pending gauge and delivery latency histogram, labelled by ``workspace_id``.

    Raises:
        ValueError: The address cannot be bound (the SDK's "Failed starting Prometheus exporter: ...").
    """
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}")))


def agent_version() -> str:
    """This distribution's version, sent as ``agent_card.version``."""
    try:
        return metadata.version("molecule-connect-temporal")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    *,
    task_queue: str,
    token_for: TokenLookup,
    org_id: str | None = None,
    max_concurrent_activities: int = 200,
    graceful_shutdown: timedelta = timedelta(seconds=30),
    request_budget_per_min: float = DEFAULT_PER_MINUTE,
    request_burst: int = DEFAULT_BURST,
    interceptors: Sequence[Interceptor] | None = None,
    budget_share_dir: Path | None = None,
    lease_timeout_s: float | None = None,
) -> AsyncIterator[Worker]:
    """Run a connector worker for the duration of the ``async with`` block.

    Args:
        client: Connected Temporal client (with the pydantic data converter).
        task_queue: Task queue to serve (default elsewhere: ``molecule-connect``).
        token_for: Token lookup by workspace id; tokens never leave this process except in request headers.
        org_id: ``X-Molecule-Org-Id`` for hosted platforms.
        max_concurrent_activities: Activity slots; each connected workspace holds one (its session) plus one
            per in-flight dispatch.
        graceful_shutdown: How long in-flight activities may finish when the block exits.
        request_budget_per_min: Platform requests per minute shared by every connector of this worker, per platform
            (``activities.budget``); ``0`` means unlimited.
        request_burst: Requests that may start at once after a quiet spell (the token bucket's size).
        interceptors: Worker interceptors; ``None`` means those tracing needs when the ``OTEL_*`` environment turns
            it on (``worker.tracing.worker_interceptors``), else none. They go on the worker, not the client, so
            commands that only query or signal connectors never trace.
        budget_share_dir: Share the request budget with the other workers using this directory (those of this host:
            ``worker.budget_share``); ``None``: this worker uses the whole budget.
        lease_timeout_s: Hold a liveness lease with this heartbeat timeout (``workflows.lease``): when this worker
            dies, its sessions move to another worker within about this plus ~2 s. ``None``: no lease; a session
            moves after its own heartbeat timeout (``failover_timeout_s``). Every worker can run a lost worker's
            release, with or without a lease of its own.

    Yields:
        The running ``Worker``.
    """
    budgets = RequestBudgets(per_minute=request_budget_per_min, burst=request_burst)
    http = platform_client(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS)
    platform = PlatformActivities(http, token_for, org_id=org_id, agent_version=agent_version(), budgets=budgets)
    dispatch = DispatchActivities(platform)
    registry = SessionRegistry()
    leases = LeaseActivities(registry)
    chosen = worker_interceptors() if interceptors is None else interceptors
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[ConnectWorkflow, WorkerLeaseWorkflow],
        activities=[
            leases.release_sessions,
            platform.register,
            platform.session,
            platform.check_cursor,
            platform.reply,
            dispatch.dispatch,
            # Replaced by ``session``; connectors started before it still call them until they continue as new.
            platform.heartbeat,
            platform.poll,
        ],
        max_concurrent_activities=max_concurrent_activities,
        graceful_shutdown_timeout=graceful_shutdown,
        interceptors=[*chosen, registry] if lease_timeout_s else chosen,
    )
    share = await _join_budget_share(budgets, budget_share_dir)
    share_task = asyncio.create_task(share.run(), name="budget-share") if share is not None else None
    try:
        async with contextlib.AsyncExitStack() as stack:
            if lease_timeout_s:
                await stack.enter_async_context(
                    holding_lease(client, task_queue=task_queue, leases=leases, timeout_s=lease_timeout_s)
                )
            await stack.enter_async_context(worker)
            yield worker
    finally:
        if share_task is not None and share is not None:
            share_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await share_task
            share.close()
        await dispatch.close()
        await http.aclose()


async def _join_budget_share(budgets: RequestBudgets, directory: Path | None) -> HostBudgetShare | None:
    """Join the host's shared request budget; without it (no directory, unlimited budget, an error) ``None``."""
    if directory is None or budgets.per_minute <= 0:
        return None
    share = HostBudgetShare(budgets, directory)
    try:
        await asyncio.to_thread(share.start)
    except BudgetShareError as err:
        logger.warning("%s; this worker plans with its whole request budget: split it by hand (--request-budget)", err)
        return None
    return share
