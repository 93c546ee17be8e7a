"""Failover: two worker processes on one task queue, one SIGKILLed; its workspaces never go stale.

Each workspace's ``session`` activity (platform heartbeats and the inbox long poll) runs on one of the workers. When
that worker dies, the activity's heartbeat timeout (``ConnectSettings.failover_timeout_s``, default 1.2 × the
heartbeat interval) expires and Temporal retries it on the survivor, which beats at once. The platform must see no
gap between two accepted heartbeats over 60 s (its stale window is 90 s), and a message sent right after the kill is
answered.

Timing is scaled by ``SCALE`` so a test takes under a minute: heartbeat interval 30 s × SCALE, failover timeout at
its default ratio, platform stale window 90 s × SCALE (swept every half second), gap bound 60 s × SCALE. What does not
scale (the retry's 1 s first interval, task dispatch) makes the scaled test stricter than production; production
timing is measured by ``python -m benchmarks failover`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from devplatform.client import CreatedWorkspace
from devplatform.settings import PlatformSettings
from tests.helpers import Harness, reply_message, wait_until

pytestmark = pytest.mark.slow

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")
SCALE = 0.25
"""Production timings × this: heartbeat every 7.5 s, failover timeout 9 s, stale window 22.5 s, gap bound 15 s."""


@pytest.fixture
def platform_settings(tmp_path: Path) -> PlatformSettings:
    """The production stale window, scaled like the connector's heartbeat interval, swept often."""
    return PlatformSettings(
        db_path=tmp_path / "platform.db", rate_limit_per_min=0, stale_after_s=90 * SCALE, sweep_every_s=0.5
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _beats(log: list[dict[str, str]]) -> list[datetime]:
    """Accepted registers and heartbeats (both refresh the platform's ``last_heartbeat_at``)."""
    return [datetime.fromisoformat(e["at"]) for e in log if e["event"] in ("register", "heartbeat")]


def _max_gap(beats: list[datetime], until: datetime) -> float:
    """Longest silence in seconds: between two accepted beats, or from the last one to ``until``."""
    moments = [*beats, until]
    return max((b - a).total_seconds() for a, b in zip(moments, moments[1:], strict=False))


@dataclass
class Fleet:
    """Workspaces connected through two ``molecule-connect worker`` processes on the harness's task queue."""

    harness: Harness
    temporal_env: WorkflowEnvironment
    tmp_path: Path
    processes: list[subprocess.Popen[bytes]]
    peer: CreatedWorkspace | None = None
    workspaces: list[CreatedWorkspace] = field(default_factory=list)
    handles: dict[str, WorkflowHandle[Any, Any]] = field(default_factory=dict)
    workers: dict[int, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    async def start(self, count: int, **settings: Any) -> None:
        """Create ``count`` workspaces and a peer, start both workers (every token in a 0600 file), then connect."""
        self.peer = await self.harness.workspace("peer")
        self.workspaces = [await self.harness.workspace(f"ws-{i}") for i in range(count)]
        tokens_file = self.tmp_path / "tokens.json"
        tokens_file.write_text(json.dumps({ws.id: ws.token for ws in self.workspaces}))
        tokens_file.chmod(0o600)
        for name in ("worker-a", "worker-b"):
            proc, log = self._start_worker(name, tokens_file)
            self.processes.append(proc)
            self.workers[proc.pid] = (proc, log)
        for proc, log in self.workers.values():
            await wait_until(lambda p=proc, lg=log: self._ready(p, lg), message="worker process ready")
        for ws in self.workspaces:
            self.handles[ws.id] = await self.harness.start(ws, **settings)

    def _start_worker(self, name: str, tokens_file: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp_path / f"{name}.log"
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the code under test (a worktree), not the installed one
            "LANG": "C.UTF-8",
            "HOME": str(self.tmp_path / name),
            "MOLECULE_CONNECT_STATE_DIR": str(self.tmp_path / name / "state"),
            "TEMPORAL_ADDRESS": self.temporal_env.client.service_client.config.target_host,
            "MOLECULE_TOKENS_FILE": str(tokens_file),
        }
        command = [str(CONSOLE_SCRIPT), "worker", "--task-queue", self.harness.task_queue, "--request-budget", "0"]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        return proc, log

    @staticmethod
    def _ready(proc: subprocess.Popen[bytes], log: Path) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()}")
        return "worker running on task queue" in log.read_text()

    def name(self, workspace_id: str) -> str:
        return next(f"ws-{i}" for i, ws in enumerate(self.workspaces) if ws.id == workspace_id)

    async def session_worker(self, workspace_id: str) -> int | None:
        """The pid of the worker running the workspace's session activity (identity ``pid@host``), if it runs."""
        description = await self.handles[workspace_id].describe()
        for pending in description.raw_description.pending_activities:
            started = pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            if pending.activity_type.name == "session" and started:
                pid, _, _ = pending.last_worker_identity.partition("@")
                return int(pid) if pid.isdigit() else None
        return None

    async def placed(self) -> dict[str, int] | None:
        """Workspace id → pid of the worker running its session, once every session runs on a known worker."""
        placed = {ws.id: await self.session_worker(ws.id) for ws in self.workspaces}
        return placed if all(pid in self.workers for pid in placed.values()) else None  # type: ignore[return-value]

    async def kill_busiest(self, how: signal.Signals = signal.SIGKILL) -> tuple[int, int, list[str], datetime]:
        """SIGKILL (or ``how``) the worker running most sessions: ``(victim pid, survivor pid, its workspaces,
        when)``."""
        placed = await wait_until(self.placed, timeout=30, message="every session running on a worker")
        victim = max(self.workers, key=lambda pid: sum(p == pid for p in placed.values()))
        survivor = next(pid for pid in self.workers if pid != victim)
        proc, _ = self.workers[victim]
        proc.send_signal(how)
        if how == signal.SIGKILL:
            await asyncio.to_thread(proc.wait, 10)
        moved = sorted(ws_id for ws_id, pid in placed.items() if pid == victim)
        assert moved, "the victim ran no session: the test would prove nothing"
        return victim, survivor, moved, datetime.now(UTC)

    async def send_to_all(self, tag: str) -> dict[str, str]:
        """One message from the peer to every workspace; workspace id → its messageId."""
        sent = {}
        for ws in self.workspaces:
            sent[ws.id] = f"{tag}-{ws.id}"
            await self.harness.admin.send_text(ws.id, tag, sender=self.peer, message_id=sent[ws.id])
        return sent

    async def wait_answered(self, sent: dict[str, str]) -> None:
        assert self.peer is not None
        for ws_id, message_id in sent.items():

            async def answered(ws_id: str = ws_id, message_id: str = message_id) -> bool:
                replies = await self.harness.replies_to(self.peer.id, ws_id)  # type: ignore[union-attr]
                return any(reply_message(r)["metadata"].get("in_reply_to") == message_id for r in replies)

            await wait_until(answered, timeout=90, message=f"reply to {message_id} ({self.name(ws_id)})")

    async def timed_out_workflow_tasks(self, workspace_ids: list[str]) -> dict[str, int]:
        """Per workspace: workflow tasks that timed out (left on a dead worker's sticky queue for 10 s)."""
        counts = {}
        for ws_id in workspace_ids:
            events = (await self.handles[ws_id].fetch_history()).events
            counts[self.name(ws_id)] = sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT for e in events)
        return counts


