"""Fleet: K workspaces connected on one worker process; startup time, memory, CPU, heartbeat punctuality, latency.

1. Create K workspaces, start the worker (``max_concurrent_activities`` = 2 per workspace for the heartbeat and
   poll duties, plus room for dispatches) and one ``ConnectWorkflow`` per workspace.
2. Time to all ``online``: until the platform accepted a register from every workspace, then confirmed by reading
   every workspace's status (``GET /admin/workspaces/{id}``); and until every workspace read its inbox.
3. Settle for ``settle_s``; statuses are read every ``status_every_s`` (any ``awaiting_agent`` is a missed
   heartbeat).
4. Hold for ``hold_s`` (longer than the platform's 90 s stale window): keep reading statuses, and send ``probes``
   messages one at a time to random workspaces, each quiet until then, to measure the first-message latency.
   The platform's own stale sweep is watched throughout (its log).
5. Heartbeat punctuality from the platform's request log: the gaps between consecutive accepted heartbeats of
   each workspace from the moment all were registered to the end (the connector beats every 30 s; the platform
   gives up after 90 s).

6. Inbox reads from the platform's request log: how many in the first minute after the start against a minute of
   the hold (a restart storm shows as a heavier first minute), and the longest gap between two reads of one inbox
   while holding; ``429`` answers of the platform.

The fleet runs the connector's production settings: poll interval 1 s, the default request budget (480/min, reads
planned by ``activities.planner``: with K workspaces each inbox is read every ``60 K / (480 − 2K)`` s once that is
over 1 s), against a platform with its production rate limit (600/min per IP) and stale window. For K over 240 the
heartbeats alone exceed the default budget: run those with ``--request-budget 0 --platform-rate-limit 0`` (every inbox
read each second).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass

from activities.budget import DEFAULT_PER_MINUTE
from activities.planner import read_interval
from benchmarks.deliveries import collect, summary_ms
from benchmarks.machine import CpuWindow, sample_process
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, gather_limited, running_stack
from benchmarks.stats import summarize
from devplatform.client import CreatedWorkspace


@dataclass(frozen=True)
class FleetParams:
    """Parameters of the fleet scenario."""

    workspaces: int = 100
    poll_interval_s: float = 1.0
    settle_s: float = 90.0
    """After all are online, before the hold."""
    hold_s: float = 150.0
    """How long the settled fleet is held and probed (the stale window is 90 s)."""
    probes: int = 20
    """Messages sent one at a time to random (quiet) workspaces during the hold."""
    status_every_s: float = 30.0
    request_budget_per_min: float = DEFAULT_PER_MINUTE
    """The worker's platform request budget (``0``: unlimited). The default cannot carry more than 239 workspaces:
    their heartbeats alone would take it."""
    platform_rate_limit_per_min: int = 600
    """The platform's per-IP limit (production: 600); ``0``: off."""
    start_concurrency: int = 32
    startup_timeout_s: float = 600.0
    seed: int = 6


async def _statuses(stack: Stack, workspaces: list[CreatedWorkspace]) -> Counter[str]:
    async def status(ws: CreatedWorkspace) -> str:
        return str((await stack.admin.workspace(ws.id)).get("status"))

    return Counter(await gather_limited(workspaces, status, limit=32))


