"""Throughput: W workspaces × M messages sent in one burst; messages per second until every one is replied.

For each implementation (the Temporal connector, then the plain-loop baseline, each on fresh workspaces of the same
platform), after a warm-up round, ``runs`` times:

1. the platform accepts W × M messages from one peer workspace as fast as it can (``POST /_bench/send``: the
   platform process posts them through its own app, so sending costs the worker's process nothing); each
   workspace's messages are spread over ``conversations`` contexts, so the connector can use parallel lanes;
2. wait until the platform accepted every reply;
3. throughput = messages / (last reply's ``created_at`` − first message's ``created_at``), platform clock.

CPU is measured over each run for the benchmark process (the worker, or the baseline loops: the process does
nothing else meanwhile but poll a counter every 10 ms), the Temporal dev server and the platform process, from
``/proc/<pid>/stat``. The figure is the median of the runs.

With ``worker_processes`` > 1 the Temporal connector is served by that many worker processes on one task queue:
the in-process worker plus ``molecule-connect worker`` children (their CPU is measured too), to see how throughput
scales past one process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

from temporalio.api.enums.v1 import EventType

from activities.messages import BackendSpec
from benchmarks.deliveries import collect, summary_ms
from benchmarks.latency import IMPLEMENTATIONS, serving
from benchmarks.machine import CpuWindow
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, running_stack
from benchmarks.stats import summarize
from devplatform.client import CreatedWorkspace, text_message


@dataclass(frozen=True)
class ThroughputParams:
    """Parameters of the throughput scenario."""

    workspaces: int = 50
    messages: int = 40
    """Messages per workspace per run."""
    conversations: int = 8
    """Contexts per workspace the messages are spread over (lanes the connector may run in parallel)."""
    runs: int = 3
    warmup: int = 2
    """Messages per workspace in the unmeasured warm-up round."""
    poll_interval_s: float = 1.0
    max_concurrency: int = 4
    """The connector's lanes in parallel per workspace (its default)."""
    request_budget_per_min: float = 0.0
    """The worker's platform request budget; ``0``: unlimited (the benchmark platform has no rate limit; the
    production default, 480/min, would cap the connector at 8 requests/s whatever the engine does)."""
    send_concurrency: int = 32
    """Concurrent sends inside the platform during the burst."""
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    backend: str = "echo"
    backend_options: dict[str, str] = field(default_factory=dict)
    run_timeout_s: float = 900.0
    worker_processes: int = 1
    """Worker processes serving the Temporal connector on one task queue (the in-process one + children)."""


async def _burst(
    stack: Stack,
    agents: list[CreatedWorkspace],
    peer: CreatedWorkspace,
    params: ThroughputParams,
    per_agent: int,
    tag: str,
    expected_total: int,
) -> dict[str, Any]:
    messages = [
        (agent.id, peer, text_message(f"{tag} {i}", context_id=f"{agent.id[:8]}-c{i % params.conversations}"))
        for i in range(per_agent)
        for agent in agents
    ]
    sent = await stack.platform.send_burst(messages, concurrency=params.send_concurrency)
    if sent["errors"]:
        raise RuntimeError(f"the platform refused {sent['errors']} of {len(messages)} messages")
    done = await stack.wait_replies(peer.id, expected_total, timeout_s=params.run_timeout_s, interval_s=0.1)
    return {"enqueue_s": round(sent["ended"] - sent["started"], 3), "started": sent["started"], "done": done}


