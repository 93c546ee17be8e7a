"""One benchmark's world: a Temporal dev server, a devplatform process, workspaces, and a connector worker.

Everything is started fresh for each scenario and torn down after it, so no scenario sees another's
workflows, rows or counters. The dev server is the ``temporal`` binary the connector itself embeds
(:func:`worker.devserver.find_temporal_binary`), in memory, with its Prometheus endpoint on a free port so the
server's own ``action`` counter (the Temporal Cloud billable-action estimate) can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messages import BackendSpec
from benchmarks.machine import REPO_ROOT, child_pids, machine_facts
from benchmarks.platform_process import PlatformProcess
from devplatform.client import AsyncPlatformAdmin, CreatedWorkspace
from worker.assemble import running_worker
from worker.control import start_connector
from worker.devserver import find_temporal_binary
from worker.settings import SEARCH_ATTRIBUTE_PHASE, SEARCH_ATTRIBUTE_WORKSPACE_ID
from workflows.messages import ConnectInput, ConnectSettings

T = TypeVar("T")

SHUTDOWN_GRACE = timedelta(seconds=5)
"""The worker's graceful shutdown at the end of a scenario (poll and heartbeat duties return at once anyway)."""

_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def gather_limited(items: Iterable[T], func: Callable[[T], Awaitable[Any]], *, limit: int = 16) -> list[Any]:
    """``func`` over ``items`` with at most ``limit`` in flight; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with semaphore:
            return await func(item)

    return await asyncio.gather(*(one(item) for item in items))


@dataclass
class Stack:
    """A running Temporal dev server and devplatform, and the workspaces made on it."""

    env: WorkflowEnvironment
    platform: PlatformProcess
    temporal_pid: int | None
    metrics_url: str
    sdk_metrics_url: str
    machine: dict[str, Any]
    task_queue: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> Client:
        """Temporal client (pydantic data converter)."""
        return self.env.client

    @property
    def admin(self) -> AsyncPlatformAdmin:
        """The platform's admin client."""
        assert self.platform.admin is not None
        return self.platform.admin

    def token_for(self, workspace_id: str) -> str:
        """Token lookup for the worker: the tokens of workspaces made by :meth:`workspaces`."""
        try:
            return self.tokens[workspace_id]
        except KeyError:
            raise LookupError(f"no token for workspace {workspace_id}") from None

    async def workspaces(self, prefix: str, count: int) -> list[CreatedWorkspace]:
        """Create ``count`` external workspaces named ``<prefix>-<i>`` and remember their tokens."""

        async def create(index: int) -> CreatedWorkspace:
            created = await self.admin.create_workspace(f"{prefix}-{index}")
            assert created.token is not None
            self.tokens[created.id] = created.token
            return created

        return await gather_limited(range(count), create, limit=16)

    @contextlib.asynccontextmanager
    async def worker(
        self,
        *,
        max_concurrent_activities: int = 200,
        request_budget_per_min: float = 0.0,
        task_queue: str | None = None,
    ) -> AsyncIterator[Worker]:
        """The connector worker (``worker.assemble.running_worker``) in this process, on this stack's task queue.

        Args:
            max_concurrent_activities: Activity slots (two per workspace for its duties, plus dispatches).
            request_budget_per_min: The worker's platform request budget (``activities.budget``). ``0`` (unlimited)
                by default: the benchmark platform has no rate limit, and the baseline has no budget either.
            task_queue: Another task queue than the stack's (a second, separate worker).
        """
        async with running_worker(
            self.client,
            task_queue=task_queue or self.task_queue,
            token_for=self.token_for,
            max_concurrent_activities=max_concurrent_activities,
            graceful_shutdown=SHUTDOWN_GRACE,
            request_budget_per_min=request_budget_per_min,
        ) as worker:
            yield worker

    @contextlib.asynccontextmanager
    async def worker_process(
        self, *, request_budget_per_min: float = 0.0, ready_timeout_s: float = 60.0
    ) -> AsyncIterator[int]:
        """Another connector worker on this stack's task queue, as its own process: ``molecule-connect worker``.

        It gets the tokens of :meth:`workspaces` through a tokens file and this stack's Temporal server through
        ``TEMPORAL_ADDRESS``; its state directory is a temporary one and its budget is not shared. Yields its pid;
        it is stopped with SIGTERM (then SIGKILL) at the end of the block.
        """
        address = self.client.service_client.config.target_host
        with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
            tokens = Path(tmp) / "tokens.json"
            fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(self.tokens))
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                "TEMPORAL_ADDRESS": address,
                "TEMPORAL_NAMESPACE": "default",
                "MOLECULE_TOKENS_FILE": str(tokens),
                "MOLECULE_CONNECT_STATE_DIR": str(Path(tmp) / "state"),
            }
            env.pop("MOLECULE_WORKSPACE_TOKEN", None)
            args = [sys.executable, "-m", "worker.cli", "worker", "--task-queue", self.task_queue]
            args += ["--request-budget", f"{request_budget_per_min:g}", "--no-shared-budget"]
            args += ["--shutdown-grace", f"{SHUTDOWN_GRACE.total_seconds():g}"]
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            assert proc.stderr is not None
            seen: list[bytes] = []
            drain: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(ready_timeout_s):
                    while not any(b"worker running on task queue" in line for line in seen):
                        line = await proc.stderr.readline()
                        if not line:
                            raise RuntimeError(f"worker process exited: {b''.join(seen[-5:])!r}")
                        seen.append(line)
                drain = asyncio.create_task(_drain(proc.stderr))
                yield proc.pid
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), timeout=SHUTDOWN_GRACE.total_seconds() + 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                if drain is not None:
                    drain.cancel()

    def connect_input(
        self, workspace: CreatedWorkspace, settings: dict[str, Any], backend: BackendSpec | None = None
    ) -> ConnectInput:
        """``ConnectInput`` for a workspace on this platform."""
        return ConnectInput(
            workspace_id=workspace.id,
            platform_url=self.platform.url,
            backend=backend or BackendSpec(),
            settings=ConnectSettings(**settings),
        )

    async def start_connectors(
        self,
        workspaces: list[CreatedWorkspace],
        settings: dict[str, Any],
        backend: BackendSpec | None = None,
        *,
        concurrency: int = 16,
        spread_s: float = 0.0,
        task_queue: str | None = None,
    ) -> list[WorkflowHandle[Any, Any]]:
        """Start one ``ConnectWorkflow`` per workspace (``worker.control.start_connector``).

        ``spread_s`` > 0 starts them one by one, evenly over that many seconds: spread over a heartbeat interval,
        their heartbeats fall at every phase, as in a fleet started over time, instead of all at the same instants
        (which a measuring window's edges could then count twice, or miss).
        """

        async def start(workspace: CreatedWorkspace) -> WorkflowHandle[Any, Any]:
            connect_input = self.connect_input(workspace, settings, backend)
            return await start_connector(self.client, connect_input, task_queue=task_queue or self.task_queue)

        if spread_s <= 0:
            return await gather_limited(workspaces, start, limit=concurrency)
        began = time.monotonic()
        handles = []
        for index, workspace in enumerate(workspaces):
            await asyncio.sleep(max(0.0, began + index * spread_s / len(workspaces) - time.monotonic()))
            handles.append(await start(workspace))
        return handles

    async def wait_polling(self, workspace_ids: list[str], *, after: float, timeout_s: float = 300.0) -> float:
        """Wait until every workspace's inbox was read since ``after`` (its cold start is done); return when.

        A message sent after a workspace's first inbox read is delivered (cold start ``latest`` seeds at the newest
        row then), so this is the moment a connector is ready, for the Temporal connector and the baseline alike.
        """
        deadline = time.monotonic() + timeout_s
        pending = set(workspace_ids)
        while pending:
            ready = set()
            for workspace_id in list(pending)[:200]:
                reads = await self.platform.inbox_reads(workspace_id)
                if any(end >= after for _, end, _ in reads):
                    ready.add(workspace_id)
            pending -= ready
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} workspace(s) never polled their inbox within {timeout_s}s")
            await asyncio.sleep(0.2)
        return time.time()

    async def wait_replies(self, peer_id: str, expected: int, *, timeout_s: float, interval_s: float = 0.01) -> float:
        """Wait until ``expected`` messages were accepted for ``peer_id`` (our replies to it); return the time."""
        deadline = time.monotonic() + timeout_s
        while (count := await self.platform.replies(peer_id)) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count}/{expected} replies to {peer_id} after {timeout_s}s")
            await asyncio.sleep(interval_s)
        return time.time()

    async def server_metrics(self) -> dict[str, float]:
        """The dev server's ``action`` counter (namespace ``default``) by ``action_type``.

        Also its frontend requests by ``operation``, as ``requests:<operation>`` keys.
        """
        totals: dict[str, float] = defaultdict(float)
        for name, labels, value in await scrape(self.metrics_url):
            if labels.get("namespace") != "default":
                continue
            if name == "action":
                totals[labels.get("action_type", "?")] += value
            elif name == "service_requests" and labels.get("service_name", "frontend") == "frontend":
                totals[f"requests:{labels.get('operation', '?')}"] += value
        return dict(totals)

    async def sdk_metrics(self) -> dict[str, float]:
        """The worker's SDK metrics, summed over labels.

        Counters and gauges by name; histograms as ``<name>_sum`` and ``<name>_count`` (latencies in milliseconds).
        """
        totals: dict[str, float] = defaultdict(float)
        for name, _labels, value in await scrape(self.sdk_metrics_url):
            if name.endswith("_bucket") or not name.startswith("temporal_"):
                continue
            totals[name] += value
        return dict(totals)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read a child's stderr to its end, so the child never blocks on a full pipe."""
    while await stream.readline():
        pass


