"""Idle cost: N connected workspaces with nothing to deliver, for T minutes.

Two phases on one stack:

1. **Window** — N connectors with the given settings (default: the production defaults) run idle for T minutes
   after a settle time. Measured over the window: history events written (``fetch_history``, events whose
   ``event_time`` falls in the window), the dev server's ``action`` counter (Temporal Cloud's billable actions;
   it includes activity heartbeats, which are not in histories), platform requests by kind, and the CPU and memory
   of the worker process, the Temporal server and the platform.
2. **Cycle calibration** — an idle workspace's one activity, the ``session`` (platform heartbeats and the inbox
   long poll), returns only every ``poll_max_wait_s`` (600 s), so a window of a few minutes may see no cycle at
   all. Two more connectors run with 5 s cycles for ``calibration_s``; the history events between consecutive
   activity completions give the cost of one cycle (activity scheduled/started/completed plus the workflow task it
   triggers and whatever that task commands). The steady state per workspace-hour is then
   ``events per cycle × 3600 / poll_max_wait_s``. (Connectors started before the session ran a separate heartbeat
   activity, one more cycle every ``heartbeat_run_for_s``; RESULTS.md's "before" figures count it.)

Billable actions per workspace-hour are projected the same way: heartbeat actions are time-based, so they are
taken from the window's server counter; the rest (activity starts, upserts, markers, timers) per cycle from the
calibration histories.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle

from benchmarks.machine import CpuWindow, sample_process
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, running_stack

BILLABLE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
}
"""History events that are a Temporal Cloud action each (docs.temporal.io/cloud/actions); activity starts are
counted from ``ActivityTaskStarted.attempt`` (every attempt is an action), heartbeats are not in histories."""

HEARTBEAT_ACTION = "grpc_RecordActivityTaskHeartbeat"


@dataclass(frozen=True)
class IdleParams:
    """Parameters of the idle scenario."""

    workspaces: int = 5
    minutes: float = 2.0
    poll_interval_s: float = 1.0
    poll_max_wait_s: float = 600.0
    heartbeat_run_for_s: float = 3600.0
    heartbeat_interval_s: float = 30.0
    failover_timeout_s: float | None = None
    """The session's heartbeat timeout (``None``: 1.2 × ``heartbeat_interval_s``); it sets the Temporal heartbeat
    cadence, hence the heartbeat actions."""
    settle_s: float = 90.0
    """Wait after every connector polls before the window opens, so startup events stay out of it (inbox reads are
    planned from the request budget, ``activities.planner``: an idle inbox is read every ``poll_interval_s``)."""
    request_budget_per_min: float = 0.0
    """The worker's platform request budget; ``0``: unlimited."""
    calibration_s: float = 45.0
    """Length of the cycle calibration phase (``0``: skip it)."""


def billable_actions(events: list[HistoryEvent]) -> int:
    """Actions visible in ``events``: billable event types, plus one per activity attempt started."""
    total = 0
    for event in events:
        if event.event_type in BILLABLE_EVENTS:
            total += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            total += max(event.activity_task_started_event_attributes.attempt, 1)
    return total