async def _wait_registered(stack: Stack, count: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (registered := (await stack.platform.stats())["registered"]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {registered}/{count} workspaces registered after {timeout_s}s")
        await asyncio.sleep(0.25)
    return time.time()


async def run(params: FleetParams) -> Result:
    """Run the scenario on a fresh stack and return its figures (see the module docstring)."""
    began = time.monotonic()
    rng = random.Random(params.seed)
    async with running_stack(rate_limit_per_min=params.platform_rate_limit_per_min) as stack:
        fleet = await stack.workspaces("fleet", params.workspaces)
        peer = (await stack.workspaces("peer", 1))[0]
        await stack.platform.reset()
        before_worker = sample_process()
        slots = 2 * params.workspaces + 50
        async with stack.worker(max_concurrent_activities=slots, request_budget_per_min=params.request_budget_per_min):
            startup = CpuWindow(
                {"worker_process": None, "temporal_server": stack.temporal_pid, "platform": stack.platform.pid}
            )
            startup.start()
            t0 = time.time()
            await stack.start_connectors(
                fleet, {"poll_interval_s": params.poll_interval_s}, concurrency=params.start_concurrency
            )
            started_all = time.time()
            registered_all = await _wait_registered(stack, params.workspaces, params.startup_timeout_s)
            polling_all = await stack.wait_polling([w.id for w in fleet], after=t0, timeout_s=params.startup_timeout_s)
            first_sweep = await _statuses(stack, fleet)
            online_confirmed = time.time()
            startup_resources = startup.stop()

            settle = CpuWindow(
                {"worker_process": None, "temporal_server": stack.temporal_pid, "platform": stack.platform.pid}
            )
            settle.start()
            sweeps: list[dict[str, int]] = [dict(first_sweep)]
            settle_end = time.monotonic() + params.settle_s
            while (left := settle_end - time.monotonic()) > 0:
                await asyncio.sleep(min(params.status_every_s, left))
                sweeps.append(dict(await _statuses(stack, fleet)))
            settle_resources = settle.stop()
            sdk_before = await stack.sdk_metrics()

            hold = CpuWindow(
                {"worker_process": None, "temporal_server": stack.temporal_pid, "platform": stack.platform.pid}
            )
            hold.start()
            hold_start = time.time()
            probe_targets = [rng.choice(fleet) for _ in range(params.probes)]

            async def probe() -> None:
                for index, target in enumerate(probe_targets):
                    await stack.admin.send_text(target.id, f"probe {index}", sender=peer, context_id="probe")
                    await stack.wait_replies(peer.id, index + 1, timeout_s=max(120.0, 6 * params.poll_interval_s))

            async def watch() -> None:
                while time.time() - hold_start < params.hold_s:
                    left = params.hold_s - (time.time() - hold_start)
                    await asyncio.sleep(min(params.status_every_s, max(0.0, left)))
                    sweeps.append(dict(await _statuses(stack, fleet)))

            await asyncio.gather(probe(), watch())
            hold_end = time.time()
            reads = {w.id: await stack.platform.inbox_reads(w.id) for w in fleet}
            hold_resources = hold.stop()
            sdk_after = await stack.sdk_metrics()
            heartbeats = await stack.platform.heartbeats()
            stats = await stack.platform.stats()
            deliveries = await collect(stack, sorted({t.id for t in probe_targets}), peer.id)
        machine = stack.machine

    gaps: list[float] = []
    late = 0
    for workspace in fleet:
        beats = sorted(t for t in heartbeats.get(workspace.id, []) if t <= hold_end)
        # The gap that spans the hold's start counts too: that is when a workspace could go stale.
        beats = [t for t in beats if t >= registered_all]
        pairs = list(zip(beats, beats[1:], strict=False))
        gaps += [b - a for a, b in pairs]
        if beats and hold_end - beats[-1] > 45:
            late += 1
    awaiting = max((s.get("awaiting_agent", 0) for s in sweeps), default=0)
    stale_events = [ids for _, ids in stats["stale"] if set(ids) & {w.id for w in fleet}]
    worker_hold = hold_resources.get("worker_process") or {}
    worker_start = startup_resources.get("worker_process") or {}
    rss = worker_hold.get("rss_bytes")
    peak = worker_hold.get("peak_rss_bytes")
    gap_summary = summarize(gaps, digits=2)
    read_gaps: list[float] = []
    for times in reads.values():
        starts = sorted(start for start, _, _ in times if start <= hold_end)
        read_gaps += [b - a for a, b in zip(starts, starts[1:], strict=False) if b >= hold_start]
    read_gap_summary = summarize(read_gaps, digits=2)
    all_starts = [start for times in reads.values() for start, _, _ in times]
    first_minute = sum(t0 <= t < t0 + 60 for t in all_starts)
    hold_minute = sum(hold_start <= t < hold_end for t in all_starts) * 60 / max(hold_end - hold_start, 1e-9)
    rejected = sum(count for kind, count in stats["counts"].items() if kind.endswith(" 429"))
    planned = read_interval(params.request_budget_per_min, params.workspaces, params.poll_interval_s)
    latency = summary_ms(deliveries)
    never_awaiting = awaiting == 0 and not stale_events
    figures = [
        Figure(
            "time to all registered (online)",
            "s",
            round(registered_all - t0, 1),
            note=f"starting {params.workspaces} workflows took {started_all - t0:.1f} s",
        ),
        Figure("time to all online, confirmed by status reads", "s", round(online_confirmed - t0, 1)),
        Figure("time to all polling their inbox", "s", round(polling_all - t0, 1)),
        Figure(
            "worker process RSS with the fleet up",
            "MiB",
            round(rss / 2**20, 1) if rss else None,
            None,
            "≤ 1 GiB",
            None if rss is None else rss <= 2**30,
        ),
        Figure(
            "worker process peak RSS",
            "MiB",
            round(peak / 2**20, 1) if peak else None,
            None,
            "≤ 1 GiB",
            None if peak is None else peak <= 2**30,
        ),
        Figure("worker process CPU during startup (share of one core)", "", worker_start.get("cpu_core_share")),
        Figure(
            "worker process CPU in the first quiet minute (share of one core)",
            "",
            (settle_resources.get("worker_process") or {}).get("cpu_core_share"),
            note="reads planned from the start: no storm",
        ),
        Figure("worker process CPU while holding (share of one core)", "", worker_hold.get("cpu_core_share")),
        Figure(
            "Temporal server CPU while holding (share of one core)",
            "",
            (hold_resources.get("temporal_server") or {}).get("cpu_core_share"),
        ),
        Figure(
            "platform CPU while holding (share of one core)",
            "",
            (hold_resources.get("platform") or {}).get("cpu_core_share"),
        ),
        Figure(
            "workspaces ever seen awaiting_agent", "", float(awaiting + len(stale_events)), None, "0", never_awaiting
        ),
        Figure("heartbeat gap p50", "s", gap_summary["p50"], note="the connector beats every 30 s"),
        Figure("heartbeat gap p99", "s", gap_summary["p99"]),
        Figure(
            "heartbeat gap max",
            "s",
            gap_summary["max"],
            None,
            "< 90 s (stale window)",
            None if gap_summary["max"] is None else gap_summary["max"] < 90,
        ),
        Figure(
            "first-message latency p50 (probes to quiet workspaces)",
            "ms",
            latency["latency_ms"]["p50"],
            note=f"{latency['latency_ms']['n']} probes; poll interval {params.poll_interval_s:g} s",
        ),
        Figure("first-message latency p95", "ms", latency["latency_ms"]["p95"]),
        Figure(
            "first-message latency max",
            "ms",
            latency["latency_ms"]["max"],
            note="planned worst case: the read interval + delivery",
        ),
        Figure("probe overhead beyond poll wait p50", "ms", latency["overhead_ms"]["p50"]),
        Figure(
            "platform 429 answers",
            "",
            float(rejected),
            None,
            "0",
            rejected == 0 if params.platform_rate_limit_per_min else None,
            note=f"platform rate limit {params.platform_rate_limit_per_min or 'off'}/min per IP",
        ),
        Figure(
            "interval between two reads of one inbox while holding, p50",
            "s",
            read_gap_summary["p50"],
            note="planned: " + ("overloaded" if planned is None else f"{planned:.1f} s"),
        ),
        Figure(
            "interval between two reads of one inbox while holding, max",
            "s",
            read_gap_summary["max"],
            None,
            "≤ 30 s",
            None if read_gap_summary["max"] is None else read_gap_summary["max"] <= 30,
        ),
        Figure(
            "inbox reads in the first minute after start / per minute while holding",
            "",
            float(first_minute),
            None,
            note=f"{hold_minute:.0f} per minute while holding: a restart storm would make the first far larger",
        ),
    ]
    return Result(
        scenario="fleet",
        params=asdict(params),
        machine=machine,
        figures=figures,
        details={
            "status_sweeps": sweeps,
            "stale_transitions": stale_events,
            "workspaces_with_last_beat_over_45s_before_end": late,
            "heartbeat_gaps_s": gap_summary,
            "probe": latency,
            "startup_resources": startup_resources,
            "settle_resources": settle_resources,
            "hold_sdk_metrics": {
                k: round(v - sdk_before.get(k, 0.0), 3)
                for k, v in sdk_after.items()
                if k.endswith(("_count", "_sum")) and v - sdk_before.get(k, 0.0)
            },
            "hold_resources": hold_resources,
            "hold_s": round(hold_end - hold_start, 1),
            "platform_requests": stats["counts"],
            "inbox_read_gaps_s": read_gap_summary,
            "inbox_reads_first_minute": first_minute,
            "inbox_reads_per_minute_holding": round(hold_minute, 1),
            "planned_read_interval_s": planned,
            "platform_handling_ms": stats["handling_ms"],
            "rss_before_worker_bytes": before_worker.rss_bytes if before_worker else None,
            "max_concurrent_activities": slots,
        },
        notes=[
            f"Poll interval {params.poll_interval_s:g} s, request budget {params.request_budget_per_min:g}/min "
            "(reads planned by activities.planner); heartbeat every 30 s; platform stale window 90 s, sweep 15 s, "
            f"rate limit {params.platform_rate_limit_per_min or 'off'}/min per IP.",
            "RSS is the whole benchmark process: the worker plus the benchmark's own clients "
            f"({(before_worker.rss_bytes or 0) / 2**20:.0f} MiB before the worker started)."
            if before_worker
            else "RSS is the whole benchmark process.",
        ],
        wall_s=time.monotonic() - began,
    )
