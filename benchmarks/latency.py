"""Latency: one workspace, ``echo`` backend, messages paced one at a time; platform enqueue → reply stored.

For each poll interval (the connector's default 1 s, and a short one where the poll wait nearly vanishes) and each
implementation (the Temporal connector, then the plain-loop baseline on a fresh workspace of the same platform):

1. start it and wait for its first inbox read (cold start done);
2. send ``warmup`` messages, then ``messages`` measured ones, one at a time: wait a random time in
   ``[0, poll interval)`` (so messages land at random points of the poll cycle, not just after a read), send
   from a peer workspace, wait until the platform accepted the reply;
3. read the timings back from the platform (:mod:`benchmarks.deliveries`): latency, the poll wait, and the
   overhead beyond it.

The Temporal connector runs with its default settings except ``poll_interval_s`` and the ping-pong guard: the
benchmark's peer is a script that writes again within a second of each reply, which the guard counts as an
automatic exchange and would stop after ``max_auto_reply_depth`` of them (docs/protocol.md §7), so
``AUTOMATIC_EXCHANGES_ALLOWED`` lifts it. The baseline reads on a fixed ticker of the same period. Nothing here
asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from benchmarks.baseline_loop import running_baseline
from benchmarks.deliveries import collect, summary_ms
from benchmarks.machine import CpuWindow
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, running_stack
from devplatform.client import CreatedWorkspace

AUTOMATIC_EXCHANGES_ALLOWED = 1_000_000
"""``max_auto_reply_depth`` of the measured connector: one paced conversation is hundreds of quick exchanges."""

IMPLEMENTATIONS = ("temporal", "baseline")


@dataclass(frozen=True)
class LatencyParams:
    """Parameters of the latency scenario."""

    messages: int = 200
    """Measured messages per implementation and poll interval."""
    warmup: int = 5
    """Messages sent first and not measured."""
    poll_interval_s: float = 1.0
    """The main poll interval (the connector's default)."""
    fast_poll_interval_s: float | None = 0.2
    """A second, short interval at which the poll wait nearly vanishes (``None``: skip)."""
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    jitter: bool = True
    """Wait a random time in ``[0, poll interval)`` before each send."""
    request_budget_per_min: float = 0.0
    """The worker's platform request budget; ``0``: unlimited (the benchmark platform has no rate limit)."""
    reply_timeout_s: float = 60.0
    """How long one message may take before the run fails."""
    seed: int = 6


@contextlib.asynccontextmanager
async def serving(
    stack: Stack, implementation: str, agents: list[CreatedWorkspace], settings: dict[str, Any], **options: Any
) -> AsyncIterator[list[WorkflowHandle[Any, Any]]]:
    """Serve ``agents`` with the Temporal connector or the baseline for the block; wait until they poll.

    Yields the connectors' workflow handles (none for the baseline).

    Temporal connectors are terminated at the end, so a later worker on the same task queue does not resume them.

    Args:
        stack: The world.
        implementation: ``temporal`` or ``baseline``.
        agents: Workspaces to serve.
        settings: ``ConnectSettings`` fields (the baseline uses ``poll_interval_s`` only).
        options: ``max_concurrent_activities`` and ``request_budget_per_min`` for the worker, ``backend`` (a
            ``BackendSpec``) for both.
    """
    started = time.time()
    ids = [a.id for a in agents]
    backend = options.get("backend")
    if implementation == "temporal":
        handles: list[WorkflowHandle[Any, Any]] = []
        try:
            async with stack.worker(
                max_concurrent_activities=options.get("max_concurrent_activities", 200),
                request_budget_per_min=options.get("request_budget_per_min", 0.0),
            ):
                handles = await stack.start_connectors(agents, settings, backend)
                await stack.wait_polling(ids, after=started)
                yield handles
        finally:
            # After the worker stopped (its duties returned), so no activity completes into a closed workflow.
            await asyncio.gather(*(h.terminate("benchmark done") for h in handles), return_exceptions=True)
    elif implementation == "baseline":
        with tempfile.TemporaryDirectory(prefix="bench-baseline-") as state_dir:
            async with running_baseline(
                stack.platform.url,
                agents,
                state_dir=Path(state_dir),
                backend=backend,
                poll_interval_s=settings.get("poll_interval_s", 1.0),
            ):
                await stack.wait_polling(ids, after=started)
                yield []
    else:
        raise ValueError(f"unknown implementation {implementation!r} (known: {', '.join(IMPLEMENTATIONS)})")


async def _paced_run(stack: Stack, implementation: str, interval_s: float, params: LatencyParams) -> dict[str, Any]:
    rng = random.Random(params.seed)
    agent, peer = await stack.workspaces(f"latency-{implementation}", 1), await stack.workspaces("peer", 1)
    agent_id, peer_id = agent[0].id, peer[0].id
    window = CpuWindow({"worker_process": None, "temporal_server": stack.temporal_pid, "platform": stack.platform.pid})
    async with serving(
        stack,
        implementation,
        agent,
        {"poll_interval_s": interval_s, "max_auto_reply_depth": AUTOMATIC_EXCHANGES_ALLOWED},
        request_budget_per_min=params.request_budget_per_min,
    ):
        for index in range(params.warmup + params.messages):
            if index == params.warmup:
                window.start()
                measured_from = time.time()
            if params.jitter:
                await asyncio.sleep(rng.uniform(0, interval_s))
            await stack.admin.send_text(agent_id, f"ping {index}", sender=peer[0], context_id="latency")
            await stack.wait_replies(peer_id, index + 1, timeout_s=params.reply_timeout_s, interval_s=0.005)
        resources = window.stop()
    deliveries = [d for d in await collect(stack, [agent_id], peer_id) if d.received >= measured_from]
    return {
        "implementation": implementation,
        "poll_interval_s": interval_s,
        **summary_ms(deliveries),
        "resources": resources,
    }


async def run(params: LatencyParams) -> Result:
    """Run the scenario on a fresh stack and return its figures (see the module docstring)."""
    started = time.monotonic()
    intervals = [params.poll_interval_s] + ([params.fast_poll_interval_s] if params.fast_poll_interval_s else [])
    runs: list[dict[str, Any]] = []
    async with running_stack() as stack:
        for interval in intervals:
            for implementation in params.implementations:
                runs.append(await _paced_run(stack, implementation, interval, params))
        machine = stack.machine

    def pick(implementation: str, interval: float, metric: str, stat: str) -> float | None:
        for r in runs:
            if r["implementation"] == implementation and r["poll_interval_s"] == interval:
                return r[metric][stat]
        return None

    figures = []
    for interval in intervals:
        label = f"poll {interval:g} s"
        for stat in ("p50", "p95", "p99"):
            ours, base = pick("temporal", interval, "latency_ms", stat), pick("baseline", interval, "latency_ms", stat)
            target, meets = None, None
            if stat == "p50":
                target = "≤ 1.25× baseline"
                meets = None if ours is None or base is None else ours <= 1.25 * base
            figures.append(Figure(f"latency {stat} ({label})", "ms", ours, base, target, meets))
        ours, base = pick("temporal", interval, "overhead_ms", "p50"), pick("baseline", interval, "overhead_ms", "p50")
        figures.append(
            Figure(
                f"overhead beyond poll wait p50 ({label})",
                "ms",
                ours,
                base,
                "≤ 100 ms",
                None if ours is None else ours <= 100,
            )
        )
        ours, base = pick("temporal", interval, "overhead_ms", "p95"), pick("baseline", interval, "overhead_ms", "p95")
        figures.append(Figure(f"overhead beyond poll wait p95 ({label})", "ms", ours, base))
        ours = pick("temporal", interval, "poll_wait_ms", "p50")
        base = pick("baseline", interval, "poll_wait_ms", "p50")
        figures.append(Figure(f"poll wait p50 ({label})", "ms", ours, base, note="expected ≈ interval / 2"))
    return Result(
        scenario="latency",
        params=asdict(params),
        machine=machine,
        figures=figures,
        details={"runs": runs},
        notes=[
            "latency = reply row created_at − inbound row created_at (platform clock); poll wait = start of the first "
            "inbox read that returned the row − inbound created_at; overhead = latency − poll wait.",
            "Each send waits a random time in [0, poll interval) so messages land at random points of the poll cycle.",
            "The devplatform runs in its own process; the worker (or the baseline loop) runs in the benchmark process.",
        ],
        wall_s=time.monotonic() - started,
    )