async def _events(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return list((await handle.fetch_history()).events)


def _in_window(events: list[HistoryEvent], start: float, end: float) -> list[HistoryEvent]:
    return [e for e in events if start <= e.event_time.ToMicroseconds() / 1e6 < end]


def cycle_cost(events: list[HistoryEvent]) -> tuple[int, int, int]:
    """``(cycles, events, actions)`` between the first and the last activity completion of one history.

    Starting right after a completion and ending at the next one, the events are exactly one cycle: the workflow
    task the completion triggered, what that task commanded (the next activity, an upsert…), the new activity's
    start and its completion.
    """
    completed = [i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    if len(completed) < 2:
        return 0, 0, 0
    span = events[completed[0] + 1 : completed[-1] + 1]
    return len(completed) - 1, len(span), billable_actions(span)


async def _calibrate(stack: Stack, params: IdleParams) -> dict[str, Any]:
    agents = await stack.workspaces("idle-calibration", 2)
    settings = {"poll_interval_s": params.poll_interval_s, "poll_max_wait_s": 5.0, "heartbeat_run_for_s": 10.0}
    started = time.time()
    handles = await stack.start_connectors(agents, settings)
    await stack.wait_polling([a.id for a in agents], after=started)
    await asyncio.sleep(params.calibration_s)
    cycles = events = actions = 0
    for handle in handles:
        c, e, a = cycle_cost(await _events(handle))
        cycles, events, actions = cycles + c, events + e, actions + a
        await handle.terminate("calibration done")
    return {
        "cycles": cycles,
        "events_per_cycle": round(events / cycles, 2) if cycles else None,
        "history_actions_per_cycle": round(actions / cycles, 2) if cycles else None,
    }


async def run(params: IdleParams) -> Result:
    """Run the scenario on a fresh stack and return its figures (see the module docstring)."""
    began = time.monotonic()
    settings = {
        "poll_interval_s": params.poll_interval_s,
        "poll_max_wait_s": params.poll_max_wait_s,
        "heartbeat_run_for_s": params.heartbeat_run_for_s,
        "heartbeat_interval_s": params.heartbeat_interval_s,
        "failover_timeout_s": params.failover_timeout_s,
    }
    async with running_stack() as stack:
        agents = await stack.workspaces("idle", params.workspaces)
        rss_before_worker = sample_process()
        async with stack.worker(
            max_concurrent_activities=2 * params.workspaces + 20, request_budget_per_min=params.request_budget_per_min
        ):
            started = time.time()
            # Spread over a heartbeat interval: heartbeats at every phase, none counted twice by the window's edges.
            handles = await stack.start_connectors(agents, settings, spread_s=params.heartbeat_interval_s)
            await stack.wait_polling([a.id for a in agents], after=started)
            await asyncio.sleep(params.settle_s)

            window = CpuWindow(
                {"worker_process": None, "temporal_server": stack.temporal_pid, "platform": stack.platform.pid}
            )
            metrics_before, stats_before = await stack.server_metrics(), await stack.platform.stats()
            window_start = time.time()
            window.start()
            await asyncio.sleep(params.minutes * 60)
            window_end = time.time()
            resources = window.stop()
            metrics_after, stats_after = await stack.server_metrics(), await stack.platform.stats()

            histories = await asyncio.gather(*(_events(h) for h in handles))
            calibration = await _calibrate(stack, params) if params.calibration_s > 0 else {}
        machine = stack.machine

    hours = (window_end - window_start) / 3600
    ws_hours = params.workspaces * hours
    in_window = [e for events in histories for e in _in_window(events, window_start, window_end)]
    event_types = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in in_window)
    actions = {
        k: round(v - metrics_before.get(k, 0.0), 1)
        for k, v in metrics_after.items()
        if not k.startswith("requests:") and v - metrics_before.get(k, 0.0) > 0
    }
    requests = {
        k: v - stats_before["counts"].get(k, 0)
        for k, v in stats_after["counts"].items()
        if v - stats_before["counts"].get(k, 0) > 0
    }
    minutes_ws = params.workspaces * hours * 60
    requests_per_ws_min = {k: round(v / minutes_ws, 2) for k, v in requests.items()}

    events_per_ws_h = round(len(in_window) / ws_hours, 1)
    heartbeat_actions_per_ws_h = round(actions.get(HEARTBEAT_ACTION, 0.0) / ws_hours, 1)
    actions_per_ws_h = round(sum(actions.values()) / ws_hours, 1)
    cycles_per_h = 3600 / params.poll_max_wait_s  # the session returns every poll_max_wait_s
    per_cycle = calibration.get("events_per_cycle")
    projected_events = round(per_cycle * cycles_per_h, 1) if per_cycle is not None else None
    actions_per_cycle = calibration.get("history_actions_per_cycle")
    projected_actions = None
    if actions_per_cycle is not None:
        projected_actions = round(heartbeat_actions_per_ws_h + actions_per_cycle * cycles_per_h, 1)
    worker = resources.get("worker_process") or {}
    cpu_ms_per_ws_min = round(worker["cpu_s"] * 1000 / minutes_ws, 2) if worker.get("cpu_s") is not None else None
    inbox = requests_per_ws_min.get("inbox 200")
    beats = requests_per_ws_min.get("heartbeat 200")
    figures = [
        Figure(
            "history events per workspace-hour, steady state",
            "events",
            projected_events,
            None,
            "≤ 60",
            None if projected_events is None else projected_events <= 60,
            note=f"{per_cycle} events per cycle × {cycles_per_h:g} cycles/h",
        ),
        Figure(
            "history events per workspace-hour, measured in the window",
            "events",
            events_per_ws_h,
            note="meaningful only when the window spans several poll_max_wait_s",
        ),
        Figure(
            "billable actions per workspace-hour, projected",
            "actions",
            projected_actions,
            note="heartbeat actions measured + per-cycle actions × cycles/h",
        ),
        Figure("billable actions per workspace-hour, measured (server counter)", "actions", actions_per_ws_h),
        Figure("of which activity heartbeats", "actions", heartbeat_actions_per_ws_h),
        Figure("platform inbox reads per workspace-minute", "req", inbox),
        Figure("platform heartbeats per workspace-minute", "req", beats),
        Figure("worker CPU per workspace-minute", "ms", cpu_ms_per_ws_min),
        Figure("worker process CPU (share of one core)", "", worker.get("cpu_core_share")),
        Figure(
            "worker process RSS",
            "MiB",
            round(worker["rss_bytes"] / 2**20, 1) if worker.get("rss_bytes") else None,
            note="whole benchmark process",
        ),
    ]
    return Result(
        scenario="idle",
        params=asdict(params),
        machine=machine,
        figures=figures,
        details={
            "window_s": round(window_end - window_start, 1),
            "events_in_window": len(in_window),
            "event_types_in_window": dict(event_types),
            "server_actions_in_window": actions,
            "platform_requests_in_window": requests,
            "platform_requests_per_ws_min": requests_per_ws_min,
            "calibration": calibration,
            "cycles_per_hour": cycles_per_h,
            "resources": resources,
            "rss_before_worker_bytes": rss_before_worker.rss_bytes if rss_before_worker else None,
        },
        notes=[
            "Steady-state events = events per cycle (from the calibration histories) × cycles per hour at the "
            "window's settings; see benchmarks/idle.py.",
            "Billable actions follow docs.temporal.io/cloud/actions; the server's `action` counter includes "
            "heartbeats (not in histories). Queries made by the benchmark: none during the window.",
        ],
        wall_s=time.monotonic() - began,
    )
