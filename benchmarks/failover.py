"""Failover: N workspaces on two worker processes, one SIGKILLed; heartbeat gaps, message latency, idle actions.

For each ``failover_timeout_s`` in ``failover_timeouts`` (``None``: the default, 1.2 × ``heartbeat_interval_s``), on
a fresh stack with the platform's production stale window (90 s, swept every 15 s):

1. Create N workspaces and a peer, write their tokens to a 0600 file, start two ``molecule-connect worker``
   processes on the stack's task queue (request budget off, like the platform's rate limit) and one
   ``ConnectWorkflow`` per workspace with production settings but ``failover_timeout_s``, started evenly over one
   heartbeat interval, so the kill finds the sessions at every phase of their heartbeat cycle.
2. Settle for ``settle_s``, then an idle window of ``window_s``: the dev server's ``action`` counter over it gives
   the billable actions per workspace-hour (nearly all of them activity heartbeats; the session cycles every
   ``poll_max_wait_s`` add ~1 action each, measured by ``python -m benchmarks idle``).
3. Find which worker runs each workspace's ``session`` activity (``describe``: its last worker identity) and
   SIGKILL the one running most (or, with ``stop="freeze"``, SIGSTOP it). Right after, the peer sends one message
   to every workspace.
4. Wait for every reply, then observe until ``observe_s`` after the kill (longer than the stale window plus a
   sweep, so a workspace that went silent would have been swept).
5. From the platform's request log: per workspace, the longest silence between two accepted heartbeats (or from
   the last one to the end) since the fleet settled; when the dead worker's workspaces first beat again; the stale
   sweep's moves to ``awaiting_agent``. Message latency (platform clock: inbound row ``created_at`` → reply row
   ``created_at``) of the messages sent after the kill, for the moved workspaces and the others.

A worker process is what dies in production, so the workers run as processes here (unlike the other scenarios,
whose worker runs in the benchmark process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle

from benchmarks.deliveries import Delivery, collect
from benchmarks.idle import HEARTBEAT_ACTION
from benchmarks.machine import REPO_ROOT
from benchmarks.report import Figure, Result
from benchmarks.stack import Stack, gather_limited, running_stack
from benchmarks.stats import summarize

STALE_WINDOW_S = 90.0
"""The platform's stale window (production, and this scenario's platform)."""


@dataclass(frozen=True)
class FailoverParams:
    """Parameters of the failover scenario."""

    workspaces: int = 20
    failover_timeouts: tuple[float | None, ...] = (None, 8.0)
    """One round per value; ``None`` is the default (1.2 × ``heartbeat_interval_s``)."""
    heartbeat_interval_s: float = 30.0
    poll_interval_s: float = 1.0
    settle_s: float = 60.0
    """After every workspace polled: the first quiet minute, and sessions settled on both workers."""
    window_s: float = 120.0
    """Idle window for the action counter, before the kill."""
    observe_s: float = 120.0
    """How long after the kill the fleet is watched (the stale window is 90 s, swept every 15 s)."""
    reply_timeout_s: float = 180.0
    lease_timeout_s: float = 6.0
    """The workers' ``--lease-timeout`` (their default); ``0``: no lease, sessions move on their own timeout."""
    stop: str = "kill"
    """``kill``: SIGKILL the worker (a crash: its connections close). ``freeze``: SIGSTOP it (a paused VM or a
    partition: its connections stay open, and Temporal still counts its pending polls)."""


def _worker_command(task_queue: str, lease_timeout_s: float) -> list[str]:
    """``molecule-connect worker`` run by this interpreter (the code under test, also from a work tree)."""
    return [
        sys.executable,
        "-c",
        "from worker.cli import main; main()",
        "worker",
        "--task-queue",
        task_queue,
        "--request-budget",
        "0",
        "--log-level",
        "WARNING",
        "--lease-timeout",
        f"{lease_timeout_s:g}",
    ]


