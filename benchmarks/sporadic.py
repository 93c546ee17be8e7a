"""Sporadic: one workspace whose messages come after silences of 30 s to 5 min; the first message's latency.

Real conversations arrive after quiet spells, and a connector that reads a quiet inbox less often answers them
late. Side by side on one stack, at one poll interval, with the platform's rate limit on (600/min per IP, as in
production):

- for each backend (``echo``, and ``exec`` sleeping 0.2 s), one workspace served by the Temporal connector, alone on
  its own worker with the default request budget (``activities.planner``), and one served by the plain-loop
  baseline (``benchmarks.baseline_loop``); ``replicas`` such sets, for more samples per silence (each connector
  still alone on its worker);
- ``messages`` times: a random silence in ``[min_silence_s, max_silence_s]``, then one message to each workspace
  (the four of a set at once, the sets :data:`REPLICA_GAP_S` apart), and a wait for every reply;
- at the end, after one more silence, a burst of ``burst`` messages over 8 conversations to both ``exec``
  workspaces: how long after a silence a burst takes to clear (the connector runs 4 lanes, the baseline one).

Latency, poll wait and overhead come from the platform's clock (:mod:`benchmarks.deliveries`). The targets: the
connector's p50 at most 1.2× the baseline's, its p95 at most the poll interval + 300 ms.
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

from activities.budget import DEFAULT_PER_MINUTE
from activities.messages import BackendSpec
from benchmarks.baseline_loop import running_baseline
from benchmarks.deliveries import Delivery, collect, summary_ms
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, running_stack
from benchmarks.stats import summarize
from devplatform.client import CreatedWorkspace, text_message


@dataclass(frozen=True)
class SporadicParams:
    """Parameters of the sporadic scenario."""

    messages: int = 24
    """Messages per workspace, each after a silence."""
    min_silence_s: float = 30.0
    max_silence_s: float = 300.0
    poll_interval_s: float = 1.0
    backend_delay_s: float = 0.2
    """How long the ``exec`` backend sleeps before answering."""
    burst: int = 40
    """Messages in the closing burst to each ``exec`` workspace (``0``: none)."""
    request_budget_per_min: float = DEFAULT_PER_MINUTE
    """Each connector worker's request budget: the production default."""
    platform_rate_limit_per_min: int = 600
    """The platform's per-IP limit (production: 600); ``0``: off. Every set of workspaces stands for a client of its
    own, but all share the loopback IP here, so the platform allows this × ``replicas`` (one set, two connectors and
    two plain loops reading every second, uses ~250/min; four sets at 600 would be refused with ``429``)."""
    reply_timeout_s: float = 120.0
    seed: int = 15
    replicas: int = 4
    """Sets of four workspaces (2 implementations × 2 backends) messaged after each silence."""


REPLICA_GAP_S = 0.25
"""Sets are messaged this far apart, so their deliveries do not compete for the CPU."""

QUICK = SporadicParams(messages=8, min_silence_s=30.0, max_silence_s=90.0, burst=20)
"""``--quick``: about 10 minutes instead of about an hour."""


def backends(params: SporadicParams) -> dict[str, BackendSpec]:
    """The two backends by label: ``echo`` and ``exec`` sleeping ``backend_delay_s``."""
    sleep = f"sh -c 'sleep {params.backend_delay_s:g}; cat'"
    return {"echo": BackendSpec(name="echo"), "exec": BackendSpec(name="exec", options={"cmd": sleep})}