@pytest.fixture
def fleet(
    harness: Harness, temporal_env: WorkflowEnvironment, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> Fleet:
    return Fleet(harness, temporal_env, tmp_path, processes)


async def test_worker_sigkill_in_fleet_of_two_keeps_every_workspace_online(fleet: Fleet) -> None:
    """SIGKILL the worker running most sessions: every workspace's heartbeat gap stays under 60 s (scaled), none goes
    ``awaiting_agent``, the dead worker's sessions move to the survivor, and messages sent right after are answered."""
    interval, bound, stale_window = 30 * SCALE, 60 * SCALE, 90 * SCALE
    await fleet.start(6, heartbeat_interval_s=interval)
    admin = fleet.harness.admin

    async def steady() -> bool:  # a regular beat since the cold start, for every workspace
        for ws in fleet.workspaces:
            beats = _beats(await admin.liveness(ws.id))
            if (beats[-1] - beats[0]).total_seconds() < 0.9 * interval:
                return False
        return True

    await wait_until(steady, timeout=60, message="every workspace beating")
    _, survivor, moved, killed_at = await fleet.kill_busiest()
    await fleet.wait_answered(await fleet.send_to_all("after-kill"))

    async def taken_over() -> bool:  # the dead worker's sessions run on the survivor and have beaten there twice
        for ws_id in moved:
            if await fleet.session_worker(ws_id) != survivor:
                return False
            if len([b for b in _beats(await admin.liveness(ws_id)) if b > killed_at]) < 2:
                return False
        return True

    await wait_until(taken_over, timeout=90, message="the dead worker's sessions beating on the survivor")
    # A whole stale window after the kill, so a workspace gone silent would have been swept by now.
    await wait_until(
        lambda: (datetime.now(UTC) - killed_at).total_seconds() > stale_window + 1,
        timeout=stale_window + 5,
        message="a stale window since the kill",
    )

    ended = datetime.now(UTC)
    gaps = {}
    for ws in fleet.workspaces:
        log = await admin.liveness(ws.id)
        assert [e for e in log if e["event"] == "stale"] == [], f"{fleet.name(ws.id)} went awaiting_agent: {log}"
        assert (await admin.workspace(ws.id))["status"] == "online"
        gaps[fleet.name(ws.id)] = round(_max_gap(_beats(log), ended), 1)
    assert max(gaps.values()) < bound, f"heartbeat gaps (s) over {bound:g}: {gaps}; {len(moved)} moved"


async def test_fast_failover_moves_the_workflow_off_the_dead_worker(fleet: Fleet) -> None:
    """With ``failover_timeout_s=2`` a dead worker's session moves within seconds, while Temporal still counts the
    dead worker's sticky queue as polled: the workflow task that takes in the moved session's rows must go to the
    survivor at once, not time out on the dead worker's sticky queue (10 s) first."""
    await fleet.start(4, heartbeat_interval_s=30 * SCALE, failover_timeout_s=2)
    # A message each, answered: every worker has just polled its sticky queue.
    await fleet.wait_answered(await fleet.send_to_all("before-kill"))
    _, _, moved, _ = await fleet.kill_busiest()
    await fleet.wait_answered(await fleet.send_to_all("after-kill"))

    assert await fleet.timed_out_workflow_tasks(moved) == {fleet.name(ws_id): 0 for ws_id in moved}


async def _worker_lost_sessions(fleet: Fleet, workspace_id: str) -> int:
    """Session attempts of the workspace's connector that started after its worker lost its lease (``WorkerLost``)."""
    events = (await fleet.handles[workspace_id].fetch_history()).events
    return sum(
        e.activity_task_started_event_attributes.last_failure.application_failure_info.type == "WorkerLost"
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )


async def _leases_list(fleet: Fleet) -> bool:
    """Whether the running leases' recorded heartbeats list every workspace (a lease lags its worker by ≤ 4.8 s)."""
    client = fleet.harness.client
    query = f"WorkflowType = 'WorkerLeaseWorkflow' AND TaskQueue = '{fleet.harness.task_queue}'"
    listed: set[str] = set()
    async for execution in client.list_workflows(query):
        description = await client.get_workflow_handle(execution.id).describe()
        for pending in description.raw_description.pending_activities:
            for payload in pending.heartbeat_details.payloads:
                listed |= {held["workflow_id"] for held in json.loads(payload.data)}
    return {f"connect-{ws.id}" for ws in fleet.workspaces} <= listed


async def test_a_dead_workers_lease_moves_its_sessions_long_before_their_own_timeout(fleet: Fleet) -> None:
    """Each ``worker`` holds a liveness lease (6 s). With the sessions' own heartbeat timeout at 120 s, only the
    lease can move a SIGKILLed worker's sessions in time: the messages sent after the kill are answered (within the
    90 s the helper waits, under that timeout), each after its session was failed over as ``WorkerLost``."""
    await fleet.start(4, heartbeat_interval_s=30 * SCALE, failover_timeout_s=120)
    await fleet.wait_answered(await fleet.send_to_all("before-kill"))
    await wait_until(lambda: _leases_list(fleet), timeout=30, interval=0.5, message="the leases listing every session")
    _, survivor, moved, _ = await fleet.kill_busiest()
    await fleet.wait_answered(await fleet.send_to_all("after-kill"))

    for ws_id in moved:

        async def on_survivor(ws_id: str = ws_id) -> bool:
            return await fleet.session_worker(ws_id) == survivor

        await wait_until(on_survivor, timeout=10, message=f"{fleet.name(ws_id)}'s session on the survivor")
    assert {fleet.name(ws_id): await _worker_lost_sessions(fleet, ws_id) for ws_id in moved} == {
        fleet.name(ws_id): 1 for ws_id in moved
    }


async def test_a_frozen_worker_loses_its_lease_and_takes_a_new_one_when_it_wakes(fleet: Fleet) -> None:
    """SIGSTOP (a paused VM): the frozen worker's open task polls stay matched by the server, yet its sessions move
    to the survivor through its lease, and the messages sent meanwhile are answered. After SIGCONT the worker finds
    its lease gone and takes a new one."""
    await fleet.start(4, heartbeat_interval_s=30 * SCALE, failover_timeout_s=120)
    await fleet.wait_answered(await fleet.send_to_all("before-freeze"))
    await wait_until(lambda: _leases_list(fleet), timeout=30, interval=0.5, message="the leases listing every session")
    victim, survivor, moved, _ = await fleet.kill_busiest(signal.SIGSTOP)
    await fleet.wait_answered(await fleet.send_to_all("after-freeze"))
    for ws_id in moved:
        assert await _worker_lost_sessions(fleet, ws_id) >= 1, fleet.name(ws_id)

    proc, log = fleet.workers[victim]
    proc.send_signal(signal.SIGCONT)
    await wait_until(
        lambda: log.read_text().count("holding lease") == 2, timeout=60, message="the woken worker's new lease"
    )
    assert "this worker lost its lease" in log.read_text()