@contextlib.asynccontextmanager
async def _worker_processes(
    stack: Stack, count: int, workdir: Path, lease_timeout_s: float
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` worker processes with every token of the stack in a 0600 file; kill them on exit."""
    tokens_file = workdir / "tokens.json"
    tokens_file.write_text(json.dumps(stack.tokens))
    tokens_file.chmod(0o600)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "MOLECULE_TOKENS_FILE": str(tokens_file),
        "MOLECULE_CONNECT_STATE_DIR": str(workdir / "state"),
    }
    env.pop("MOLECULE_WORKSPACE_TOKEN", None)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for index in range(count):
            log = workdir / f"worker-{index}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        _worker_command(stack.task_queue, lease_timeout_s),
                        env=env,
                        cwd=REPO_ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            logs.append(log)
        deadline = time.monotonic() + 60
        for proc, log in zip(procs, logs, strict=True):
            while "worker running on task queue" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker process did not start: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 10)


async def _session_worker(handle: WorkflowHandle[Any, Any]) -> int | None:
    """Pid of the worker running the workflow's ``session`` activity (identity ``pid@host``), if one does."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        started = pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        if pending.activity_type.name == "session" and started:
            pid, _, _ = pending.last_worker_identity.partition("@")
            return int(pid) if pid.isdigit() else None
    return None


async def _placement(handles: list[WorkflowHandle[Any, Any]], pids: set[int], timeout_s: float = 60.0) -> list[int]:
    """Worker pid of every workflow's session, once each runs on one of ``pids``."""
    deadline = time.monotonic() + timeout_s
    while True:
        placed = await gather_limited(handles, _session_worker, limit=16)
        if all(pid in pids for pid in placed):
            return placed
        if time.monotonic() > deadline:
            raise TimeoutError(f"sessions not all running on the workers: {placed}")
        await asyncio.sleep(0.5)


def _silences(beats: list[float], since: float, until: float) -> list[float]:
    """Gaps between consecutive accepted heartbeats in ``[since, until]``, and from the last one to ``until``."""
    moments = [t for t in sorted(beats) if since <= t <= until] + [until]
    return [b - a for a, b in zip(moments, moments[1:], strict=False)]


def _latencies(deliveries: list[Delivery], ids: set[str]) -> dict[str, Any]:
    return summarize([d.latency_s for d in deliveries if d.workspace_id in ids], digits=2)


async def _round(params: FailoverParams, failover_timeout_s: float | None) -> dict[str, Any]:
    """One fleet, one kill; the raw figures of one ``failover_timeout_s``."""
    settings: dict[str, Any] = {
        "poll_interval_s": params.poll_interval_s,
        "heartbeat_interval_s": params.heartbeat_interval_s,
        "failover_timeout_s": failover_timeout_s,
    }
    effective_timeout = failover_timeout_s or 1.2 * params.heartbeat_interval_s
    async with running_stack() as stack:
        fleet = await stack.workspaces("failover", params.workspaces)
        peer = (await stack.workspaces("peer", 1))[0]
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            async with _worker_processes(stack, 2, Path(tmp), params.lease_timeout_s) as procs:
                started = time.time()
                handles = await stack.start_connectors(fleet, settings, spread_s=params.heartbeat_interval_s)
                ready = await stack.wait_polling([w.id for w in fleet], after=started)
                await asyncio.sleep(params.settle_s)

                metrics_before = await stack.server_metrics()
                window_start = time.time()
                await asyncio.sleep(params.window_s)
                window_end = time.time()
                metrics_after = await stack.server_metrics()

                by_pid = {proc.pid: proc for proc in procs}
                placed = await _placement(handles, set(by_pid))
                victim = max(by_pid, key=lambda pid: placed.count(pid))
                moved = {ws.id for ws, pid in zip(fleet, placed, strict=True) if pid == victim}
                by_pid[victim].send_signal(signal.SIGSTOP if params.stop == "freeze" else signal.SIGKILL)
                killed_at = time.time()
                if params.stop != "freeze":
                    await asyncio.to_thread(by_pid[victim].wait, 10)
                for ws in fleet:
                    await stack.admin.send_text(ws.id, "still there?", sender=peer, context_id=f"after-kill-{ws.id}")
                await stack.wait_replies(peer.id, len(fleet), timeout_s=params.reply_timeout_s)
                replied_at = time.time()
                await asyncio.sleep(max(0.0, killed_at + params.observe_s - time.time()))
                ended = time.time()
                heartbeats = await stack.platform.heartbeats()
                stats = await stack.platform.stats()
                deliveries = await collect(stack, [w.id for w in fleet], peer.id)
                survivor_placed = await _placement(
                    [h for ws, h in zip(fleet, handles, strict=True) if ws.id in moved], set(by_pid) - {victim}
                )
        machine = stack.machine

    fleet_ids = {w.id for w in fleet}
    max_silence = {ws_id: max(_silences(heartbeats.get(ws_id, []), ready, ended)) for ws_id in fleet_ids}
    back = [min((t for t in heartbeats.get(ws_id, []) if t > killed_at), default=ended) - killed_at for ws_id in moved]
    # Accepted heartbeats of the dead worker's workspaces around the kill, in seconds relative to it.
    timelines = {
        ws_id: [round(t - killed_at, 2) for t in sorted(heartbeats.get(ws_id, [])) if -45 <= t - killed_at <= 90]
        for ws_id in sorted(moved)
    }
    stale = sorted({i for _, ids in stats["stale"] for i in ids if i in fleet_ids})
    actions = {
        k: v - metrics_before.get(k, 0.0)
        for k, v in metrics_after.items()
        if not k.startswith("requests:") and v - metrics_before.get(k, 0.0) > 0
    }
    ws_hours = params.workspaces * (window_end - window_start) / 3600
    return {
        "failover_timeout_s": effective_timeout,
        "configured": failover_timeout_s,
        "stop": params.stop,
        "lease_timeout_s": params.lease_timeout_s,
        "moved": len(moved),
        "moved_to_survivor": len(survivor_placed),
        "max_silence_moved_s": summarize([max_silence[i] for i in moved], digits=2),
        "max_silence_others_s": summarize([max_silence[i] for i in fleet_ids - moved], digits=2),
        "kill_to_first_beat_s": summarize(back, digits=2),
        "beats_around_kill_s": timelines,
        "latency_moved_s": _latencies(deliveries, moved),
        "latency_others_s": _latencies(deliveries, fleet_ids - moved),
        "replies": len(deliveries),
        "all_replied_after_kill_s": round(replied_at - killed_at, 2),
        "stale_workspaces": stale,
        "window_s": round(window_end - window_start, 1),
        "actions_in_window": {k: round(v, 1) for k, v in actions.items()},
        "actions_per_ws_h": round(sum(actions.values()) / ws_hours, 1),
        "heartbeat_actions_per_ws_h": round(actions.get(HEARTBEAT_ACTION, 0.0) / ws_hours, 1),
        "platform_requests": stats["counts"],
        "machine": machine,
    }


def _figures(r: dict[str, Any]) -> list[Figure]:
    stop = ", worker frozen" if r["stop"] == "freeze" else ""
    lease = f"lease {r['lease_timeout_s']:g} s" if r["lease_timeout_s"] else "no lease"
    tag = f"(failover_timeout_s={r['failover_timeout_s']:g}{'' if r['configured'] else ', default'}, {lease}{stop})"
    gap_max = r["max_silence_moved_s"]["max"]
    latency_max = r["latency_moved_s"]["max"]
    return [
        Figure(
            f"heartbeat gap max, the dead worker's workspaces {tag}",
            "s",
            gap_max,
            target="< 60 s (stale at 90 s)",
            meets=None if gap_max is None else gap_max < 60,
            note=f"{r['moved']} of them; p50 of their longest gaps {r['max_silence_moved_s']['p50']} s",
        ),
        Figure(f"heartbeat gap max, the survivor's workspaces {tag}", "s", r["max_silence_others_s"]["max"]),
        Figure(
            f"kill → first heartbeat from the survivor, max {tag}",
            "s",
            r["kill_to_first_beat_s"]["max"],
            note=f"p50 {r['kill_to_first_beat_s']['p50']} s",
        ),
        Figure(
            f"workspaces ever awaiting_agent {tag}",
            "",
            float(len(r["stale_workspaces"])),
            target="0",
            meets=not r["stale_workspaces"],
        ),
        Figure(
            f"message sent right after the kill, latency max, dead worker's workspaces {tag}",
            "s",
            latency_max,
            target="≤ 10 s",
            meets=None if latency_max is None else latency_max <= 10,
            note=f"p50 {r['latency_moved_s']['p50']} s",
        ),
        Figure(
            f"message sent right after the kill, latency max, survivor's workspaces {tag}",
            "s",
            r["latency_others_s"]["max"],
            note=f"p50 {r['latency_others_s']['p50']} s",
        ),
        Figure(
            f"idle billable actions per workspace-hour, server counter {tag}",
            "actions",
            r["actions_per_ws_h"],
            target="≤ 210 (before)",
            meets=r["actions_per_ws_h"] <= 210,
            note=f"of which activity heartbeats {r['heartbeat_actions_per_ws_h']}; a {r['window_s']:g} s window "
            "without session cycles (+~6/h: benchmarks idle)",
        ),
    ]


async def run(params: FailoverParams) -> Result:
    """Run one round per ``failover_timeouts`` value, each on a fresh stack, and return the figures."""
    began = time.monotonic()
    rounds = []
    for timeout in params.failover_timeouts:
        rounds.append(await _round(params, timeout))
    machine = rounds[0].pop("machine")
    for r in rounds[1:]:
        r.pop("machine")
    return Result(
        scenario="failover",
        params=asdict(params),
        machine=machine,
        figures=[f for r in rounds for f in _figures(r)],
        details={"rounds": rounds},
        notes=[
            f"{params.workspaces} workspaces on two `molecule-connect worker` processes; the one running most "
            f"sessions SIGKILLed; heartbeat every {params.heartbeat_interval_s:g} s, "
            f"poll {params.poll_interval_s:g} s; "
            f"platform stale window {STALE_WINDOW_S:g} s swept every 15 s (production).",
            "Heartbeat gaps from the platform's request log (accepted heartbeats); latencies on the platform's clock "
            "(inbound row → reply row).",
        ],
        wall_s=time.monotonic() - began,
    )