async def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every sample on a Prometheus text endpoint."""
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(url)).text
    samples = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        samples.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), value))
    return samples


@contextlib.asynccontextmanager
async def running_stack(
    *, stale_after_s: float | None = None, sweep_every_s: float | None = None, rate_limit_per_min: int = 0
) -> AsyncIterator[Stack]:
    """Start a Temporal dev server (in memory, search attributes registered) and a devplatform process.

    Args:
        stale_after_s: Platform stale window override (``None``: 90 s, production).
        sweep_every_s: Platform sweep period override (``None``: 15 s, production).
        rate_limit_per_min: The platform's per-IP rate limit (production: 600); ``0``: off.
    """
    binary = find_temporal_binary()
    metrics_port, sdk_metrics_port = _free_port(), _free_port()
    # The worker's own metrics (task latencies, slots): the client's runtime serves them, and the worker uses it.
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{sdk_metrics_port}")))
    before = set(child_pids("temporal"))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary),
        data_converter=pydantic_data_converter,
        search_attributes=[SEARCH_ATTRIBUTE_WORKSPACE_ID, SEARCH_ATTRIBUTE_PHASE],
        dev_server_log_level="error",
        dev_server_extra_args=["--metrics-port", str(metrics_port), "--headless"],
        runtime=runtime,
    )
    try:
        started = sorted(set(child_pids("temporal")) - before)
        with tempfile.TemporaryDirectory(prefix="bench-platform-") as tmp:
            async with PlatformProcess(
                Path(tmp) / "platform.db",
                stale_after_s=stale_after_s,
                sweep_every_s=sweep_every_s,
                rate_limit_per_min=rate_limit_per_min,
            ) as platform:
                yield Stack(
                    env=env,
                    platform=platform,
                    temporal_pid=started[0] if started else None,
                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                    sdk_metrics_url=f"http://127.0.0.1:{sdk_metrics_port}/metrics",
                    machine=machine_facts(binary),
                )
    finally:
        await env.shutdown()