async def _measure(stack: Stack, implementation: str, params: ThroughputParams) -> dict[str, Any]:
    agents = await stack.workspaces(f"tp-{implementation}", params.workspaces)
    peer = (await stack.workspaces("peer", 1))[0]
    settings = {"poll_interval_s": params.poll_interval_s, "max_concurrency": params.max_concurrency}
    backend = BackendSpec(name=params.backend, options=params.backend_options)
    slots = params.workspaces * (2 + params.max_concurrency) + 20
    runs = []
    history_events = retried = 0
    extra_workers: dict[str, int | None] = {}
    async with contextlib.AsyncExitStack() as serving_stack:
        if implementation == "temporal":
            for n in range(2, params.worker_processes + 1):
                extra_workers[f"worker_process_{n}"] = await serving_stack.enter_async_context(
                    stack.worker_process(request_budget_per_min=params.request_budget_per_min)
                )
        handles = await serving_stack.enter_async_context(
            serving(
                stack,
                implementation,
                agents,
                settings,
                backend=backend,
                max_concurrent_activities=slots,
                request_budget_per_min=params.request_budget_per_min,
            )
        )
        total = params.workspaces * params.warmup
        if params.warmup:
            await _burst(stack, agents, peer, params, params.warmup, "warmup", total)
        for index in range(params.runs):
            window = CpuWindow(
                {
                    "worker_process": None,
                    **extra_workers,
                    "temporal_server": stack.temporal_pid,
                    "platform": stack.platform.pid,
                }
            )
            sdk_before = await stack.sdk_metrics() if handles else {}
            window.start()
            total += params.workspaces * params.messages
            burst = await _burst(stack, agents, peer, params, params.messages, f"run{index}", total)
            resources = window.stop()
            sdk = {}
            if handles:
                sdk = _per_message(sdk_before, await stack.sdk_metrics(), params.workspaces * params.messages)
            handling = (await stack.platform.stats())["handling_ms"]
            runs.append({**burst, "resources": resources, "temporal": sdk, "platform_handling_ms": handling})
        for handle in handles:
            events = (await handle.fetch_history()).events
            history_events += len(events)
            retried += sum(
                1
                for e in events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                and e.activity_task_started_event_attributes.attempt > 1
            )
    deliveries = await collect(stack, [a.id for a in agents], peer.id, with_reads=False)
    results = []
    for index, r in enumerate(runs):
        mine = [d for d in deliveries if r["started"] - 0.01 <= d.received <= r["done"]]
        first, last = min(d.received for d in mine), max(d.replied for d in mine)
        worker = r["resources"]["worker_process"]
        workers = [v for k, v in r["resources"].items() if k.startswith("worker_process") and v]
        results.append(
            {
                "run": index,
                "messages": len(mine),
                "msg_per_s": round(len(mine) / (last - first), 1),
                "span_s": round(last - first, 3),
                "enqueue_s": r["enqueue_s"],
                "worker_cpu_ms_per_msg": round(worker["cpu_s"] * 1000 / len(mine), 3) if worker else None,
                "all_workers_cpu_ms_per_msg": round(sum(w["cpu_s"] for w in workers) * 1000 / len(mine), 3),
                "all_workers_cpu_core_share": round(sum(w["cpu_core_share"] for w in workers), 4),
                "resources": r["resources"],
                "temporal": r["temporal"],
                "platform_handling_ms": r["platform_handling_ms"],
                **summary_ms(mine),
            }
        )
    return {
        "implementation": implementation,
        "runs": results,
        "history_events_per_message": round(history_events / total, 2) if history_events else None,
        "activities_retried": retried if handles else None,
    }