@contextlib.asynccontextmanager
async def _serving(
    stack: Stack, agents: dict[tuple[str, str, int], CreatedWorkspace], params: SporadicParams
) -> AsyncIterator[None]:
    """Serve every agent: a worker of its own per Temporal connector, a baseline loop per baseline one."""
    settings = {"poll_interval_s": params.poll_interval_s}
    specs = backends(params)
    started = time.time()
    handles: list[Any] = []

    async def terminate() -> None:
        await asyncio.gather(*(h.terminate("benchmark done") for h in handles), return_exceptions=True)

    async with contextlib.AsyncExitStack() as serving:
        # Registered first, so it runs last: after the workers stopped, no activity completes into a closed workflow.
        serving.push_async_callback(terminate)
        state_dir = Path(serving.enter_context(tempfile.TemporaryDirectory(prefix="bench-sporadic-")))
        for (implementation, label, replica), agent in agents.items():
            if implementation == "temporal":
                task_queue = f"{stack.task_queue}-{label}-{replica}"
                await serving.enter_async_context(
                    stack.worker(request_budget_per_min=params.request_budget_per_min, task_queue=task_queue)
                )
                handles += await stack.start_connectors([agent], settings, specs[label], task_queue=task_queue)
            else:
                await serving.enter_async_context(
                    running_baseline(
                        stack.platform.url,
                        [agent],
                        state_dir=state_dir,
                        backend=specs[label],
                        poll_interval_s=params.poll_interval_s,
                    )
                )
        await stack.wait_polling([a.id for a in agents.values()], after=started)
        yield


async def run(params: SporadicParams) -> Result:
    """Run the scenario on a fresh stack and return its figures (see the module docstring)."""
    began = time.monotonic()
    rng = random.Random(params.seed)
    silences: list[float] = []
    async with running_stack(rate_limit_per_min=params.platform_rate_limit_per_min * params.replicas) as stack:
        peer = (await stack.workspaces("peer", 1))[0]
        agents = {
            (implementation, label, replica): (await stack.workspaces(f"sporadic-{implementation}-{label}", 1))[0]
            for replica in range(params.replicas)
            for implementation in ("temporal", "baseline")
            for label in backends(params)
        }
        async with _serving(stack, agents, params):
            measured_from = time.time()
            expected = 0
            for index in range(params.messages):
                silences.append(rng.uniform(params.min_silence_s, params.max_silence_s))
                await asyncio.sleep(silences[-1])
                for replica in range(params.replicas):
                    if replica:
                        await asyncio.sleep(REPLICA_GAP_S)
                    await asyncio.gather(
                        *(
                            stack.admin.send_text(a.id, f"ping {index}", sender=peer, context_id="sporadic")
                            for key, a in agents.items()
                            if key[2] == replica
                        )
                    )
                expected += len(agents)
                await stack.wait_replies(peer.id, expected, timeout_s=params.reply_timeout_s, interval_s=0.01)
            burst_from = time.time()
            if params.burst:
                silences.append(rng.uniform(params.min_silence_s, params.max_silence_s))
                await asyncio.sleep(silences[-1])
                targets = [agents["temporal", "exec", 0], agents["baseline", "exec", 0]]
                burst = [
                    (target.id, peer, text_message(f"burst {i}", context_id=f"{target.id[:8]}-c{i % 8}"))
                    for i in range(params.burst)
                    for target in targets
                ]
                burst_from = time.time()
                sent = await stack.platform.send_burst(burst, concurrency=8)
                if sent["errors"]:
                    raise RuntimeError(f"the platform refused {sent['errors']} of {len(burst)} burst messages")
                expected += len(burst)
                await stack.wait_replies(peer.id, expected, timeout_s=params.reply_timeout_s * 4, interval_s=0.05)
            measured_to = time.time()
            deliveries = await collect(stack, [a.id for a in agents.values()], peer.id)
            reads = {key: await stack.platform.inbox_reads(a.id) for key, a in agents.items()}
            stats = await stack.platform.stats()
        machine = stack.machine

    per_agent: dict[tuple[str, str], dict[str, Any]] = {}
    minutes = max((burst_from - measured_from) / 60.0, 1e-9)
    for implementation, label in {(i, label) for i, label, _ in agents}:
        keys = [k for k in agents if k[:2] == (implementation, label)]
        ids = {agents[k].id for k in keys}
        mine = [d for d in deliveries if d.workspace_id in ids]
        single = [d for d in mine if measured_from <= d.received < burst_from]
        burst_part = [d for d in mine if d.received >= burst_from]
        quiet_reads = [start for k in keys for start, _, _ in reads[k] if measured_from <= start < burst_from]
        per_agent[implementation, label] = {
            **summary_ms(single),
            "latencies_ms": [round(d.latency_s * 1000, 1) for d in single],
            "inbox_reads_per_min": round(len(quiet_reads) / minutes / len(keys), 1),
            "burst": _burst(burst_part),
        }
    return Result(
        scenario="sporadic",
        params=asdict(params),
        machine=machine,
        figures=_figures(per_agent, params),
        details={
            "agents": {f"{i}/{label}": v for (i, label), v in per_agent.items()},
            "silences_s": [round(s, 1) for s in silences],
            "platform_requests": stats["counts"],
            "measured_s": round(measured_to - measured_from, 1),
        },
        notes=[
            f"One message to each workspace after each random silence, {params.replicas} workspace(s) per "
            "implementation and backend (figures pool them); latency = reply created_at − inbound "
            "created_at (platform clock). Each Temporal connector is alone on its worker with the default "
            f"request budget ({params.request_budget_per_min:g}/min); the platform's rate limit is "
            f"{params.platform_rate_limit_per_min or 'off'}/min per IP and set of workspaces (all share loopback).",
            f"exec backend: `sh -c 'sleep {params.backend_delay_s:g}; cat'`. Burst: {params.burst} messages over 8 "
            "conversations to each exec workspace after a last silence; span = last reply − first message.",
        ],
        wall_s=time.monotonic() - began,
    )


