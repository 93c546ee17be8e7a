"""Crash and resume: a worker process killed mid-dispatch loses nothing, and the reply is still sent once.

docs/protocol.md §8: a message may reach the backend more than once only when the connector died mid-dispatch; the
reply's messageId is derived from the message's, so the platform records it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.testing import WorkflowEnvironment

from activities.messages import BackendSpec
from tests.helpers import Harness, reply_message, reply_text, wait_until
from worker.control import ConnectorError
from worker.settings import workflow_id
from workflows.messages import StatusResult

CONSOLE_SCRIPT = Path(sys.executable).with_name("molecule-connect")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def backend_groups() -> Iterator[list[int]]:
    """Process groups of backend commands (each command leads its own); killed at teardown."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _start_worker(
    tmp_path: Path, temporal_env: WorkflowEnvironment, task_queue: str, tokens: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Run ``molecule-connect worker`` as a real process on the test server, with tokens from a 0600 file."""
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(tokens))
    tokens_file.chmod(0o600)
    log = tmp_path / "worker.log"
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the code under test (a worktree), not the installed copy
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        "MOLECULE_CONNECT_STATE_DIR": str(tmp_path / "state"),
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "MOLECULE_TOKENS_FILE": str(tokens_file),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "worker", "--task-queue", task_queue], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, log


def _worker_ready(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()}")
    return "worker running on task queue" in log.read_text()


def _dispatches(marker: Path) -> list[tuple[int, int]]:
    """(process group, attempt) of every backend run so far."""
    if not marker.exists():
        return []
    return [(int(pgid), int(attempt)) for pgid, attempt in (line.split() for line in marker.read_text().splitlines())]


async def _settled(harness: Harness, workspace_id: str, row_ids: list[str], row_id: str) -> StatusResult | None:
    """The status once ``row_id`` is settled: the commit cursor is at or past it and nothing is in flight."""
    try:
        status = await harness.status(workspace_id)
    except ConnectorError:
        return None
    cursor = status.commit_cursor
    if cursor is None or cursor.row_id not in row_ids or status.in_flight:
        return None
    return status if row_ids.index(cursor.row_id) >= row_ids.index(row_id) else None


async def test_worker_killed_mid_dispatch_resumes_and_replies_once(
    harness: Harness,
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    backend_groups: list[int],
) -> None:
    """SIGKILL the worker process while the backend runs; a new worker dispatches again and the peer gets one reply."""
    agent, peer = await harness.workspace("agent"), await harness.workspace("peer")
    assert agent.token is not None
    marker = tmp_path / "dispatches"
    # Each run records its process group and attempt; the first hangs until the worker dies under it.
    record = f'echo "$$ $MOLECULE_ATTEMPT" >> {shlex.quote(str(marker))}'
    script = f'{record}; [ "$MOLECULE_ATTEMPT" = 1 ] && sleep 60; tr a-z A-Z'
    backend = BackendSpec(name="exec", options={"cmd": f"sh -c {shlex.quote(script)}"})

    proc, log = _start_worker(tmp_path, temporal_env, harness.task_queue, {agent.id: agent.token})
    processes.append(proc)
    await wait_until(lambda: _worker_ready(proc, log), message="worker process ready")
    await harness.start(agent, backend, dispatch_heartbeat_timeout_s=3)

    await harness.admin.send_text(agent.id, "crash me", sender=peer, context_id="conv-crash", message_id="m-crash")
    first = await wait_until(lambda: _dispatches(marker), message="backend running")
    backend_groups.extend(pgid for pgid, _ in first)
    proc.kill()
    await asyncio.to_thread(proc.wait, 10)
    # The whole machine died: the command goes with the worker.
    for pgid, _ in first:
        _kill_group(pgid)
    assert await harness.replies_to(peer.id, agent.id) == []
    # The dead worker's sticky queue would hold the next workflow task for the SDK's 10 s sticky timeout. Resetting
    # it, as a graceful shutdown does, only shortens the test: what the new worker must do is unchanged.
    await harness.client.workflow_service.reset_sticky_task_queue(
        ResetStickyTaskQueueRequest(
            namespace=harness.client.namespace, execution=WorkflowExecution(workflow_id=workflow_id(agent.id))
        )
    )

    rows = await harness.admin.rows(agent.id)
    row_ids = [row["id"] for row in rows]
    message_row = next(row["id"] for row in rows if row.get("message_id") == "m-crash")
    async with harness.worker():
        status = await wait_until(
            lambda: _settled(harness, agent.id, row_ids, message_row), timeout=45, message="message settled"
        )
    backend_groups.extend(pgid for pgid, _ in _dispatches(marker))

    replies = [
        r
        for r in await harness.replies_to(peer.id, agent.id)
        if reply_message(r)["metadata"]["in_reply_to"] == "m-crash"
    ]
    assert len(replies) == 1
    assert reply_text(replies[0]) == "CRASH ME"
    assert status.counters["replied"] == 1
    assert status.dead_letters == []
    assert [attempt for _, attempt in _dispatches(marker)] == [1, 2], "dispatched again, once, after the crash"