def _per_message(before: dict[str, float], after: dict[str, float], messages: int) -> dict[str, float | None]:
    """Temporal round trips per message over a run, from the worker's SDK metrics."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean_ms(name: str) -> float | None:
        count = delta(f"{name}_count")
        return round(delta(f"{name}_sum") / count, 2) if count else None

    return {
        "workflow_tasks_per_message": round(delta("temporal_workflow_task_execution_latency_count") / messages, 2),
        "activities_per_message": round(delta("temporal_activity_execution_latency_count") / messages, 2),
        "workflow_task_execution_ms_mean": mean_ms("temporal_workflow_task_execution_latency"),
        "workflow_task_schedule_to_start_ms_mean": mean_ms("temporal_workflow_task_schedule_to_start_latency"),
        "activity_schedule_to_start_ms_mean": mean_ms("temporal_activity_schedule_to_start_latency"),
        "activity_execution_ms_mean": mean_ms("temporal_activity_execution_latency"),
    }


def _median(run_list: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    values = []
    for r in run_list:
        value = r.get(key)
        if sub is not None:
            value = (value or {}).get(sub) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return round(median(values), 3) if values else None


def _cpu_share(run_list: list[dict[str, Any]], process: str) -> float | None:
    values = [r["resources"][process]["cpu_core_share"] for r in run_list if r["resources"].get(process)]
    return round(median(values), 3) if values else None


async def run(params: ThroughputParams) -> Result:
    """Run the scenario on a fresh stack and return its figures (see the module docstring)."""
    started = time.monotonic()
    measured: dict[str, dict[str, Any]] = {}
    async with running_stack() as stack:
        for implementation in params.implementations:
            measured[implementation] = await _measure(stack, implementation, params)
        machine = stack.machine
    ours = measured.get("temporal", {}).get("runs", [])
    base = measured.get("baseline", {}).get("runs", [])
    ours_rate, base_rate = _median(ours, "msg_per_s"), _median(base, "msg_per_s")
    meets_abs = None if ours_rate is None else ours_rate >= 150
    meets_rel = None if ours_rate is None or base_rate is None else ours_rate >= 3 * base_rate
    figures = [
        Figure(
            "throughput (median of runs)",
            "msg/s",
            ours_rate,
            base_rate,
            "≥ 150 msg/s and ≥ 3× baseline",
            None if meets_abs is None else bool(meets_abs and (meets_rel is not False)),
        ),
        Figure(
            "worker process CPU per message",
            "ms",
            _median(ours, "worker_cpu_ms_per_msg"),
            _median(base, "worker_cpu_ms_per_msg"),
        ),
        Figure(
            "worker process CPU (share of one core)",
            "",
            _cpu_share(ours, "worker_process"),
            _cpu_share(base, "worker_process"),
        ),
        *(
            [
                Figure(
                    f"all {params.worker_processes} worker processes CPU (share of one core)",
                    "",
                    _median(ours, "all_workers_cpu_core_share"),
                    note=f"per message: {_median(ours, 'all_workers_cpu_ms_per_msg')} ms",
                )
            ]
            if params.worker_processes > 1
            else []
        ),
        Figure(
            "Temporal server CPU (share of one core)",
            "",
            _cpu_share(ours, "temporal_server"),
            _cpu_share(base, "temporal_server"),
            note="baseline: idle server",
        ),
        Figure("platform CPU (share of one core)", "", _cpu_share(ours, "platform"), _cpu_share(base, "platform")),
        Figure("latency p50 under burst", "ms", _median(ours, "latency_ms", "p50"), _median(base, "latency_ms", "p50")),
        Figure("latency p95 under burst", "ms", _median(ours, "latency_ms", "p95"), _median(base, "latency_ms", "p95")),
        Figure(
            "workflow tasks per message",
            "",
            _median([r["temporal"] for r in ours], "workflow_tasks_per_message") if ours else None,
        ),
        Figure(
            "activities per message",
            "",
            _median([r["temporal"] for r in ours], "activities_per_message") if ours else None,
        ),
        Figure("history events per message", "", measured.get("temporal", {}).get("history_events_per_message")),
        Figure(
            "activity attempts retried (all runs)",
            "",
            measured.get("temporal", {}).get("activities_retried"),
            note="a dispatch whose completion came after its 30 s heartbeat timeout is run again",
        ),
        Figure(
            "burst enqueue time",
            "s",
            _median(ours, "enqueue_s"),
            _median(base, "enqueue_s"),
            note="time the platform took to accept the burst",
        ),
    ]
    rates = {impl: summarize([r["msg_per_s"] for r in m["runs"]], digits=1) for impl, m in measured.items()}
    return Result(
        scenario="throughput",
        params=asdict(params),
        machine=machine,
        figures=figures,
        details={"implementations": measured, "msg_per_s": rates},
        notes=[
            "Throughput = messages / (last reply created_at − first message created_at), platform clock; "
            "median of the runs. CPU shares are CPU seconds / wall seconds of the run (2.0 = both cores).",
            "The baseline handles each workspace's messages sequentially (one loop per workspace, all in one process).",
            f"Temporal connector: {params.worker_processes} worker process(es) on one task queue.",
        ],
        wall_s=time.monotonic() - started,
    )