def _burst(deliveries: list[Delivery]) -> dict[str, Any] | None:
    if not deliveries:
        return None
    first = min(d.received for d in deliveries)
    return {
        "messages": len(deliveries),
        "span_s": round(max(d.replied for d in deliveries) - first, 3),
        "first_poll_wait_ms": round(min(d.poll_wait_s or 0.0 for d in deliveries) * 1000, 1),
        "latency_ms": summarize([d.latency_s * 1000 for d in deliveries], digits=1),
    }


def _figures(per_agent: dict[tuple[str, str], dict[str, Any]], params: SporadicParams) -> list[Figure]:
    bound_ms = params.poll_interval_s * 1000 + 300

    def pick(implementation: str, label: str, metric: str, stat: str) -> float | None:
        entry = per_agent.get((implementation, label))
        return None if entry is None else entry[metric][stat]

    figures = []
    for label in ("echo", "exec"):
        name = "echo" if label == "echo" else f"{params.backend_delay_s:g} s exec"
        ours, base = pick("temporal", label, "latency_ms", "p50"), pick("baseline", label, "latency_ms", "p50")
        meets = None if ours is None or base is None else ours <= 1.2 * base
        figures.append(Figure(f"latency p50 after a silence ({name})", "ms", ours, base, "≤ 1.2× baseline", meets))
        ours, base = pick("temporal", label, "latency_ms", "p95"), pick("baseline", label, "latency_ms", "p95")
        meets = None if ours is None else ours <= bound_ms
        target = f"≤ poll interval + 300 ms ({bound_ms:g} ms)"
        figures.append(Figure(f"latency p95 after a silence ({name})", "ms", ours, base, target, meets))
        ours, base = pick("temporal", label, "latency_ms", "max"), pick("baseline", label, "latency_ms", "max")
        figures.append(Figure(f"latency max after a silence ({name})", "ms", ours, base))
        ours, base = pick("temporal", label, "poll_wait_ms", "p50"), pick("baseline", label, "poll_wait_ms", "p50")
        figures.append(Figure(f"poll wait p50 ({name})", "ms", ours, base, note="expected ≈ poll interval / 2"))
    ours = per_agent.get(("temporal", "echo"), {}).get("inbox_reads_per_min")
    base = per_agent.get(("baseline", "echo"), {}).get("inbox_reads_per_min")
    figures.append(Figure("inbox reads per minute of the quiet workspace", "", ours, base, note="no idle backoff"))
    ours_burst = (per_agent.get(("temporal", "exec")) or {}).get("burst")
    base_burst = (per_agent.get(("baseline", "exec")) or {}).get("burst")
    if ours_burst or base_burst:
        figures.append(
            Figure(
                f"burst of {params.burst} after a silence ({params.backend_delay_s:g} s exec): first message → last "
                "reply",
                "s",
                ours_burst["span_s"] if ours_burst else None,
                base_burst["span_s"] if base_burst else None,
                note="connector: 4 lanes; baseline: one message at a time",
            )
        )
    return figures
